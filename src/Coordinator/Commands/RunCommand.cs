using System.CommandLine;
using System.Security.Cryptography;
using Spectre.Console;
using Superpipeline.Contracts;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Images;
using Superpipeline.Engine.Onnx;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
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
        var streaming = new WindowOptions(WindowOptions.WithAuto);
        var report = new Option<string>("--report") { Description = "write the JSON report to this file" };
        var trace = new Option<string>("--trace") { Description = "write a Chrome trace (chrome://tracing, Perfetto) of load, compute and evict per layer" };
        var output = new Option<string>("--output") { Description = "write the output tensor to this NumPy .npy file" };
        var image = new Option<string[]>("--image")
        {
            Description = "a PNG or JPEG image, one batch row per --image (repeat it), for a checkpoint that takes images (vit): resized and " +
                "normalised by its preprocessor_config.json (instead of --input); for an ONNX resnet, by ResNetPreprocess.onnx beside it, " +
                "else ImageNet's",
        };

        var run = new Command("run", "Run one forward pass of a model on a device smaller than the model " +
            "(default: the demo decoder, 5× larger than its 64 MiB simulated device).");
        model.AddTo(run);
        model.AddPromptTo(run);
        streaming.AddTo(run);
        foreach (var o in new Option[] { report, trace, output, image }) run.Options.Add(o);
        run.SetAction(async (r, cancel) =>
        {
            var spec = WithImages(model.Read(r), r, model, r.GetValue(image) ?? []);
            try
            {
                return await RunAsync(new RunOptions(
                        spec,
                        streaming.Policy(r),
                        streaming.DeviceSpec(r),
                        r.GetValue(report), r.GetValue(trace), r.GetValue(output))
                    {
                        HostMemory = streaming.HostMemoryBytes(r),
                    },
                    AnsiConsole.Console, cancel);
            }
            finally
            {
                PromptIds.DeleteTemporary(spec.Input); // the ids of --prompt
                ImageInput.DeleteTemporary(spec.Input); // the pixels of --image
            }
        });
        return run;
    }

    /// <summary>--image: the spec of <paramref name="spec"/>'s checkpoint with the images as its input, one batch row each, through
    /// the checkpoint's own image pipeline (<see cref="ModelCatalog.ImagePreprocessOf"/>). Refused in one line naming the flag: beside
    /// --input, --prompt, --batch or --seq-len, and for a model that does not take images.</summary>
    static ModelSpec WithImages(ModelSpec spec, ParseResult r, ModelOptions model, IReadOnlyList<string> images)
    {
        if (images.Count == 0) return spec;
        if (r.GetValue(model.Input) is not null || (r.GetValue(model.Prompt) ?? []).Length > 0)
        {
            PromptIds.DeleteTemporary(spec.Input);
            throw new ArgumentException("--image cannot be given with --input or --prompt: each gives the model's input");
        }
        if (r.GetResult(model.Batch) is { Implicit: false } || r.GetResult(model.SeqLen) is { Implicit: false })
            throw new ArgumentException("--batch and --seq-len cannot be given with --image: each image is one batch row");
        if (spec.Checkpoint is not { } dir)
            throw new ArgumentException($"--image needs --model to name a checkpoint directory of a family that takes images (vit); got '{spec.Name}'");
        if (OnnxImport.IsOnnx(dir)) // an ONNX resnet: the pixels its graph takes (ML.NET's preprocessing graph beside it, or ImageNet's)
        {
            if (spec.Name != ResNetOnnx.Family)
                throw new ArgumentException($"--image applies to a model that takes images; {dir} is {spec.Name}, which does not");
            string onnxPixels = ResNetImages.WriteTemporary(dir, images);
            try
            {
                return ModelCatalog.CheckpointSpec(dir, images.Count, spec.Sequence, spec.Seed, onnxPixels, spec.Name);
            }
            catch
            {
                ImageInput.DeleteTemporary(onnxPixels);
                throw;
            }
        }
        var preprocess = ModelCatalog.ImagePreprocessOf(dir)
            ?? throw new ArgumentException($"--image applies to a checkpoint that takes images (vit); {dir} is {spec.Name}, which takes token ids");
        return ImageSpec(images, preprocess, pixels => ModelCatalog.CheckpointSpec(dir, images.Count, spec.Sequence, spec.Seed, pixels));
    }

    /// <summary>The images' pixels through <paramref name="preprocess"/> (float32 [N, 3, H, W], one row per image) written to a
    /// temporary .npy, and the spec <paramref name="withInput"/> makes of its path (the job's <see cref="ModelSpec.Input"/>: every
    /// member reads the same path). Delete it with <see cref="ImageInput.DeleteTemporary"/> once the job is done; a spec that fails
    /// is cleaned up here. An image that is missing or does not decode is one line naming the file.</summary>
    public static ModelSpec ImageSpec(IReadOnlyList<string> images, ImagePreprocess preprocess, Func<string, ModelSpec> withInput)
    {
        string pixels = ImageInput.WriteTemporary(images, preprocess);
        try
        {
            return withInput(pixels);
        }
        catch
        {
            ImageInput.DeleteTemporary(pixels);
            throw;
        }
    }

    /// <summary>Checks the job against the model's definition and this machine's memory, runs one pass in an embedded
    /// host, prints the summary and writes the files. Returns the exit code.</summary>
    public static async Task<int> RunAsync(RunOptions o, IAnsiConsole console, CancellationToken cancel)
    {
        var ok = await PassAsync(o, console, cancel);
        var sha = Convert.ToHexStringLower(SHA256.HashData(ok.Output.Bytes.AsSpan()));
        if (o.ReportPath is not null) JsonReport.Write(o.ReportPath, JsonReport.Build(o.Model, ok.Report, ok.Output, sha));
        if (o.TracePath is not null) ChromeTrace.Write(o.TracePath, ok.Report);
        if (o.OutputPath is not null) Npy.Write(o.OutputPath, ok.Output);
        Summarize(console, o, ok, sha);
        return 0;
    }

    /// <summary>The pass of <see cref="RunAsync"/> without its files and summary (shared by <c>embed</c>).</summary>
    internal static async Task<JobSucceeded> PassAsync(RunOptions o, IAnsiConsole console, CancellationToken cancel)
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
        return (JobSucceeded)answer;
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

    internal static void Summarize(IAnsiConsole console, RunOptions o, JobSucceeded ok, string sha)
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
