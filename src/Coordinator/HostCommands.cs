using System.CommandLine;
using System.Security.Cryptography;
using Spectre.Console;
using Superpipeline.Engine.IO;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Messages;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Coordinator;

/// <summary><c>superpipeline host</c> (a cluster member) and <c>superpipeline submit</c> (a client outside the cluster).</summary>
public static class HostCommands
{
    public static Command BuildHost()
    {
        var role = new Option<string>("--role") { Description = "coordinator, worker or both", DefaultValueFactory = _ => "both" };
        var hostname = new Option<string>("--hostname") { Description = "the interface to bind to and to be reached at", DefaultValueFactory = _ => "127.0.0.1" };
        var port = new Option<int>("--port") { Description = "TCP port (0 picks a free one)", DefaultValueFactory = _ => 4053 };
        var seed = new Option<string[]>("--seed") { Description = "host:port of a member to join (repeatable); none founds a new cluster", AllowMultipleArgumentsPerToken = false };
        var devices = new Option<string>("--devices") { Description = "devices this worker brings: sim:2x4GiB, sim:1GiB@16 (GB/s link), cuda:all", DefaultValueFactory = _ => "sim:1x1GiB" };
        var config = new Option<string>("--config") { Description = "a HOCON file whose settings override hocon/ (e.g. TLS)" };
        var host = new Command("host", "Run a cluster member: the coordinator (job manager singleton, client receptionist), a worker (its devices), or both. Stops on Ctrl+C.");
        foreach (var o in new Option[] { role, hostname, port, seed, devices, config }) host.Options.Add(o);
        host.SetAction(async (r, cancel) =>
        {
            var roles = r.GetValue(role) switch
            {
                "both" => new[] { "coordinator", "worker" },
                "coordinator" => ["coordinator"],
                "worker" => ["worker"],
                var other => throw new ArgumentException($"--role must be coordinator, worker or both; got '{other}'"),
            };
            int p = r.GetValue(port);
            if (p is < 0 or > 65535) throw new ArgumentException($"--port must be from 0 to 65535; got {p}");
            var deviceSpecs = roles.Contains("worker") ? ClusterHost.ParseDevices(r.GetValue(devices)!) : [];
            await using var member = ClusterHost.Start(new HostOptions(roles, r.GetValue(hostname)!, p, r.GetValue(seed) ?? [], deviceSpecs, ReadConfig(r.GetValue(config))));
            Console.WriteLine($"superpipeline host: {string.Join("+", roles)} at {member.Address}" +
                (deviceSpecs.Count > 0 ? $" with {string.Join(", ", member.Devices.Select(d => $"{d.Name} ({d.Memory.Capacity:N0} bytes)"))}" : ""));
            var stopped = new TaskCompletionSource();
            member.System.WhenTerminated.ContinueWith(_ => stopped.TrySetResult());
            using var registration = cancel.Register(() => stopped.TrySetResult());
            await stopped.Task;
            return 0;
        });
        return host;
    }

    /// <summary>The text of a --config file, or null when none was given.</summary>
    static string? ReadConfig(string? file) => file is null ? null
        : File.Exists(file) ? File.ReadAllText(file) : throw new ArgumentException($"--config {file} does not exist");

    public static Command BuildSubmit()
    {
        var model = new Cli.ModelOptions();
        var contact = new Option<string[]>("--contact") { Description = "host:port of a coordinator (repeatable)", Required = true };
        var window = new Option<string>("--window") { Description = "k per stage (a number, 'all' or 'auto')", DefaultValueFactory = _ => "3" };
        var swap = new Option<string>("--swap") { Description = "k' per stage" };
        var id = new Option<string>("--id") { Description = "job id; resubmitting an id never runs the job twice (default: a new id)" };
        var report = new Option<string>("--report") { Description = "write the JSON report (with the placement) to this file" };
        var trace = new Option<string>("--trace") { Description = "write a Chrome trace of the stages' layers" };
        var output = new Option<string>("--output") { Description = "write the output tensor to this .npy file" };
        var hostname = new Option<string>("--hostname") { Description = "the interface this client listens on for answers; the coordinator must reach it", DefaultValueFactory = _ => "127.0.0.1" };
        var config = new Option<string>("--config") { Description = "a HOCON file whose settings override hocon/ (e.g. TLS, as on the members)" };
        var submit = new Command("submit", "Submit a job to a running cluster through ClusterClient, show progress, and write the same files as run.");
        model.AddTo(submit);
        foreach (var o in new Option[] { contact, window, swap, id, report, trace, output, hostname, config }) submit.Options.Add(o);
        submit.SetAction(async (r, cancel) =>
        {
            OutputPaths.CheckWritable(r.GetValue(report), "--report");
            OutputPaths.CheckWritable(r.GetValue(trace), "--trace");
            OutputPaths.CheckWritable(r.GetValue(output), "--output");
            var spec = model.Read(r);
            var job = new SubmitJob(r.GetValue(id) is { } given ? new JobId(given) : JobId.New(), spec, Cli.ParsePolicy(r.GetValue(window)!, r.GetValue(swap)));
            await using var client = SubmitClient.Start(r.GetValue(contact)!, r.GetValue(hostname)!, ReadConfig(r.GetValue(config)));
            Console.Error.WriteLine($"superpipeline submit: job {job.Id} to {string.Join(", ", r.GetValue(contact)!)}");
            var answer = await client.RunAsync(job, p => { if (p.Layer == p.Layers - 1 || p.Layer % 8 == 0) Console.Error.WriteLine($"  layer {p.Layer + 1}/{p.Layers} computed"); });
            switch (answer)
            {
                case JobSucceeded ok:
                    var sha = Convert.ToHexStringLower(SHA256.HashData(ok.Output.Bytes.AsSpan()));
                    if (r.GetValue(report) is { } rp) JsonReport.Write(rp, JsonReport.Build(spec, ok.Report, ok.Output, sha));
                    if (r.GetValue(trace) is { } tp) ChromeTrace.Write(tp, ok.Report);
                    if (r.GetValue(output) is { } op) Npy.Write(op, ok.Output);
                    var table = new Table().AddColumn("stage").AddColumn("node").AddColumn("device").AddColumn("layers").AddColumn("k/k'").AddColumn(new TableColumn("peak bytes").RightAligned());
                    foreach (var s in ok.Report.Stages)
                        table.AddRow(new Text($"{s.Stage}"), new Text(s.Node), new Text(s.Device), new Text($"{s.FirstLayer}..{s.FirstLayer + s.LayerCount - 1}"), new Text($"{s.Window}/{s.Swap}"), new Text($"{s.PeakDeviceBytes:N0}"));
                    AnsiConsole.Write(table);
                    Console.WriteLine($"job {job.Id} succeeded in {ok.Report.WallSeconds:0.000} s; output sha256 {sha}");
                    return 0;
                case JobRefused refused: throw new ArgumentException($"job {job.Id} refused: {refused.Reason}");
                case JobFailed failed: throw new ArgumentException($"job {job.Id} failed: {failed.Reason}");
                default: throw new InvalidOperationException($"unexpected answer {answer}");
            }
        });
        return submit;
    }
}
