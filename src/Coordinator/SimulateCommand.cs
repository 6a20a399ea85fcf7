using Superpipeline.Engine.Models;
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;

namespace Superpipeline.Coordinator;

/// <summary>What <c>superpipeline simulate</c> was asked to do, already parsed.</summary>
/// <param name="Spec">A JSON spec file or a built-in name (MODEL@GPU or a calibration case).</param>
/// <param name="Policy">Overrides the spec's policy (sync, resident, window:K:K', bytes:LIVE:PREFETCH, batched:K:K':M).</param>
/// <param name="Compare">Simulate the spec's comparison set side by side.</param>
/// <param name="TimelineRows">Rows of the per-layer timeline to print per pass; 0 prints none.</param>
/// <param name="JsonPath">Write everything to this file.</param>
/// <param name="Kv">Overrides the workload's KV cache placement: device or host.</param>
public sealed record SimulateOptions(
    string Spec = SimulateCommand.DefaultSpec,
    string? Policy = null,
    bool Compare = false,
    int TimelineRows = SimulateCommand.DefaultTimelineRows,
    string? JsonPath = null,
    bool List = false,
    bool Calibrate = false,
    int? Batch = null,
    int? Prompt = null,
    int? Generate = null,
    int? MicroBatches = null,
    string? DType = null,
    string? Kv = null);

/// <summary><c>superpipeline simulate</c>: analytic simulation of generation (prefill + decode passes) under the
/// peer policies, on cost models built from model shapes and GPU figures; <c>--calibrate</c> compares it with
/// published throughputs. It never runs a model: it answers in milliseconds.</summary>
public static class SimulateCommand
{
    public const string DefaultSpec = "llama2-70b@a100-80gb";
    public const int DefaultTimelineRows = 12;

    public static Command Build()
    {
        var spec = new Option<string>("--spec") { Description = $"JSON spec file, or a built-in: MODEL@GPU or a calibration case (see --list); default {DefaultSpec}", DefaultValueFactory = _ => DefaultSpec };
        var policy = new Option<string>("--policy") { Description = $"policy instead of the spec's: {SimPolicy.Grammar}" };
        var compare = new Option<bool>("--compare") { Description = "simulate the peer policies side by side (sync, window, byte budgets, batched, resident)" };
        var timeline = new Option<int>("--timeline") { Description = "per-layer timeline rows to print per pass (0: none)", DefaultValueFactory = _ => DefaultTimelineRows };
        var json = new Option<string>("--json") { Description = "write everything (spec, results, pass summaries, timelines) to this JSON file" };
        var list = new Option<bool>("--list") { Description = "list the built-in models, GPUs and specs" };
        var calibrate = new Option<bool>("--calibrate") { Description = "simulate the published FlexGen / Accelerate / ZeRO-Inference experiments and compare" };
        var batch = new Option<int?>("--batch") { Description = "sequences per micro-batch (overrides the spec)" };
        var prompt = new Option<int?>("--prompt") { Description = "prompt tokens (overrides the spec)" };
        var generate = new Option<int?>("--generate") { Description = "tokens to generate (overrides the spec)" };
        var micro = new Option<int?>("--micro-batches") { Description = "micro-batches in the job (overrides the spec)" };
        var dtype = new Option<string>("--dtype") { Description = "weight format: fp32, fp16, bf16, int8, int4 (overrides the spec)" };
        var kv = new Option<string>("--kv") { Description = "KV cache placement: device or host (overrides the spec)" };

        var command = new Command("simulate", "Simulate generation (prefill + decode) of a model on a GPU under streaming policies, from a cost model; --calibrate checks it against published throughputs.");
        foreach (var o in new Option[] { spec, policy, compare, timeline, json, list, calibrate, batch, prompt, generate, micro, dtype, kv }) command.Options.Add(o);
        command.SetAction((r, cancel) => RunAsync(new SimulateOptions(
            r.GetValue(spec)!, r.GetValue(policy), r.GetValue(compare), r.GetValue(timeline), r.GetValue(json), r.GetValue(list), r.GetValue(calibrate),
            r.GetValue(batch), r.GetValue(prompt), r.GetValue(generate), r.GetValue(micro), r.GetValue(dtype), r.GetValue(kv)), Console.Out, cancel));
        return command;
    }

    /// <summary>Runs the command, printing to <paramref name="output"/>. Returns the exit code; bad input throws
    /// <see cref="ArgumentException"/> with one line before any work.</summary>
    public static async Task<int> RunAsync(SimulateOptions o, TextWriter output, CancellationToken cancel = default)
    {
        if (o.TimelineRows < 0) throw new ArgumentException($"--timeline must be 0 or more rows; got {o.TimelineRows}");
        OutputPaths.CheckWritable(o.JsonPath, "--json");
        if (o.List)
        {
            output.Write(ListText());
            return 0;
        }
        if (o.Calibrate) return await CalibrateAsync(o, output, cancel);

        var spec = Apply(SimulationSpecs.Resolve(o.Spec), o);
        var policies = o.Compare ? spec.ComparePolicies() : [o.Policy is null ? spec.Policy : SimPolicy.Parse(o.Policy)];
        if (o.Compare && o.Policy is not null) policies = [SimPolicy.Parse(o.Policy), .. policies.Where(p => p != SimPolicy.Parse(o.Policy))];
        foreach (var p in policies) p.CreateGate(spec.Streamed()); // refuse a policy that does not fit the model before any work

        var clock = Stopwatch.StartNew();
        var results = policies.Select(p => GenerationSimulator.Run(spec, p)).ToList();
        double wall = clock.Elapsed.TotalSeconds;

        output.Write(Report(spec, results, o.TimelineRows, wall));
        if (o.JsonPath is not null)
        {
            await File.WriteAllTextAsync(o.JsonPath, JsonReport.Serialize(Json(spec, results, wall)), cancel);
            output.WriteLine($"written: {o.JsonPath}");
        }
        return 0;
    }

    /// <summary>The spec with the command line's workload and format overrides applied (and validated).</summary>
    public static SimulationSpec Apply(SimulationSpec spec, SimulateOptions o)
    {
        var w = spec.Workload;
        KvPlacement kv = w.Kv;
        if (o.Kv is not null && (!Enum.TryParse(o.Kv, ignoreCase: true, out kv) || int.TryParse(o.Kv, out _)))
            throw new ArgumentException($"--kv must be device or host; got '{o.Kv}'");
        w = w with
        {
            Batch = o.Batch ?? w.Batch,
            Prompt = o.Prompt ?? w.Prompt,
            Generate = o.Generate ?? w.Generate,
            MicroBatches = o.MicroBatches ?? w.MicroBatches,
            Kv = kv,
        };
        var format = o.DType is null ? spec.Format : WeightFormat.Parse(o.DType, "--dtype");
        try
        {
            return (spec with { Workload = w, Format = format }).Validated();
        }
        catch (ArgumentException e) when (e.Message.StartsWith("workload.", StringComparison.Ordinal))
        {
            throw new ArgumentException(e.Message.Replace("workload.microBatches", "--micro-batches").Replace("workload.", "--"));
        }
    }

    // ---------------------------------------------------------------- text

    static string F(double v, string format) => v.ToString(format, CultureInfo.InvariantCulture);

    static string Seconds(double s) => s >= 100 ? F(s, "0.0") : s >= 1 ? F(s, "0.000") : F(s, "0.0000");

    /// <summary>The printed report: spec, one row per policy, timelines of the first policy's prefill and first decode pass.</summary>
    public static string Report(SimulationSpec spec, IReadOnlyList<GenerationResult> results, int timelineRows, double wallSeconds)
    {
        var w = new StringWriter { NewLine = "\n" };
        var m = spec.Model;
        var streamed = spec.Streamed();
        w.WriteLine($"superpipeline simulate: {spec.Name}{(spec.Notes is null ? "" : $" ({spec.Notes})")}");
        w.WriteLine($"model     {m}; {F(m.ParameterCount / 1e9, "0.00")} B parameters; {spec.Format}: {ByteSize.Format(streamed.Sum())} streamed per pass over {streamed.Length} layers (largest {ByteSize.Format(streamed.Max())})");
        w.WriteLine($"gpu       {spec.Gpu}");
        var wl = spec.Workload;
        var resident = wl.ResidentSet(streamed.Length);
        w.WriteLine($"workload  batch {wl.Batch} × {wl.MicroBatches} micro-batch{(wl.MicroBatches == 1 ? "" : "es")}, prompt {wl.Prompt}, generate {wl.Generate} (1 prefill + {wl.Generate - 1} decode passes), " +
            $"KV cache on the {(wl.Kv == KvPlacement.Device ? "device" : $"host (attention at {F(spec.Host.AttentionFlopsPerSecond / 1e9, "0.##")} GFLOPS)")}" +
            (resident.Count > 0 ? $", {resident.Count} layer{(resident.Count == 1 ? "" : "s")} resident for the job" : ""));
        w.WriteLine();
        w.WriteLine("| policy | fits | sequences | prefill s | decode s | total s | tokens/s | peak device | of which job-resident | transferred |");
        w.WriteLine("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in results)
            w.WriteLine($"| {r.Policy.Describe()} | {(r.Fits ? "yes" : "**no**")} | {r.Sequences} | {Seconds(r.PrefillSeconds)} | {Seconds(r.DecodeSeconds)} | {Seconds(r.TotalSeconds)} | " +
                $"{F(r.TokensPerSecond, r.TokensPerSecond >= 100 ? "0.0" : "0.000")} | {ByteSize.Format(r.PeakDeviceBytes)} | {ByteSize.Format(r.FixedDeviceBytes)} | {ByteSize.Format(r.BytesTransferred)} |");
        foreach (var r in results.Where(r => !r.Fits))
            w.WriteLine($"{r.Policy.Describe()}: {r.OutOfMemory}");

        if (timelineRows > 0 && results.Count > 0)
        {
            var first = results[0];
            foreach (var pass in new[] { first.Prefill, first.FirstDecode })
            {
                if (pass is null) continue;
                int n = pass.Pass.Timeline.Length;
                w.WriteLine();
                w.WriteLine($"timeline: {first.Policy.Describe()}, {pass.Phase} pass{(pass.Index > 0 ? $" {pass.Index} ({pass.PastTokens} cached tokens)" : $" ({pass.Tokens} tokens)")}: " +
                    $"makespan {Seconds(pass.Pass.MakespanSeconds)} s, lower bound {Seconds(pass.Pass.LowerBoundSeconds)} s; {(timelineRows < n ? $"first {timelineRows} of {n} layers" : $"{n} layers")}");
                w.WriteLine("| layer | name | streamed | load start s | load s | compute start s | compute s | evicted at s |");
                w.WriteLine("|---:|---|---:|---:|---:|---:|---:|---:|");
                foreach (var t in pass.Pass.Timeline.Take(timelineRows))
                    w.WriteLine($"| {t.Index} | {t.Name} | {ByteSize.Format(t.Bytes)} | {F(t.LoadStart, "0.0000")} | {F(t.LoadSeconds, "0.0000")} | {F(t.ComputeStart, "0.0000")} | {F(t.ComputeSeconds, "0.0000")} | {(t.EvictAt < 0 ? "resident" : F(t.EvictAt, "0.0000"))} |");
            }
        }
        w.WriteLine();
        int passes = results.Sum(r => r.Passes.Length);
        w.WriteLine($"simulated {results.Count} polic{(results.Count == 1 ? "y" : "ies")}, {passes} pass{(passes == 1 ? "" : "es")} of {streamed.Length} layers, in {F(wallSeconds * 1e3, "0.0")} ms of wall time");
        return w.ToString();
    }

    static string ListText()
    {
        var w = new StringWriter { NewLine = "\n" };
        w.WriteLine("models (shapes from the published configurations):");
        w.WriteLine("| name | family | blocks | hidden | heads (KV) | FFN | vocab | parameters | fp16 bytes |");
        w.WriteLine("|---|---|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var m in ModelCatalog.Shapes)
            w.WriteLine($"| {m.Name} | {m.Family.ToString().ToLowerInvariant()} | {m.Layers} | {m.Hidden} | {m.Heads} ({m.KvHeads}) | {m.Ffn} | {m.Vocab} | {F(m.ParameterCount / 1e9, "0.00")} B | {ByteSize.Format(m.StreamedBytes(WeightFormat.Fp16))} |");
        w.WriteLine();
        w.WriteLine("GPUs (effective rates; see README):");
        w.WriteLine("| name | device | memory | link GB/s | TFLOPS | memory GB/s | µs per copy |");
        w.WriteLine("|---|---|---:|---:|---:|---:|---:|");
        foreach (var g in GpuCatalog.All)
            w.WriteLine($"| {g.Name} | {g.Description} | {ByteSize.Format(g.CapacityBytes)} | {F(g.LinkBytesPerSecond / 1e9, "0.##")} | {F(g.FlopsPerSecond / 1e12, "0.##")} | {F(g.MemoryBytesPerSecond / 1e9, "0")} | {F(g.TransferLatencySeconds * 1e6, "0.#")} |");
        w.WriteLine();
        w.WriteLine("specs: every MODEL@GPU above (fp16, batch 1, prompt 512, generate 32, KV cache on the device, policy window:2:1), and the calibration cases:");
        foreach (var c in Calibration.Cases)
            w.WriteLine($"  {c.Spec.Name}  ({c.System}, {c.Spec.Policy.Describe()}, published {F(c.PublishedTokensPerSecond, "0.##")} tokens/s)");
        w.WriteLine();
        w.WriteLine($"policies: {SimPolicy.Grammar}");
        return w.ToString();
    }

    // ---------------------------------------------------------------- calibration

    static async Task<int> CalibrateAsync(SimulateOptions o, TextWriter output, CancellationToken cancel)
    {
        var clock = Stopwatch.StartNew();
        var rows = Calibration.Run();
        double wall = clock.Elapsed.TotalSeconds;
        output.Write(CalibrationText(rows, wall));
        if (o.JsonPath is not null)
        {
            var json = new
            {
                goalPercent = Calibration.GoalPercent,
                wallSeconds = wall,
                cases = rows.Select(r => new
                {
                    spec = r.Case.Spec.Name,
                    system = r.Case.System,
                    source = r.Case.Source,
                    policy = r.Case.Spec.Policy.ToString(),
                    policyDescription = r.Case.Spec.Policy.Describe(),
                    publishedTokensPerSecond = r.Case.PublishedTokensPerSecond,
                    predictedTokensPerSecond = r.PredictedTokensPerSecond,
                    errorPercent = r.ErrorPercent,
                    withinGoal = r.WithinGoal,
                    inputs = r.Case.Inputs,
                    specDetail = SpecJson(r.Case.Spec),
                    result = ResultJson(r.Result, full: false),
                }),
            };
            await File.WriteAllTextAsync(o.JsonPath, JsonReport.Serialize(json), cancel);
            output.WriteLine($"written: {o.JsonPath}");
        }
        return 0;
    }

    /// <summary>The calibration table and every case's inputs.</summary>
    public static string CalibrationText(IReadOnlyList<CalibrationRow> rows, double wallSeconds)
    {
        var w = new StringWriter { NewLine = "\n" };
        w.WriteLine($"superpipeline simulate --calibrate: predicted against published throughput (goal: within {F(Calibration.GoalPercent, "0")} %)");
        w.WriteLine();
        w.WriteLine("| case | system | policy | GPU | weights | batch | predicted tok/s | published tok/s | error | within 25 % |");
        w.WriteLine("|---|---|---|---|---|---:|---:|---:|---:|---|");
        foreach (var r in rows)
        {
            var s = r.Case.Spec;
            string batch = s.Policy.Kind == PolicyKind.Batched ? $"{s.Workload.Batch} × {s.Policy.MicroBatches}" : $"{s.Workload.Batch}";
            w.WriteLine($"| {s.Name} | {r.Case.System} | {s.Policy.Describe()} | {s.Gpu.Name} | {s.Format.Name} | {batch} | {F(r.PredictedTokensPerSecond, "0.00")} | {F(r.Case.PublishedTokensPerSecond, "0.00")} | {(r.ErrorPercent >= 0 ? "+" : "")}{F(r.ErrorPercent, "0.0")} % | {(r.WithinGoal ? "yes" : "**no**")} |");
        }
        w.WriteLine();
        foreach (var r in rows)
        {
            var res = r.Result;
            w.WriteLine($"{r.Case.Spec.Name} — {r.Case.System}: {F(res.TokensGenerated, "0")} tokens in {Seconds(res.TotalSeconds)} s (prefill {Seconds(res.PrefillSeconds)} s, decode {Seconds(res.DecodeSeconds)} s), peak device {ByteSize.Format(res.PeakDeviceBytes)}{(res.Fits ? "" : $"; {res.OutOfMemory}")}");
            w.WriteLine($"  published: {r.Case.Source}");
            foreach (var i in r.Case.Inputs) w.WriteLine($"  - {i}");
        }
        w.WriteLine();
        w.WriteLine($"simulated {rows.Count} cases in {F(wallSeconds * 1e3, "0.0")} ms of wall time");
        return w.ToString();
    }

    // ---------------------------------------------------------------- JSON

    static object Json(SimulationSpec spec, IReadOnlyList<GenerationResult> results, double wallSeconds) => new
    {
        spec = SpecJson(spec),
        wallSeconds,
        policies = results.Select(r => ResultJson(r, full: true)),
    };

    static object SpecJson(SimulationSpec s) => new
    {
        name = s.Name,
        notes = s.Notes,
        model = new
        {
            name = s.Model.Name,
            family = s.Model.Family.ToString().ToLowerInvariant(),
            layers = s.Model.Layers,
            hidden = s.Model.Hidden,
            heads = s.Model.Heads,
            kvHeads = s.Model.KvHeads,
            ffn = s.Model.Ffn,
            vocab = s.Model.Vocab,
            maxPositions = s.Model.MaxPositions,
            parameters = s.Model.ParameterCount,
            streamedLayers = s.Model.Layers + 2,
            streamedBytesPerPass = s.Streamed().Sum(),
        },
        dtype = s.Format.Name,
        matrixBytesPerParam = s.Format.MatrixBytesPerParam,
        gpu = new
        {
            name = s.Gpu.Name,
            description = s.Gpu.Description,
            capacityBytes = s.Gpu.CapacityBytes,
            linkBytesPerSecond = s.Gpu.LinkBytesPerSecond,
            flopsPerSecond = s.Gpu.FlopsPerSecond,
            memoryBytesPerSecond = s.Gpu.MemoryBytesPerSecond,
            transferLatencySeconds = s.Gpu.TransferLatencySeconds,
            source = s.Gpu.Source,
        },
        host = new { name = s.Host.Name, attentionFlopsPerSecond = s.Host.AttentionFlopsPerSecond, source = s.Host.Source },
        workload = new
        {
            batch = s.Workload.Batch,
            prompt = s.Workload.Prompt,
            generate = s.Workload.Generate,
            microBatches = s.Workload.MicroBatches,
            kvCache = s.Workload.Kv.ToString().ToLowerInvariant(),
            residentLayers = s.Workload.ResidentSet(s.Model.Layers + 2).Order(),
        },
        policy = s.Policy.ToString(),
    };

    static object ResultJson(GenerationResult r, bool full) => new
    {
        policy = r.Policy.ToString(),
        description = r.Policy.Describe(),
        gate = r.Gate,
        fits = r.Fits,
        outOfMemory = r.OutOfMemory,
        sequences = r.Sequences,
        tokensGenerated = r.TokensGenerated,
        repeats = r.Repeats,
        prefillSeconds = r.PrefillSeconds,
        decodeSeconds = r.DecodeSeconds,
        totalSeconds = r.TotalSeconds,
        tokensPerSecond = r.TokensPerSecond,
        peakDeviceBytes = r.PeakDeviceBytes,
        fixedDeviceBytes = r.FixedDeviceBytes,
        bytesTransferred = r.BytesTransferred,
        passes = r.Passes.Select(p => new
        {
            index = p.Index,
            phase = p.Phase,
            pastTokens = p.PastTokens,
            tokens = p.Tokens,
            makespanSeconds = p.Pass.MakespanSeconds,
            lowerBoundSeconds = p.Pass.LowerBoundSeconds,
            peakDeviceBytes = p.Pass.PeakDeviceBytes,
            bytesTransferred = p.Pass.BytesTransferred,
        }),
        timelines = full
            ? new[] { r.Prefill, r.FirstDecode, r.Passes.Length > 2 ? r.Passes[^1] : null }.OfType<GenerationPass>().Select(TimelineJson)
            : [TimelineJson(r.Prefill)],
    };

    static object TimelineJson(GenerationPass p) => new
    {
        index = p.Index,
        phase = p.Phase,
        pastTokens = p.PastTokens,
        layers = p.Pass.Timeline.Select((t, i) => new
        {
            index = t.Index,
            name = t.Name,
            streamedBytes = t.Bytes,
            deviceFlops = p.Work[i].DeviceFlops,
            hostFlops = p.Work[i].HostFlops,
            deviceTrafficBytes = p.Work[i].DeviceTrafficBytes,
            outputBytes = p.Cost.Layers[i].OutputBytes,
            loadStart = t.LoadStart,
            loadSeconds = t.LoadSeconds,
            computeStart = t.ComputeStart,
            computeSeconds = t.ComputeSeconds,
            evictAt = t.EvictAt,
        }),
    };
}
