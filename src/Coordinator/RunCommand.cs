using System.Security.Cryptography;
using Spectre.Console;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Policy;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Messages;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Coordinator;

/// <summary>What <c>superpipeline run</c> was asked to do, already parsed.</summary>
public sealed record RunOptions(ModelSpec Model, PolicySpec Policy, DeviceSpec Device, string? ReportPath, string? TracePath, string? OutputPath);

public static class RunCommand
{
    /// <summary>Runs one pass in an embedded host, prints the summary, writes the files. Returns the exit code.</summary>
    public static async Task<int> RunAsync(RunOptions o, IAnsiConsole console, CancellationToken cancel)
    {
        OutputPaths.CheckWritable(o.ReportPath, "--report");
        OutputPaths.CheckWritable(o.TracePath, "--trace");
        OutputPaths.CheckWritable(o.OutputPath, "--output");

        await using var host = EmbeddedHost.Start(o.Device);
        var job = new SubmitJob(JobId.New(), o.Model, o.Policy);
        IJobEvent answer;
        if (console.Profile.Capabilities.Interactive)
        {
            answer = await console.Progress().AutoClear(true).StartAsync(async ctx =>
            {
                var task = ctx.AddTask("layers computed");
                return await host.RunAsync(job, p =>
                {
                    task.MaxValue = p.Layers;
                    if (p.Phase == LayerPhase.Computed) task.Value = p.Layer + 1;
                });
            });
        }
        else
        {
            answer = await host.RunAsync(job);
        }

        if (answer is JobFailed failed) throw new ArgumentException(failed.Reason);
        if (answer is JobRefused refused) throw new ArgumentException(refused.Reason);
        var ok = (JobSucceeded)answer;
        var sha = Convert.ToHexStringLower(SHA256.HashData(ok.Output.Bytes.AsSpan()));
        if (o.ReportPath is not null) JsonReport.Write(o.ReportPath, JsonReport.Build(o.Model, ok.Report, ok.Output, sha));
        if (o.TracePath is not null) ChromeTrace.Write(o.TracePath, ok.Report);
        if (o.OutputPath is not null) Npy.Write(o.OutputPath, ok.Output);
        Summarize(console, o, ok, sha);
        return 0;
    }

    static void Summarize(IAnsiConsole console, RunOptions o, JobSucceeded ok, string sha)
    {
        var r = ok.Report;
        double ratio = r.ModelBytes / (double)r.DeviceCapacityBytes;
        console.MarkupLineInterpolated($"[bold]superpipeline run[/]: model [bold]{o.Model.Name}[/] ({r.Layers} layers, {ByteSize.Format(r.ModelBytes)}) on [bold]{r.Device}[/] ({ByteSize.Format(r.DeviceCapacityBytes)}){(ratio > 1 ? $": the model is {ratio:0.0}× larger than the device" : "")}");
        var table = new Table().AddColumn("measure").AddColumn(new TableColumn("value").RightAligned());
        void Row(string measure, string value) => table.AddRow(new Text(measure), new Text(value));
        Row(o.Policy.Auto ? "window k / swap k' / prefetch (planned)" : "window k / swap k' / prefetch", $"{r.Window} / {r.Swap} / {r.Window - r.Swap}");
        Row("wall time", $"{r.WallSeconds:0.000} s");
        Row("lower bound (max of transfer, compute)", $"{r.LowerBoundSeconds:0.000} s");
        Row("overlap efficiency", $"{r.OverlapEfficiency:P1}");
        Row("sum of load time", $"{r.LayerTimings.Sum(l => l.LoadSeconds):0.000} s");
        Row("sum of compute time", $"{r.LayerTimings.Sum(l => l.ComputeSeconds):0.000} s");
        Row("peak device bytes", $"{r.PeakDeviceBytes:N0} ({r.PeakDeviceBytes / (double)r.ModelBytes:P1} of the model)");
        Row("bytes transferred", $"{r.BytesTransferred:N0}");
        Row("output", $"{ok.Output.DType}[{string.Join(", ", ok.Output.Shape)}]");
        Row("output sha256", sha);
        console.Write(table);
        foreach (var (label, path) in new[] { ("report", o.ReportPath), ("trace", o.TracePath), ("output", o.OutputPath) })
            if (path is not null) console.MarkupLineInterpolated($"{label}: {path}");
    }
}
