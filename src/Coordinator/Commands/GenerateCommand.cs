using System.Collections.Immutable;
using System.CommandLine;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using Akka.Actor;
using Spectre.Console;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Bench;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Generation;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Workers;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Coordinator.Commands;

/// <summary>What <c>superpipeline generate</c> was asked to do, already parsed.</summary>
/// <param name="Input">int64 token ids [batch, seq] (each row a prompt), or null with <paramref name="Prompts"/>.</param>
/// <param name="Prompts">Text prompts (one per row, of any lengths) through the checkpoint's tokenizer; empty with an input.</param>
/// <param name="Request">What to generate; an end-of-sequence or pad id left null comes from the tokenizer or config.json.</param>
public sealed record GenerateOptions(string ModelDir, string? Input, IReadOnlyList<string> Prompts, GenerationRequest Request, PolicySpec Policy,
    KvPlacement Placement, DeviceSpec Device, string? OutputPath, string? ReportPath)
{
    /// <summary>The disk tier: host bytes for weights (<c>--host-memory</c>), or null to keep every layer in memory.</summary>
    public long? HostMemory { get; init; }

    /// <summary>Images (<c>--image</c>, PNG or JPEG) for a LLaVA checkpoint, one per &lt;image&gt; of the prompts in order.</summary>
    public IReadOnlyList<string> Images { get; init; } = [];
}

/// <summary>The JSON report of <c>superpipeline generate</c>: the model, the measured generation and the tokens' digest.</summary>
public sealed record GenerateReportFile(string Model, string? Input, string Sampling, long? Eos, GenerationReport Generation, long[] TokensShape,
    string TokensSha256)
{
    /// <summary>Each row as text (prompt and generated), when the checkpoint has a tokenizer.</summary>
    public IReadOnlyList<string>? Texts { get; init; }

    /// <summary>The images (<c>--image</c>) a LLaVA generation placed at its prompts' &lt;image&gt; tokens, in order; null without.</summary>
    public IReadOnlyList<string>? Images { get; init; }
}

/// <summary><c>superpipeline generate</c>: a prefill pass over the prompts, then one decode pass per new token, each streaming
/// every layer under (k, k'): a generation job through the job system of one process (<see cref="EmbeddedHost"/>), the same path
/// a cluster runs (<c>submit --generate N</c>).</summary>
public static class GenerateCommand
{
    /// <summary>The flag that carries each generation field the engine names in its refusals.</summary>
    internal static readonly IReadOnlyDictionary<string, string> FlagOfField = new Dictionary<string, string>
    {
        [GenerationFields.MaxNewTokens] = "--max-new-tokens", [GenerationFields.Temperature] = "--temperature",
        [GenerationFields.TopK] = "--top-k", [GenerationFields.TopP] = "--top-p", [GenerationFields.Eos] = "--eos",
        [GenerationFields.KvPlacement] = "--kv", [GenerationFields.Prompt] = "--input",
        [FieldException.DeviceMemory] = "--device-memory", [FieldException.ResidentLayers] = "--resident-layers",
    };

    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "a Hugging Face checkpoint directory (config.json + safetensors)", Required = true };
        var input = new Option<string>("--input") { Description = "int64 token ids [batch, seq] in a .npy file: each row is one prompt" };
        var prompt = new Option<string[]>("--prompt")
        {
            Description = "a text prompt, through the checkpoint's tokenizer (repeatable: one per batch row, of any lengths)",
            AllowMultipleArgumentsPerToken = false,
        };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "tokens to generate per row", DefaultValueFactory = _ => 32 };
        var temperature = new Option<double?>("--temperature") { Description = "sample, dividing the logits by this (> 0) first" };
        var topK = new Option<int?>("--top-k") { Description = "sample among the k most likely tokens (k ≥ 1)" };
        var topP = new Option<double?>("--top-p") { Description = "sample among the most likely tokens holding this probability mass, in (0, 1]" };
        var seed = new Option<long>("--seed") { Description = "seed of the sampling (each row draws from its own generator)", DefaultValueFactory = _ => 0 };
        var eos = new Option<long?>("--eos")
        {
            Description = "end-of-sequence token id: a row stops there (default: the tokenizer's, else config.json's eos_token_id)",
        };
        var kv = new Option<string>("--kv") { Description = "where the KV cache lives: device (for the whole run) or host (brought in with each layer)",
            DefaultValueFactory = _ => "device" };
        var streaming = new WindowOptions("k: layers resident on the device at once (a number, 'all', or 'auto' to plan k, k' and the pinned "
            + "layers for the device, the batch and the KV cache)");
        var output = new Option<string>("--output") { Description = "write the tokens, int64 [batch, prompt + new], to this NumPy .npy file" };
        var report = new Option<string>("--report") { Description = "write the JSON report to this file" };
        var image = new Option<string[]>("--image")
        {
            Description = "llava: a PNG or JPEG for the prompt's <image> token (repeatable: one per <image>, in order)",
            AllowMultipleArgumentsPerToken = false,
        };

        var command = new Command("generate", "Generate tokens from a checkpoint: a prefill pass, then one decode pass per token, each streaming "
            + "the layers under (k, k') with a KV cache.");
        foreach (var o in new Option[] { model, input, prompt, maxNew, temperature, topK, topP, seed, eos, kv }) command.Options.Add(o);
        streaming.AddTo(command);
        foreach (var o in new Option[] { output, report, image }) command.Options.Add(o);
        command.SetAction((r, cancel) =>
        {
            var options = InFlags(() => new GenerateOptions(
                r.GetValue(model)!, r.GetValue(input), r.GetValue(prompt) ?? [],
                new GenerationRequest(r.GetValue(maxNew), new SamplingSettings(r.GetValue(temperature), r.GetValue(topK), r.GetValue(topP), r.GetValue(seed)),
                    r.GetValue(eos)),
                streaming.Policy(r),
                GenerationSession.ParsePlacement(r.GetValue(kv)!),
                streaming.DeviceSpec(r),
                r.GetValue(output), r.GetValue(report))
            {
                HostMemory = streaming.HostMemoryBytes(r),
                Images = r.GetValue(image) ?? [],
            });
            return RunAsync(options, AnsiConsole.Console, cancel);
        });
        return command;
    }

    /// <summary>Runs <paramref name="parse"/>, naming the flag of a generation field it refuses (from <paramref name="flags"/>, by
    /// default generate's own).</summary>
    internal static T InFlags<T>(Func<T> parse, IReadOnlyDictionary<string, string>? flags = null)
    {
        try
        {
            return parse();
        }
        catch (FieldException e) when ((flags ?? FlagOfField).TryGetValue(e.Field, out var flag))
        {
            throw new ArgumentException(e.MessageFor(flag), e);
        }
    }

    /// <summary>Checks everything before any work, generates on an in-process stage, prints the tokens as they come and a
    /// summary, and writes the files. Returns the exit code.</summary>
    public static async Task<int> RunAsync(GenerateOptions o, IAnsiConsole console, CancellationToken cancel)
    {
        OutputPaths.CheckWritable(o.ReportPath, "--report");
        OutputPaths.CheckWritable(o.OutputPath, "--output");
        var read = GenerationPrompts.Read(o.ModelDir, o.Input, o.Prompts).WithImages(o.ModelDir, o.Images.Count);
        var prompts = read.Ids;
        var request = o.Request with { Eos = read.Eos(o.Request.Eos, o.ModelDir), PadId = o.Request.PadId ?? read.Pad };
        int longest = prompts.Max(p => p.Length);
        var spec = ModelCatalog.CheckpointSpec(o.ModelDir, prompts.Length, longest, 0);
        var model = Preflight.Model(spec, o.Policy);
        if (!o.Policy.Auto) OffloadPolicy.For(o.Policy with { ResidentAuto = false }, model.Layers.Count); // "window 5 exceeds the 4 layers"
        InFlags(() => GenerationSession.Check(model, prompts, request));
        Preflight.DeviceFits(model, o.Device.CapacityBytes);
        Preflight.HostWeightsFit(model, HostWeightLimit.Read(WorkerConfig.Load("worker")), Preflight.HostWeightBytes(spec, model, o.HostMemory));

        if (o.Images.Count > 0 && o.Policy.Auto) throw new ArgumentException("--window auto is not planned with --image: give --window K or all");
        if (o.Images.Count > 0 && o.Policy.ResidentAuto)
            throw new ArgumentException("--resident-layers auto is not planned with --image: give a number of layers");
        if (o.Images.Count > 0 && o.HostMemory is not null) throw new ArgumentException("--host-memory is not supported with --image");

        console.MarkupLineInterpolated($"[bold]superpipeline generate[/]: {prompts.Length} prompt(s) of up to {longest} tokens, {request.Sampling}");
        var text = read.Tokenizer is { } tokenizer && prompts.Length == 1 ? tokenizer.TextStream() : null;
        if (text is not null) console.Write(new Text(read.Texts?[0] ?? read.Tokenizer!.Decode([.. prompts[0].Select(id => (int)id)])));
        var job = Job(JobId.New(), spec, o.Policy, prompts, request, o.Placement);
        var onToken = NewSteps(t =>
        {
            if (text is null) PrintToken(console, t);
            else console.Write(new Text(text.Append((int)t.Tokens[0]))); // one prompt: its text as it is produced
        });
        JobGenerated result;
        string? visionLine = null;
        if (o.Images.Count > 0)
        {
            // LLaVA with images: the vision pass, then the generation, on one in-process stage (LlavaGenerate).
            var llava = await LlavaGenerate.RunAsync(o.ModelDir, o.Images, prompts, request, o.Policy, o.Placement, o.Device,
                t => onToken(new JobToken(job.Id, t.Step, [.. t.Tokens])), cancel);
            var v = llava.Vision;
            visionLine = string.Create(CultureInfo.InvariantCulture,
                $"vision pass: {o.Images.Count} image(s), {v.Layers} layers, window {v.Window} / swap {v.Swap}, {v.WallSeconds:0.000} s");
            result = new JobGenerated(job.Id, GenerationRun.Tokens(llava.Result.Tokens), llava.Result.Report);
        }
        else
        {
            await using var host = EmbeddedHost.Start(o.Device, o.HostMemory is { } h ? $"superpipeline.worker.host-memory = {h}" : null);
            var answer = await host.RunAsync(job, onToken: onToken).WaitAsync(cancel);
            result = Generated(job, answer);
        }
        if (text is not null) console.WriteLine(text.Flush());
        if (visionLine is not null) console.WriteLine(visionLine);

        var tokens = result.Tokens;
        var sha = Convert.ToHexStringLower(SHA256.HashData(tokens.Bytes.AsSpan()));
        IReadOnlyList<string>? texts = null;
        if (read.Tokenizer is not null)
        {
            using var all = TensorPayloads.ToTensor(tokens);
            var grid = new long[tokens.Shape[0], tokens.Shape[1]];
            var flat = all.data<long>().ToArray();
            for (int i = 0; i < flat.Length; i++) grid[i / grid.GetLength(1), i % grid.GetLength(1)] = flat[i];
            int promptWidth = (int)tokens.Shape[1] - result.Report.NewTokens;
            texts = [.. Enumerable.Range(0, prompts.Length).Select(b => read.Text(grid, b, promptWidth))];
            if (text is null)
                for (int b = 0; b < texts.Count; b++) console.WriteLine($"row {b}: {texts[b]}");
        }
        if (o.OutputPath is not null) Npy.Write(o.OutputPath, tokens);
        if (o.ReportPath is not null)
            ReportWriter.WriteJson(o.ReportPath, new GenerateReportFile(Path.GetFullPath(o.ModelDir), o.Input is null ? null : Path.GetFullPath(o.Input),
                request.Sampling.ToString(), request.Eos, result.Report, [.. tokens.Shape], sha)
                {
                    Texts = texts, Images = o.Images.Count > 0 ? [.. o.Images.Select(Path.GetFullPath)] : null,
                });
        Summarize(console, o, result.Report, tokens, sha);
        return 0;
    }

    /// <summary>A generation job: <paramref name="spec"/> sized for the prompts (batch rows, longest prompt), the request and KV
    /// placement in their wire form (the one conversion from the engine's types).</summary>
    internal static SubmitJob Job(JobId id, ModelSpec spec, PolicySpec policy, IReadOnlyList<long[]> prompts, GenerationRequest request,
        KvPlacement placement)
    {
        var sampling = request.Sampling;
        var generation = new GenerationParameters([.. prompts.Select(p => p.ToImmutableArray())], request.MaxNewTokens, sampling.Temperature, sampling.TopK,
            sampling.TopP, sampling.Seed, request.Eos, request.PadId, GenerationSession.Name(placement));
        return new SubmitJob(id, spec with { Batch = prompts.Count, Sequence = prompts.Max(p => p.Length) }, policy, Generation: generation);
    }

    /// <summary>One line per step: each row's new token.</summary>
    /// <summary>Passes on each step once: a job that failed over restarts its generation from the prompt and sends the steps it
    /// had sent again (the same tokens: generation is deterministic); they are not shown twice.</summary>
    public static Action<JobToken> NewSteps(Action<JobToken> onToken)
    {
        int shown = -1;
        return t =>
        {
            if (t.Step <= shown) return;
            shown = t.Step;
            onToken(t);
        };
    }

    internal static void PrintToken(IAnsiConsole console, JobToken t) =>
        console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"token {t.Step + 1}: {string.Join(' ', t.Tokens)}"));

    /// <summary>The generation's answer, or the job's refusal or failure as an error of one line.</summary>
    internal static JobGenerated Generated(SubmitJob job, IJobEvent answer) => answer switch
    {
        JobGenerated ok => ok,
        JobRefused refused => throw new ArgumentException(refused.Reason),
        JobFailed failed => throw new InvalidOperationException(failed.Reason),
        _ => throw new InvalidOperationException($"job {job.Id}: unexpected answer {answer}"),
    };

    internal static void Summarize(IAnsiConsole console, GenerateOptions o, GenerationReport r, TensorPayload tokens, string sha) =>
        Summarize(console, r, tokens, sha, o.ReportPath, o.OutputPath);

    /// <summary>The summary table (with the stages, when the job ran as several) and the files written.</summary>
    internal static void Summarize(IAnsiConsole console, GenerationReport r, TensorPayload tokens, string sha, string? reportPath, string? outputPath)
    {
        var table = new Table().AddColumn("measure").AddColumn(new TableColumn("value").RightAligned());
        void Row(string measure, string value) => table.AddRow(new Text(measure), new Text(value));
        Row("device", $"{r.Device} ({ByteSize.Format(r.DeviceCapacityBytes)}); model {r.Layers} layers, {ByteSize.Format(r.ModelBytes)}");
        Row("window k / swap k' / kv", $"{r.Window} / {r.Swap} / {r.KvPlacement}");
        Row("prompt tokens / new tokens / passes", $"{r.PromptTokens} / {r.NewTokens} / {r.Passes}");
        Row("time to first token", $"{r.TimeToFirstTokenSeconds:0.000} s");
        Row("decode tokens/s (all rows)", $"{r.DecodeTokensPerSecond:0.0}");
        Row("peak device bytes", $"{r.PeakDeviceBytes:N0} ({r.PeakDeviceBytes / (double)r.ModelBytes:P1} of the model)");
        Row("KV bytes", $"{r.KvBytes:N0}");
        Row("bytes transferred", $"{r.BytesTransferred:N0}");
        if (r.PeakHostWeightBytes > 0) Row("peak host weight bytes", $"{r.PeakHostWeightBytes:N0}");
        Row("wall time", $"{r.WallSeconds:0.000} s");
        Row("tokens", $"Int64[{string.Join(", ", tokens.Shape)}]");
        Row("tokens sha256", sha);
        console.Write(table);
        if (r.Stages.Length > 1)
        {
            var stages = new Table().AddColumn("stage").AddColumn("node").AddColumn("device").AddColumn("layers").AddColumn("k/k'")
                .AddColumn(new TableColumn("peak bytes").RightAligned()).AddColumn(new TableColumn("KV bytes").RightAligned());
            foreach (var s in r.Stages)
                stages.AddRow(new Text($"{s.Stage}"), new Text(s.Node), new Text(s.Device), new Text($"{s.FirstLayer}..{s.FirstLayer + s.LayerCount - 1}"),
                    new Text($"{s.Window}/{s.Swap}"), new Text($"{s.PeakDeviceBytes:N0}"), new Text($"{s.KvBytes:N0}"));
            console.Write(stages);
        }
        foreach (var (label, path) in new[] { ("report", reportPath), ("output", outputPath) })
            if (path is not null) console.MarkupLineInterpolated($"{label}: {path}");
    }
}
