using Superpipeline.Coordinator.Cluster;
using System.CommandLine;
using System.Security.Cryptography;
using Spectre.Console;
using Superpipeline.Contracts;
using Superpipeline.Engine.IO;
using Superpipeline.Messages;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Coordinator.Commands;

/// <summary><c>superpipeline submit</c>: a client outside the cluster (<see cref="SubmitClient"/>) sends one job, shows its
/// progress, and writes the same files as run.</summary>
public static class SubmitCommand
{
    public const string DefaultConnectTimeout = "30s";

    public static Command Build()
    {
        var model = new ModelOptions();
        var contact = new Option<string[]>("--contact") { Description = "host:port of a coordinator (repeatable)", Required = true };
        var window = new Option<string>("--window") { Description = "k per stage (a number, 'all' or 'auto')", DefaultValueFactory = _ => "3" };
        var swap = new Option<string>("--swap") { Description = "k' per stage" };
        var resident = Flags.ResidentLayersOption();
        var id = new Option<string>("--id") { Description = "job id; resubmitting an id never runs the job twice (default: a new id)" };
        var report = new Option<string>("--report") { Description = "write the JSON report (with the placement) to this file" };
        var trace = new Option<string>("--trace") { Description = "write a Chrome trace of the stages' layers" };
        var output = new Option<string>("--output") { Description = "write the output tensor to this .npy file" };
        var hostname = new Option<string>("--hostname")
        {
            Description = "the interface this client listens on for answers; the coordinator must reach it", DefaultValueFactory = _ => "127.0.0.1",
        };
        var config = new Option<string>("--config") { Description = "a HOCON file whose settings override hocon/ (e.g. TLS, as on the members)" };
        var connect = new Option<string>("--connect-timeout")
        {
            Description = "how long to wait for a coordinator at a --contact to answer before giving up (like 30s, 500ms, 2m)",
            DefaultValueFactory = _ => DefaultConnectTimeout,
        };
        var verbose = new Option<bool>("--verbose") { Description = "show Akka's own log lines (remoting, cluster client) on stderr" };
        var submit = new Command("submit", "Submit a job to a running cluster through ClusterClient, show progress, and write the same files as run.");
        model.AddTo(submit);
        foreach (var o in new Option[] { contact, window, swap, resident, id, report, trace, output, hostname, config, connect, verbose })
            submit.Options.Add(o);
        submit.SetAction(async (r, cancel) =>
        {
            OutputPaths.CheckWritable(r.GetValue(report), "--report");
            OutputPaths.CheckWritable(r.GetValue(trace), "--trace");
            OutputPaths.CheckWritable(r.GetValue(output), "--output");
            var timeout = Flags.ParseDuration(r.GetValue(connect)!, "--connect-timeout");
            var spec = model.Read(r);
            var policy = Flags.ParsePolicy(r.GetValue(window)!, r.GetValue(swap), r.GetValue(resident));
            Preflight.Model(spec, policy);
            var contacts = r.GetValue(contact)!;
            var job = new SubmitJob(r.GetValue(id) is { } given ? new JobId(given) : JobId.New(), spec, policy);
            await using var client = SubmitClient.Start(contacts, r.GetValue(hostname)!, ConfigFile.Read(r.GetValue(config)), r.GetValue(verbose));
            if (!await client.ConnectAsync(timeout, cancel))
            {
                string at = string.Join(", ", contacts);
                throw new TimeoutException($"no coordinator answered at {at} within {timeout.TotalSeconds:0.###} s (--connect-timeout)");
            }
            Console.Error.WriteLine($"superpipeline submit: job {job.Id} to {string.Join(", ", contacts)}");
            var answer = await client.RunAsync(job, p =>
            {
                if (p.Layer == p.Layers - 1 || p.Layer % 8 == 0) Console.Error.WriteLine($"  layer {p.Layer + 1}/{p.Layers} computed");
            });
            switch (answer)
            {
                case JobSucceeded ok:
                    var sha = Convert.ToHexStringLower(SHA256.HashData(ok.Output.Bytes.AsSpan()));
                    if (r.GetValue(report) is { } rp) JsonReport.Write(rp, JsonReport.Build(spec, ok.Report, ok.Output, sha));
                    if (r.GetValue(trace) is { } tp) ChromeTrace.Write(tp, ok.Report);
                    if (r.GetValue(output) is { } op) Npy.Write(op, ok.Output);
                    PrintStages(ok.Report);
                    Console.WriteLine($"job {job.Id} succeeded in {ok.Report.WallSeconds:0.000} s; output sha256 {sha}");
                    return 0;
                case JobRefused refused: throw new ArgumentException($"job {job.Id} refused: {refused.Reason}");
                case JobFailed failed: throw new ArgumentException($"job {job.Id} failed: {failed.Reason}");
                default: throw new InvalidOperationException($"unexpected answer {answer}");
            }
        });
        return submit;
    }

    static void PrintStages(PassReport report)
    {
        var table = new Table().AddColumn("stage").AddColumn("node").AddColumn("device").AddColumn("layers").AddColumn("k/k'")
            .AddColumn(new TableColumn("peak bytes").RightAligned());
        foreach (var s in report.Stages)
            table.AddRow(new Text($"{s.Stage}"), new Text(s.Node), new Text(s.Device), new Text($"{s.FirstLayer}..{s.FirstLayer + s.LayerCount - 1}"),
                new Text($"{s.Window}/{s.Swap}"), new Text($"{s.PeakDeviceBytes:N0}"));
        AnsiConsole.Write(table);
    }
}
