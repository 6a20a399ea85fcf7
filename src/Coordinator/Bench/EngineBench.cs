using System.Diagnostics;
using System.Globalization;
using Superpipeline.Engine;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Messages;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Coordinator.Bench;

/// <summary>What <c>superpipeline bench</c> was asked to do, already parsed.</summary>
/// <param name="OutDir">Folder for bench.md and bench.json (created if missing).</param>
/// <param name="Quick">Smaller model and fewer repetitions: a smoke run of every measure in seconds.</param>
/// <param name="Repeats">Measured repetitions per measure; null for the default (9, or 3 with <paramref name="Quick"/>).</param>
public sealed record BenchOptions(string OutDir = "bench-results", bool Quick = false, int? Repeats = null);

/// <summary><c>superpipeline bench</c>: measures the engine in one process, as ratios taken within one run,
/// so that the figures compare like with like on whatever machine runs it:
/// (a) engine overhead: the resident engine pass against a hand-written TorchSharp loop doing the same work on the same device;
/// (b) overlap under link emulation: a streamed pass against its lower bound, and the synchronous pass against the streamed one;
/// (c) peak device bytes at window 2 against resident.
/// It writes bench.md and bench.json and prints the Markdown table. A missed goal is a measurement, not an error:
/// the exit code is 0 unless something failed.</summary>
public static class EngineBench
{
    /// <summary>Goals, as the project states them.</summary>
    public const double EngineOverheadGoal = 1.03, StreamedOverLowerBoundGoal = 1.10, SyncOverStreamedGoal = 1.8, PeakWindow2Goal = 0.12;

    /// <summary>Full bench: 22 blocks + embeddings + head = 24 layers; a small vocabulary so blocks dominate.</summary>
    public static ModelSpec FullModel { get; } = new("demo", Blocks: 22, Hidden: 512, Heads: 8, Vocab: 512, Sequence: 128, Batch: 4, Seed: 1);

    /// <summary>Quick bench: the same 24 layers at half the width, for smoke runs and tests.</summary>
    public static ModelSpec QuickModel { get; } = new("demo", Blocks: 22, Hidden: 256, Heads: 4, Vocab: 128, Sequence: 64, Batch: 2, Seed: 1);

    /// <summary>Runs every measure, writes <c>bench.md</c> and <c>bench.json</c> under <see cref="BenchOptions.OutDir"/>,
    /// prints the Markdown table to <paramref name="output"/> and progress to <paramref name="log"/>. Returns the exit code:
    /// 0 whether or not the goals are met; errors (a failed pass, an unwritable folder) throw.</summary>
    public static async Task<int> RunAsync(BenchOptions o, TextWriter output, CancellationToken cancel, TextWriter? log = null)
    {
        log ??= TextWriter.Null;
        int repeats = Stats.Repeats(o.Repeats, o.Quick ? 3 : 9);
        var files = ReportWriter.Prepare(o.OutDir, "bench");

        var spec = o.Quick ? QuickModel : FullModel;
        var model = ModelCatalog.Create(spec);
        long capacity = BenchHarness.CapacityFor(model);
        var started = DateTimeOffset.UtcNow;
        log.WriteLine($"bench: {(o.Quick ? "quick, " : "")}{repeats} repeats; model {BenchHarness.Describe(spec, model)}; device capacity {capacity:N0} bytes");

        EngineOverhead overhead;
        PeakMemory peak;
        BlockCost block;
        await using (var host = EmbeddedHost.Start(new DeviceSpec(DeviceKind.Sim, capacity, null)))
        {
            overhead = await MeasureOverheadAsync(host, spec, model, repeats, log, cancel);
            if (!overhead.HandMatchesEngine)
            {
                var line = $"FAIL: the hand loop's output (sha256 {overhead.HandOutputSha256}) differs from the engine's " +
                    $"({overhead.EngineOutputSha256}): the overhead comparison is not fair";
                output.WriteLine(line);
                log.WriteLine(line);
            }
            peak = await MeasurePeakAsync(host, spec, model, overhead, log, cancel);
            block = await BenchHarness.MeasureBlockAsync(host, spec, model, o.Quick ? 5 : 15, log, cancel);
        }
        var overlap = await MeasureOverlapAsync(spec, model, capacity, block, repeats, log, cancel);

        var report = new BenchReport(
            Timestamp: started.ToString("O", CultureInfo.InvariantCulture),
            Machine: BenchHarness.Machine(overhead.TorchThreads),
            Quick: o.Quick,
            Repeats: repeats,
            Model: ModelShape.Of(spec, model),
            DeviceCapacityBytes: capacity,
            Ratios: new Ratios(overhead.Ratio, overlap.StreamedOverLowerBound, overlap.SyncOverStreamed, peak.Ratio),
            Goals: new Goals(EngineOverheadGoal, StreamedOverLowerBoundGoal, SyncOverStreamedGoal, PeakWindow2Goal),
            Met: new Met(overhead.Ratio <= EngineOverheadGoal && overhead.HandMatchesEngine, overlap.StreamedOverLowerBound <= StreamedOverLowerBoundGoal,
                overlap.SyncOverStreamed >= SyncOverStreamedGoal, peak.Ratio <= PeakWindow2Goal),
            EngineOverhead: overhead,
            Overlap: overlap,
            PeakMemory: peak);

        await ReportWriter.WriteAsync(files, Markdown(report), report, output, cancel);
        return 0;
    }

    // ---------------------------------------------------------------- (a) engine overhead

    static async Task<EngineOverhead> MeasureOverheadAsync(EmbeddedHost host, ModelSpec spec, LayeredModel model, int repeats, TextWriter log,
        CancellationToken cancel)
    {
        await using var loop = await HandLoop.CreateAsync(host.Device, spec, model);
        log.WriteLine("bench (a): warming up the resident engine and the hand loop");
        // Every layer on the device, as the hand loop has them, but loaded every pass as it loads them: window = all would pin
        // them and keep them between passes (and leave the hand loop no room), so the window spans the model instead.
        var resident = new PolicySpec(model.Layers.Count, model.Layers.Count);
        var engineShas = new HashSet<string>();
        var handShas = new HashSet<string>();
        for (int i = 0; i < 2; i++)
        {
            engineShas.Add((await BenchHarness.EnginePassAsync(host, spec, resident, cancel)).Sha256);
            handShas.Add((await loop.PassAsync()).Sha256);
        }

        var engine = new List<double>();
        var hand = new List<double>();
        var engineCompute = new List<double>();
        var engineGaps = new List<double>();
        var engineFirst = new List<double>();
        var handCompute = new List<double>();
        var handGaps = new List<double>();
        var handFirst = new List<double>();
        var engineFaults = new List<long?>();
        var handFaults = new List<long?>();
        var residentPeaks = new List<long>();
        for (int i = 0; i < repeats; i++)
        {
            cancel.ThrowIfCancellationRequested();
            var e = await BenchHarness.EnginePassAsync(host, spec, resident, cancel);
            engine.Add(e.Report.WallSeconds);
            var t = e.Report.LayerTimings;
            engineCompute.Add(t.Sum(l => l.ComputeSeconds));
            engineGaps.Add(ComputeGapSeconds(e.Report));
            engineFirst.Add(t[0].ComputeStart);
            engineShas.Add(e.Sha256);
            residentPeaks.Add(e.Report.PeakDeviceBytes);
            var hf = BenchHarness.MinorFaults();
            var h = await loop.PassAsync();
            handFaults.Add(BenchHarness.MinorFaults() - hf);
            engineFaults.Add(e.MinorFaults);
            hand.Add(h.Seconds);
            handCompute.Add(h.ComputeSeconds);
            handGaps.Add(h.GapSeconds);
            handFirst.Add(h.FirstComputeAt);
            handShas.Add(h.Sha256);
            log.WriteLine($"bench (a) {i + 1}/{repeats}: engine {e.Report.WallSeconds:0.0000} s, hand loop {h.Seconds:0.0000} s");
        }
        bool match = engineShas.Count == 1 && handShas.Count == 1 && engineShas.Single() == handShas.Single();
        double em = Stats.Median(engine), hm = Stats.Median(hand);
        var paired = engine.Zip(hand, (e, h) => e / h).ToArray();
        string label = $"window={model.Layers.Count}, swap={model.Layers.Count} (resident, every layer loaded each pass)";
        return new EngineOverhead(label, em, hm, em / hm, Stats.Median(paired), engine, hand, paired,
            string.Join(",", engineShas), string.Join(",", handShas), match, residentPeaks.Max(), loop.TorchThreads,
            new PassBreakdown(engineCompute, engineGaps, engineFirst, engineFaults), new PassBreakdown(handCompute, handGaps, handFirst, handFaults));
    }

    // ---------------------------------------------------------------- (c) peak device bytes

    static async Task<PeakMemory> MeasurePeakAsync(EmbeddedHost host, ModelSpec spec, LayeredModel model, EngineOverhead resident, TextWriter log,
        CancellationToken cancel)
    {
        var run = await BenchHarness.EnginePassAsync(host, spec, new PolicySpec(2, 1), cancel);
        double ratio = run.Report.PeakDeviceBytes / (double)resident.ResidentPeakDeviceBytes;
        log.WriteLine($"bench (c): peak at window 2 {run.Report.PeakDeviceBytes:N0} bytes, resident {resident.ResidentPeakDeviceBytes:N0} bytes: {ratio:P2}");
        return new PeakMemory(model.Layers.Count, spec.Blocks, 2, 1, run.Report.PeakDeviceBytes, resident.ResidentPeakDeviceBytes, ratio,
            model.Bytes, run.Sha256 == resident.EngineOutputSha256);
    }

    // ---------------------------------------------------------------- (b) overlap under link emulation

    static async Task<Overlap> MeasureOverlapAsync(ModelSpec spec, LayeredModel model, long capacity, BlockCost block, int repeats,
        TextWriter log, CancellationToken cancel)
    {
        double gbps = block.Bytes / block.MedianSeconds / 1e9;
        log.WriteLine($"bench (b): link {gbps:0.000} GB/s, so one block's transfer takes as long as its compute");
        await using var host = EmbeddedHost.Start(new DeviceSpec(DeviceKind.Sim, capacity, gbps));
        var streamedPolicy = new PolicySpec(3, 1);
        var syncPolicy = new PolicySpec(1, 1);
        await BenchHarness.EnginePassAsync(host, spec, streamedPolicy, cancel); // deploys the model and warms up
        await BenchHarness.EnginePassAsync(host, spec, syncPolicy, cancel);

        var streamed = new List<PassReport>();
        var sync = new List<PassReport>();
        var streamedFaults = new List<long?>();
        var syncFaults = new List<long?>();
        for (int i = 0; i < repeats; i++)
        {
            var s = await BenchHarness.EnginePassAsync(host, spec, streamedPolicy, cancel);
            var y = await BenchHarness.EnginePassAsync(host, spec, syncPolicy, cancel);
            streamed.Add(s.Report);
            sync.Add(y.Report);
            streamedFaults.Add(s.MinorFaults);
            syncFaults.Add(y.MinorFaults);
            log.WriteLine($"bench (b) {i + 1}/{repeats}: streamed {s.Report.WallSeconds:0.0000} s (lower bound {s.Report.LowerBoundSeconds:0.0000} s), " +
                $"synchronous {y.Report.WallSeconds:0.0000} s");
        }

        var blocks = Enumerable.Range(1, spec.Blocks).ToArray();
        PolicyRuns Runs(List<PassReport> runs, List<long?> faults, PolicySpec policy) => new(
            policy.Window!.Value, policy.Swap!.Value,
            runs.Select(r => r.WallSeconds).ToArray(),
            runs.Select(r => r.LowerBoundSeconds).ToArray(),
            runs.Select(r => r.WallSeconds / r.LowerBoundSeconds).ToArray(),
            Stats.Median(runs.Select(r => r.WallSeconds)),
            Stats.Median(runs.Select(r => r.LowerBoundSeconds)),
            Stats.Median(runs.SelectMany(r => blocks.Select(b => r.LayerTimings[b].LoadSeconds))),
            Stats.Median(runs.SelectMany(r => blocks.Select(b => r.LayerTimings[b].ComputeSeconds))),
            runs.Select(r => r.LayerTimings.Sum(l => l.LoadSeconds)).ToArray(),
            runs.Select(r => r.LayerTimings.Sum(l => l.ComputeSeconds)).ToArray(),
            runs.Select(r => LoadDispatchSeconds(r, policy.Window!.Value)).ToArray(),
            runs.Select(r => ComputeGapSeconds(r)).ToArray(),
            faults);
        var st = Runs(streamed, streamedFaults, streamedPolicy);
        var sy = Runs(sync, syncFaults, syncPolicy);
        return new Overlap(block.Layer, block.Name, block.Bytes, block.ComputeSeconds, block.MedianSeconds,
            block.IsolatedSeconds, block.IsolatedMedianSeconds, gbps,
            st, sy, Stats.Median(st.WallOverLowerBound), sy.MedianWallSeconds / st.MedianWallSeconds);
    }

    /// <summary>Time the transfer thread could have been copying but was not: for each load, its start minus the earliest
    /// moment it could start (the previous load done and, past the first window, the slot of layer i − window freed).</summary>
    static double LoadDispatchSeconds(PassReport r, int window)
    {
        var t = r.LayerTimings;
        double sum = 0;
        for (int i = 1; i < t.Length; i++)
        {
            double earliest = t[i - 1].LoadStart + t[i - 1].LoadSeconds;
            if (i >= window && t[i - window].EvictAt >= 0) earliest = Math.Max(earliest, t[i - window].EvictAt);
            sum += Math.Max(0, t[i].LoadStart - earliest);
        }
        return sum;
    }

    /// <summary>The compute thread's idle time between one layer's compute and the next.</summary>
    static double ComputeGapSeconds(PassReport r)
    {
        var t = r.LayerTimings;
        return Enumerable.Range(1, t.Length - 1).Sum(j => t[j].ComputeStart - (t[j - 1].ComputeStart + t[j - 1].ComputeSeconds));
    }

    // ---------------------------------------------------------------- report

    static string Markdown(BenchReport r)
    {
        static string Yes(bool b) => b ? "yes" : "no";
        static string F(double v, string format) => v.ToString(format, CultureInfo.InvariantCulture);
        var m = r.Model;
        var a = r.EngineOverhead;
        var b = r.Overlap;
        var c = r.PeakMemory;
        var table = new MarkdownTable("measure", "value", "goal", "met")
            .Row($"(a) engine overhead: resident engine wall ÷ hand-written TorchSharp loop wall (median {F(a.EngineMedianSeconds, "0.0000")} s ÷ " +
                $"{F(a.HandMedianSeconds, "0.0000")} s; median of per-repeat ratios {F(a.MedianPairedRatio, "0.000")})",
                F(a.Ratio, "0.000"), $"≤ {F(EngineOverheadGoal, "0.00")}", Yes(r.Met.EngineOverhead))
            .Row("(a) hand loop output = engine output (SHA-256)", Yes(a.HandMatchesEngine), "equal", Yes(a.HandMatchesEngine))
            .Row($"(b) streamed (window 3, swap 1) wall ÷ lower bound, link {F(b.LinkGBps, "0.000")} GB/s " +
                $"(a block's transfer ≈ its {F(b.BlockComputeMedianSeconds * 1e3, "0.00")} ms compute in a streamed pass)",
                F(r.Ratios.StreamedOverLowerBound, "0.000"), $"≤ {F(StreamedOverLowerBoundGoal, "0.00")}", Yes(r.Met.StreamedOverLowerBound))
            .Row($"(b) synchronous (window 1, swap 1) wall ÷ streamed wall " +
                $"(median {F(b.Synchronous.MedianWallSeconds, "0.000")} s ÷ {F(b.Streamed.MedianWallSeconds, "0.000")} s)",
                F(r.Ratios.SyncOverStreamed, "0.000"), $"≥ {F(SyncOverStreamedGoal, "0.0")}", Yes(r.Met.SyncOverStreamed))
            .Row($"(c) peak device bytes, window 2 (swap 1) ÷ resident, {c.Layers} layers ({c.WindowPeakBytes:N0} ÷ {c.ResidentPeakBytes:N0})",
                $"{F(c.Ratio * 100, "0.0")} %", $"≤ {F(PeakWindow2Goal * 100, "0")} %", Yes(r.Met.PeakWindow2));
        string[] lines =
        [
            $"# superpipeline bench{(r.Quick ? " (quick)" : "")}",
            "",
            $"{r.Timestamp} · {r.Machine.Cores} cores, {r.Machine.TorchThreads} torch threads · {r.Machine.Os} · {r.Machine.Runtime}",
            "",
            $"Model: {m.Layers} layers ({m.Blocks} blocks + embeddings + head), hidden {m.Hidden}, heads {m.Heads}, vocab {m.Vocab}, " +
            $"batch {m.Batch} × sequence {m.Sequence}, {m.ModelBytes:N0} bytes; one block {m.BlockBytes:N0} bytes. " +
            $"Simulated device of {r.DeviceCapacityBytes:N0} bytes. Medians of {r.Repeats} repeats, all ratios measured in this run.",
            "",
            .. table.Lines(),
            "",
        ];
        return string.Join('\n', lines);
    }
}

/// <summary>bench.json: the ratios, the goals, and the raw figures behind them.</summary>
public sealed record BenchReport(
    string Timestamp, MachineInfo Machine, bool Quick, int Repeats, ModelShape Model, long DeviceCapacityBytes,
    Ratios Ratios, Goals Goals, Met Met, EngineOverhead EngineOverhead, Overlap Overlap, PeakMemory PeakMemory);

/// <summary>The ratios the bench exists for.</summary>
/// <param name="EngineOverHand">(a) median engine wall ÷ median hand-loop wall, resident; goal ≤ 1.03.</param>
/// <param name="StreamedOverLowerBound">(b) median over repeats of streamed wall ÷ its lower bound; goal ≤ 1.10.</param>
/// <param name="SyncOverStreamed">(b) median synchronous wall ÷ median streamed wall; goal ≥ 1.8.</param>
/// <param name="PeakWindow2OverResident">(c) peak device bytes at window 2 ÷ resident; goal ≤ 0.12.</param>
public sealed record Ratios(double EngineOverHand, double StreamedOverLowerBound, double SyncOverStreamed, double PeakWindow2OverResident);

/// <summary>The goal of each ratio.</summary>
public sealed record Goals(double EngineOverHandAtMost, double StreamedOverLowerBoundAtMost, double SyncOverStreamedAtLeast,
    double PeakWindow2OverResidentAtMost);

/// <summary>Whether each goal was met.</summary>
public sealed record Met(bool EngineOverhead, bool StreamedOverLowerBound, bool SyncOverStreamed, bool PeakWindow2);

/// <summary>(a): per-repeat wall seconds of the resident engine pass and of the hand loop, alternated after a warm-up.</summary>
/// <param name="Ratio">Median engine wall ÷ median hand wall: the figure with the goal.</param>
/// <param name="MedianPairedRatio">Median of engine ÷ hand within each repeat (adjacent runs): less sensitive to a machine whose speed drifts.</param>
public sealed record EngineOverhead(string Policy, double EngineMedianSeconds, double HandMedianSeconds, double Ratio, double MedianPairedRatio,
    IReadOnlyList<double> EngineWallSeconds, IReadOnlyList<double> HandWallSeconds, IReadOnlyList<double> PairedRatios,
    string EngineOutputSha256, string HandOutputSha256, bool HandMatchesEngine, long ResidentPeakDeviceBytes, int TorchThreads,
    PassBreakdown EngineBreakdown, PassBreakdown HandBreakdown);

/// <summary>Where a pass's wall time went, per repeat: the sum of the layers' compute, the compute thread's idle time
/// between one layer's compute and the next (waiting for its weights, or for the next work item), and when the first
/// layer's compute started; and the process's minor page faults during the pass (Linux; null elsewhere).</summary>
public sealed record PassBreakdown(IReadOnlyList<double> SumComputeSeconds, IReadOnlyList<double> SumGapSeconds, IReadOnlyList<double> FirstComputeStartSeconds,
    IReadOnlyList<long?> MinorPageFaults);

/// <summary>(b): the block cost that set the link, and the streamed and synchronous runs under that link.</summary>
/// <param name="BlockComputeSeconds">Block compute times inside streamed passes without link emulation; their median set the link.</param>
/// <param name="IsolatedBlockComputeSeconds">The first block alone, repeatedly, on the compute thread: for reference.</param>
public sealed record Overlap(int BlockLayer, string BlockName, long BlockBytes, IReadOnlyList<double> BlockComputeSeconds, double BlockComputeMedianSeconds,
    IReadOnlyList<double> IsolatedBlockComputeSeconds, double IsolatedBlockComputeMedianSeconds,
    double LinkGBps, PolicyRuns Streamed, PolicyRuns Synchronous, double StreamedOverLowerBound, double SyncOverStreamed);

/// <summary>Per-repeat figures of one policy. Block load/compute medians are over every block of every repeat, as the engine timed them.</summary>
/// <param name="LoadDispatchSeconds">Per repeat, the transfer thread's idle time that neither the previous load nor a slot explains:
/// the latency of dispatching each load (slot → LayerActor → transfer thread). It adds to the wall of a transfer-bound pass.</param>
/// <param name="ComputeGapSeconds">Per repeat, the compute thread's idle time between consecutive layers.</param>
public sealed record PolicyRuns(int Window, int Swap, IReadOnlyList<double> WallSeconds, IReadOnlyList<double> LowerBoundSeconds,
    IReadOnlyList<double> WallOverLowerBound, double MedianWallSeconds, double MedianLowerBoundSeconds,
    double MedianBlockLoadSeconds, double MedianBlockComputeSeconds, IReadOnlyList<double> SumLoadSeconds, IReadOnlyList<double> SumComputeSeconds,
    IReadOnlyList<double> LoadDispatchSeconds, IReadOnlyList<double> ComputeGapSeconds, IReadOnlyList<long?> MinorPageFaults);

/// <summary>(c): peak device bytes of one pass at window 2 (swap 1) and of the resident pass, on the same device.</summary>
public sealed record PeakMemory(int Layers, int Blocks, int Window, int Swap, long WindowPeakBytes, long ResidentPeakBytes, double Ratio,
    long ModelBytes, bool OutputMatchesResident);
