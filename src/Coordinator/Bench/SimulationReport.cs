using Superpipeline.Engine.Models;
using System.Globalization;
using Superpipeline.Contracts;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;

namespace Superpipeline.Coordinator.Bench;

/// <summary>What <c>simulate</c> prints and writes: the Markdown text of a simulation, of the built-in lists and of the
/// calibration, and the typed records of its JSON (<see cref="ReportWriter"/> writes them).</summary>
public static class SimulationReport
{
    static string F(double v, string format) => v.ToString(format, CultureInfo.InvariantCulture);

    static string Seconds(double s) => s >= 100 ? F(s, "0.0") : s >= 1 ? F(s, "0.000") : F(s, "0.0000");

    /// <summary>The printed report: spec, one row per policy, timelines of the first policy's prefill and first decode pass.</summary>
    public static string Text(SimulationSpec spec, IReadOnlyList<GenerationResult> results, int timelineRows, double wallSeconds)
    {
        var w = new StringWriter { NewLine = "\n" };
        var m = spec.Model;
        var streamed = spec.Streamed();
        w.WriteLine($"superpipeline simulate: {spec.Name}{(spec.Notes is null ? "" : $" ({spec.Notes})")}");
        w.WriteLine($"model     {m}; {F(m.ParameterCount / 1e9, "0.00")} B parameters; {spec.Format}: {ByteSize.Format(streamed.Sum())} streamed per pass " +
            $"over {streamed.Length} layers (largest {ByteSize.Format(streamed.Max())})");
        w.WriteLine($"gpu       {spec.Gpu}");
        var wl = spec.Workload;
        var resident = wl.ResidentSet(streamed.Length);
        w.WriteLine($"workload  batch {wl.Batch} × {wl.MicroBatches} micro-batch{(wl.MicroBatches == 1 ? "" : "es")}, prompt {wl.Prompt}, " +
            $"generate {wl.Generate} (1 prefill + {wl.Generate - 1} decode passes), " +
            $"KV cache on the {(wl.Kv == KvPlacement.Device ? "device" : $"host (attention at {F(spec.Host.AttentionFlopsPerSecond / 1e9, "0.##")} GFLOPS)")}" +
            (resident.Count > 0 ? $", {resident.Count} layer{(resident.Count == 1 ? "" : "s")} resident for the job" : ""));
        w.WriteLine();
        var policies = new MarkdownTable("policy", "fits", "sequences>", "prefill s>", "decode s>", "total s>", "tokens/s>", "peak device>",
            "of which job-resident>", "transferred>");
        foreach (var r in results)
            policies.Row(r.Policy.Describe(), r.Fits ? "yes" : "**no**", $"{r.Sequences}", Seconds(r.PrefillSeconds), Seconds(r.DecodeSeconds),
                Seconds(r.TotalSeconds), F(r.TokensPerSecond, r.TokensPerSecond >= 100 ? "0.0" : "0.000"), ByteSize.Format(r.PeakDeviceBytes),
                ByteSize.Format(r.FixedDeviceBytes), ByteSize.Format(r.BytesTransferred));
        policies.WriteTo(w);
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
                string which = pass.Index > 0 ? $" {pass.Index} ({pass.PastTokens} cached tokens)" : $" ({pass.Tokens} tokens)";
                string rows = timelineRows < n ? $"first {timelineRows} of {n} layers" : $"{n} layers";
                w.WriteLine($"timeline: {first.Policy.Describe()}, {pass.Phase} pass{which}: " +
                    $"makespan {Seconds(pass.Pass.MakespanSeconds)} s, lower bound {Seconds(pass.Pass.LowerBoundSeconds)} s; {rows}");
                var timeline = new MarkdownTable("layer>", "name", "streamed>", "load start s>", "load s>", "compute start s>", "compute s>", "evicted at s>");
                foreach (var t in pass.Pass.Timeline.Take(timelineRows))
                    timeline.Row($"{t.Index}", t.Name, ByteSize.Format(t.Bytes), F(t.LoadStart, "0.0000"), F(t.LoadSeconds, "0.0000"),
                        F(t.ComputeStart, "0.0000"), F(t.ComputeSeconds, "0.0000"), t.EvictAt < 0 ? "resident" : F(t.EvictAt, "0.0000"));
                timeline.WriteTo(w);
            }
        }
        w.WriteLine();
        int passes = results.Sum(r => r.Passes.Length);
        w.WriteLine($"simulated {results.Count} polic{(results.Count == 1 ? "y" : "ies")}, {passes} pass{(passes == 1 ? "" : "es")} " +
            $"of {streamed.Length} layers, " +
            $"in {F(wallSeconds * 1e3, "0.0")} ms of wall time");
        return w.ToString();
    }

    public static string ListText()
    {
        var w = new StringWriter { NewLine = "\n" };
        w.WriteLine("models (shapes from the published configurations):");
        var models = new MarkdownTable("name", "family", "blocks>", "hidden>", "heads (KV)>", "FFN>", "vocab>", "parameters>", "fp16 bytes>");
        foreach (var m in ModelCatalog.Shapes)
            models.Row(m.Name, m.Family.ToString().ToLowerInvariant(), $"{m.Layers}", $"{m.Hidden}", $"{m.Heads} ({m.KvHeads})", $"{m.Ffn}", $"{m.Vocab}",
                $"{F(m.ParameterCount / 1e9, "0.00")} B", ByteSize.Format(m.StreamedBytes(WeightFormat.Fp16)));
        models.WriteTo(w);
        w.WriteLine();
        w.WriteLine("GPUs (effective rates; see README):");
        var gpus = new MarkdownTable("name", "device", "memory>", "link GB/s>", "TFLOPS>", "memory GB/s>", "µs per copy>");
        foreach (var g in GpuCatalog.All)
            gpus.Row(g.Name, g.Description, ByteSize.Format(g.CapacityBytes), F(g.LinkBytesPerSecond / 1e9, "0.##"), F(g.FlopsPerSecond / 1e12, "0.##"),
                F(g.MemoryBytesPerSecond / 1e9, "0"), F(g.TransferLatencySeconds * 1e6, "0.#"));
        gpus.WriteTo(w);
        w.WriteLine();
        w.WriteLine("specs: every MODEL@GPU above (fp16, batch 1, prompt 512, generate 32, KV cache on the device, policy window:2:1), " +
            "and the calibration cases:");
        foreach (var c in Calibration.Cases)
            w.WriteLine($"  {c.Spec.Name}  ({c.System}, {c.Spec.Policy.Describe()}, published {F(c.PublishedTokensPerSecond, "0.##")} tokens/s)");
        w.WriteLine();
        w.WriteLine($"policies: {OffloadPolicy.Grammar}");
        return w.ToString();
    }

    /// <summary>The calibration table and every case's inputs.</summary>
    public static string CalibrationText(IReadOnlyList<CalibrationRow> rows, double wallSeconds)
    {
        var w = new StringWriter { NewLine = "\n" };
        w.WriteLine($"superpipeline simulate --calibrate: predicted against published throughput (goal: within {F(Calibration.GoalPercent, "0")} %)");
        w.WriteLine();
        var table = new MarkdownTable("case", "system", "policy", "GPU", "weights", "batch>", "predicted tok/s>", "published tok/s>", "error>",
            $"within {F(Calibration.GoalPercent, "0")} %");
        foreach (var r in rows)
        {
            var s = r.Case.Spec;
            string batch = s.Policy.Kind == PolicyKind.Batched ? $"{s.Workload.Batch} × {s.Policy.MicroBatches}" : $"{s.Workload.Batch}";
            table.Row(s.Name, r.Case.System, s.Policy.Describe(), s.Gpu.Name, s.Format.Name, batch, F(r.PredictedTokensPerSecond, "0.00"),
                F(r.Case.PublishedTokensPerSecond, "0.00"), $"{(r.ErrorPercent >= 0 ? "+" : "")}{F(r.ErrorPercent, "0.0")} %", r.WithinGoal ? "yes" : "**no**");
        }
        table.WriteTo(w);
        w.WriteLine();
        foreach (var r in rows)
        {
            var res = r.Result;
            w.WriteLine($"{r.Case.Spec.Name} — {r.Case.System}: {F(res.TokensGenerated, "0")} tokens in {Seconds(res.TotalSeconds)} s " +
                $"(prefill {Seconds(res.PrefillSeconds)} s, decode {Seconds(res.DecodeSeconds)} s), peak device {ByteSize.Format(res.PeakDeviceBytes)}" +
                (res.Fits ? "" : $"; {res.OutOfMemory}"));
            w.WriteLine($"  published: {r.Case.Source}");
            foreach (var i in r.Case.Inputs) w.WriteLine($"  - {i}");
        }
        w.WriteLine();
        w.WriteLine($"simulated {rows.Count} cases in {F(wallSeconds * 1e3, "0.0")} ms of wall time");
        return w.ToString();
    }

    // ---------------------------------------------------------------- JSON

    public static SimulateJson Json(SimulationSpec spec, IReadOnlyList<GenerationResult> results, double wallSeconds) =>
        new(SpecOf(spec), wallSeconds, [.. results.Select(r => ResultOf(r, full: true))]);

    public static CalibrationJson CalibrationJson(IReadOnlyList<CalibrationRow> rows, double wallSeconds) => new(
        Calibration.GoalPercent, wallSeconds,
        [.. rows.Select(r => new CalibrationCaseJson(
            r.Case.Spec.Name, r.Case.System, r.Case.Source, r.Case.Spec.Policy.ToString(), r.Case.Spec.Policy.Describe(),
            r.Case.PublishedTokensPerSecond, r.PredictedTokensPerSecond, r.ErrorPercent, r.WithinGoal, r.Case.Inputs,
            SpecOf(r.Case.Spec), ResultOf(r.Result, full: false)))]);

    static SimSpecJson SpecOf(SimulationSpec s) => new(
        s.Name,
        s.Notes,
        new SimModelJson(s.Model.Name, s.Model.Family.ToString().ToLowerInvariant(), s.Model.Layers, s.Model.Hidden, s.Model.Heads, s.Model.KvHeads,
            s.Model.Ffn, s.Model.Vocab, s.Model.MaxPositions, s.Model.ParameterCount, s.Model.Layers + 2, s.Streamed().Sum()),
        s.Format.Name,
        s.Format.MatrixBytesPerParam,
        new SimGpuJson(s.Gpu.Name, s.Gpu.Description, s.Gpu.CapacityBytes, s.Gpu.LinkBytesPerSecond, s.Gpu.FlopsPerSecond,
            s.Gpu.MemoryBytesPerSecond, s.Gpu.TransferLatencySeconds, s.Gpu.Source),
        new SimHostJson(s.Host.Name, s.Host.AttentionFlopsPerSecond, s.Host.Source),
        new SimWorkloadJson(s.Workload.Batch, s.Workload.Prompt, s.Workload.Generate, s.Workload.MicroBatches,
            s.Workload.Kv.ToString().ToLowerInvariant(), [.. s.Workload.ResidentSet(s.Model.Layers + 2).Order()]),
        s.Policy.ToString());

    static SimResultJson ResultOf(GenerationResult r, bool full) => new(
        r.Policy.ToString(), r.Policy.Describe(), r.Gate, r.Fits, r.OutOfMemory, r.Sequences, r.TokensGenerated, r.Repeats,
        r.PrefillSeconds, r.DecodeSeconds, r.TotalSeconds, r.TokensPerSecond, r.PeakDeviceBytes, r.FixedDeviceBytes, r.BytesTransferred,
        [.. r.Passes.Select(p => new SimPassJson(p.Index, p.Phase, p.PastTokens, p.Tokens, p.Pass.MakespanSeconds, p.Pass.LowerBoundSeconds,
            p.Pass.PeakDeviceBytes, p.Pass.BytesTransferred))],
        full
            ? [.. new[] { r.Prefill, r.FirstDecode, r.Passes.Length > 2 ? r.Passes[^1] : null }.OfType<GenerationPass>().Select(TimelineOf)]
            : [TimelineOf(r.Prefill)]);

    static SimTimelineJson TimelineOf(GenerationPass p) => new(p.Index, p.Phase, p.PastTokens,
        [.. p.Pass.Timeline.Select((t, i) => new SimLayerJson(t.Index, t.Name, t.Bytes, p.Work[i].DeviceFlops, p.Work[i].HostFlops,
            p.Work[i].DeviceTrafficBytes, p.Cost.Layers[i].OutputBytes, t.LoadStart, t.LoadSeconds, t.ComputeStart, t.ComputeSeconds, t.EvictAt))]);
}

/// <summary><c>simulate --json</c>: the spec, the wall time of the simulation, and one entry per policy.</summary>
public sealed record SimulateJson(SimSpecJson Spec, double WallSeconds, IReadOnlyList<SimResultJson> Policies);

/// <summary>A simulation spec as simulated, with the overrides of the command line applied.</summary>
public sealed record SimSpecJson(string Name, string? Notes, SimModelJson Model, string Dtype, double MatrixBytesPerParam, SimGpuJson Gpu,
    SimHostJson Host, SimWorkloadJson Workload, string Policy);

/// <summary>The model's shape; <paramref name="StreamedLayers"/> counts the blocks, the embeddings and the head.</summary>
public sealed record SimModelJson(string Name, string Family, int Layers, int Hidden, int Heads, int KvHeads, int Ffn, int Vocab, int MaxPositions,
    long Parameters, int StreamedLayers, long StreamedBytesPerPass);

public sealed record SimGpuJson(string Name, string Description, long CapacityBytes, double LinkBytesPerSecond, double FlopsPerSecond,
    double MemoryBytesPerSecond, double TransferLatencySeconds, string Source);

public sealed record SimHostJson(string Name, double AttentionFlopsPerSecond, string Source);

/// <param name="KvCache">device or host.</param>
/// <param name="ResidentLayers">Streamed-layer indices resident for the whole job.</param>
public sealed record SimWorkloadJson(int Batch, int Prompt, int Generate, int MicroBatches, string KvCache, IReadOnlyList<int> ResidentLayers);

/// <summary>One policy's generation: totals, every pass, and the timelines of some passes.</summary>
public sealed record SimResultJson(string Policy, string Description, string Gate, bool Fits, string? OutOfMemory, int Sequences, long TokensGenerated,
    int Repeats, double PrefillSeconds, double DecodeSeconds, double TotalSeconds, double TokensPerSecond, long PeakDeviceBytes, long FixedDeviceBytes,
    long BytesTransferred, IReadOnlyList<SimPassJson> Passes, IReadOnlyList<SimTimelineJson> Timelines);

/// <param name="Phase">prefill or decode.</param>
public sealed record SimPassJson(int Index, string Phase, long PastTokens, long Tokens, double MakespanSeconds, double LowerBoundSeconds,
    long PeakDeviceBytes, long BytesTransferred);

public sealed record SimTimelineJson(int Index, string Phase, long PastTokens, IReadOnlyList<SimLayerJson> Layers);

/// <param name="EvictAt">When the layer's bytes were freed, or −1 for a layer resident to the end.</param>
public sealed record SimLayerJson(int Index, string Name, long StreamedBytes, double DeviceFlops, double HostFlops, long DeviceTrafficBytes,
    long OutputBytes, double LoadStart, double LoadSeconds, double ComputeStart, double ComputeSeconds, double EvictAt);

/// <summary><c>simulate --calibrate --json</c>: every published case, predicted against published.</summary>
public sealed record CalibrationJson(double GoalPercent, double WallSeconds, IReadOnlyList<CalibrationCaseJson> Cases);

public sealed record CalibrationCaseJson(string Spec, string System, string Source, string Policy, string PolicyDescription,
    double PublishedTokensPerSecond, double PredictedTokensPerSecond, double ErrorPercent, bool WithinGoal, IReadOnlyList<string> Inputs,
    SimSpecJson SpecDetail, SimResultJson Result);
