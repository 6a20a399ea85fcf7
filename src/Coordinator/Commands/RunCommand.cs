using System.CommandLine;
using System.Security.Cryptography;
using Spectre.Console;
using Superpipeline.Contracts;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Text;
using Superpipeline.Engine.Simulation;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Messages;
using Superpipeline.Workers;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Coordinator.Commands;

/// <summary>What <c>superpipeline run</c> was asked to do, already parsed.</summary>
public sealed record RunOptions(ModelSpec Model, PolicySpec Policy, DeviceSpec Device, string? ReportPath, string? TracePath, string? OutputPath)
{
    /// <summary>--host-memory: the disk tier's host memory for weights (null: weights stay resident in host memory).</summary>
    public long? HostMemory { get; init; }
}

/// <summary><c>superpipeline run</c>: one forward pass in an embedded host (the job manager and a node agent in this process).</summary>
public static class RunCommand
{
    public static Command Build()
    {
        var model = new ModelOptions();
        var streaming = new WindowOptions("k: layers resident on the device at once (a number, 'all' for no offload, or 'auto' to let the planner "
            + "choose k and k' for the device memory)");
        var report = new Option<string>("--report") { Description = "write the JSON report to this file" };
        var trace = new Option<string>("--trace") { Description = "write a Chrome trace (chrome://tracing, Perfetto) of load, compute and evict per layer" };
        var output = new Option<string>("--output") { Description = "write the output tensor to this NumPy .npy file" };
        var hostMemory = new Option<string>("--host-memory")
        {
            Description = "host memory for a checkpoint's weights (bytes or KiB/MiB/GiB): when they exceed it, layers stay in the safetensors " +
                "files and are read when the window admits them (default: all weights held in host memory)",
        };

        var run = new Command("run", "Run one forward pass of a model on a device smaller than the model " +
            "(default: the demo decoder, 5× larger than its 64 MiB simulated device).");
        model.AddTo(run);
        model.AddPromptTo(run);
        streaming.AddTo(run);
        foreach (var o in new Option[] { report, trace, output, hostMemory }) run.Options.Add(o);
        run.SetAction(async (r, cancel) =>
        {
            var spec = model.Read(r);
            try
            {
                return await RunAsync(new RunOptions(
                        spec,
                        streaming.Policy(r),
                        streaming.DeviceSpec(r),
                        r.GetValue(report), r.GetValue(trace), r.GetValue(output))
                    {
                        HostMemory = r.GetValue(hostMemory) is { } h ? ByteSize.Parse(h, FieldException.HostMemory) : null,
                    },
                    AnsiConsole.Console, cancel);
            }
            finally
            {
                PromptIds.DeleteTemporary(spec.Input); // the ids of --prompt
            }
        });
        return run;
    }

    /// <summary>Checks the job against the model's definition and this machine's memory, runs one pass in an embedded
    /// host, prints the summary and writes the files. Returns the exit code.</summary>
    public static async Task<int> RunAsync(RunOptions o, IAnsiConsole console, CancellationToken cancel)
    {
        OutputPaths.CheckWritable(o.ReportPath, "--report");
        OutputPaths.CheckWritable(o.TracePath, "--trace");
        OutputPaths.CheckWritable(o.OutputPath, "--output");
        var model = Preflight.Model(o.Model, o.Policy);
        Preflight.DeviceFits(model, o.Device.CapacityBytes);
        if (!o.Policy.Auto && !o.Policy.ResidentAuto)
            Planner.CheckPinsFit(ModelCost.From(model), OffloadPolicy.For(o.Policy, model.Layers.Count), o.Device.CapacityBytes);
        Preflight.HostWeightsFit(model, HostWeightLimit.Read(WorkerConfig.Load("worker")), Preflight.HostWeightBytes(o.Model, model, o.HostMemory));

        await using var host = EmbeddedHost.Start(o.Device, o.HostMemory is { } h ? $"superpipeline.worker.host-memory = {h}" : null);
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

    /// <summary>"0-3, 7, 9-10" for sorted layer indices.</summary>
    static string Ranges(IReadOnlyList<int> sorted)
    {
        var parts = new List<string>();
        for (int i = 0; i < sorted.Count;)
        {
            int j = i;
            while (j + 1 < sorted.Count && sorted[j + 1] == sorted[j] + 1) j++;
            parts.Add(j == i ? $"{sorted[i]}" : $"{sorted[i]}-{sorted[j]}");
            i = j + 1;
        }
        return string.Join(", ", parts);
    }

    static void Summarize(IAnsiConsole console, RunOptions o, JobSucceeded ok, string sha)
    {
        var r = ok.Report;
        double ratio = r.ModelBytes / (double)r.DeviceCapacityBytes;
        string size = $"{r.Layers} layers, {ByteSize.Format(r.ModelBytes)}", capacity = ByteSize.Format(r.DeviceCapacityBytes);
        string larger = ratio > 1 ? $": the model is {ratio:0.0}× larger than the device" : "";
        console.MarkupLineInterpolated($"[bold]superpipeline run[/]: model [bold]{o.Model.Name}[/] ({size}) on [bold]{r.Device}[/] ({capacity}){larger}");
        var table = new Table().AddColumn("measure").AddColumn(new TableColumn("value").RightAligned());
        void Row(string measure, string value) => table.AddRow(new Text(measure), new Text(value));
        Row(o.Policy.Auto ? "window k / swap k' / prefetch (planned)" : "window k / swap k' / prefetch", $"{r.Window} / {r.Swap} / {r.Window - r.Swap}");
        Row("wall time", $"{r.WallSeconds:0.000} s");
        Row("lower bound (max of transfer, compute)", $"{r.LowerBoundSeconds:0.000} s");
        Row("overlap efficiency", $"{r.OverlapEfficiency:P1}");
        Row("sum of load time", $"{r.LayerTimings.Sum(l => l.LoadSeconds):0.000} s");
        Row("sum of compute time", $"{r.LayerTimings.Sum(l => l.ComputeSeconds):0.000} s");
        Row("peak device bytes", $"{r.PeakDeviceBytes:N0} ({r.PeakDeviceBytes / (double)r.ModelBytes:P1} of the model)");
        if (o.Policy.Pins)
            Row(o.Policy.ResidentAuto ? "pinned layers (planned) / already resident" : "pinned layers / already resident",
                $"{r.Pinned.Length} ({Ranges(r.Pinned)}) / {r.PinnedReused}");
        Row("bytes transferred", $"{r.BytesTransferred:N0}");
        if (o.HostMemory is { } budget) Row("peak host weight bytes (--host-memory)", $"{r.PeakHostWeightBytes:N0} (budget {budget:N0})");
        Row("output", $"{ok.Output.DType}[{string.Join(", ", ok.Output.Shape)}]");
        Row("output sha256", sha);
        console.Write(table);
        foreach (var (label, path) in new[] { ("report", o.ReportPath), ("trace", o.TracePath), ("output", o.OutputPath) })
            if (path is not null) console.MarkupLineInterpolated($"{label}: {path}");
    }
}
