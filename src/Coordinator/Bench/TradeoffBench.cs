using System.Globalization;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Messages;

namespace Superpipeline.Coordinator.Bench;

/// <summary>What <c>superpipeline bench --tradeoff</c> was asked to do, already parsed.</summary>
/// <param name="OutDir">Folder for tradeoff.md, tradeoff.json and tradeoff.png (created if missing).</param>
/// <param name="Quick">Smaller model, smaller grid and fewer repetitions: a smoke run in seconds.</param>
/// <param name="Repeats">Measured repetitions per grid point; null for the default (5, or 3 with <paramref name="Quick"/>).</param>
/// <param name="TransferOverCompute">The emulated link is set so that one block's transfer takes this fraction of its
/// compute time (as measured in a streamed pass without link emulation).</param>
public sealed record TradeoffOptions(string OutDir = "bench-results", bool Quick = false, int? Repeats = null,
    double TransferOverCompute = TradeoffBench.DefaultTransferOverCompute);

/// <summary><c>superpipeline bench --tradeoff</c>: the paper's memory-against-time figure, measured. The real engine
/// runs on the simulated accelerator, under link emulation, over a grid of (k, k') including window = all; each point
/// is the median of a few passes. Beside each measured point stands the analytic <see cref="PassSimulator"/>'s
/// prediction for the same (k, k'), with a <see cref="DeviceCost"/> calibrated on this machine in this run: the
/// emulated link bandwidth, the FLOPs/s of the layers measured in calibration passes, no transfer latency.
/// It writes tradeoff.md, tradeoff.json and tradeoff.png (ScottPlot) and prints the Markdown table.</summary>
public static class TradeoffBench
{
    /// <summary>A block's transfer time ÷ its compute time under the emulated link. Comparable, but not equal: at
    /// exactly 1 whether the next load starts before the current compute ends is a coin toss, and that decides
    /// whether one more block is resident at the peak (see <see cref="PeakSensitiveToTiming"/>).</summary>
    public const double DefaultTransferOverCompute = 0.5;

    /// <summary>Full run: 14 blocks + embeddings + head = 16 layers.</summary>
    public static ModelSpec FullModel { get; } = new("demo", Blocks: 14, Hidden: 512, Heads: 8, Vocab: 512, Sequence: 128, Batch: 4, Seed: 1);

    /// <summary>Quick run: 10 blocks + embeddings + head = 12 layers at three quarters of the width and half the tokens.</summary>
    public static ModelSpec QuickModel { get; } = new("demo", Blocks: 10, Hidden: 384, Heads: 6, Vocab: 384, Sequence: 64, Batch: 4, Seed: 1);

    /// <summary>The (k, k') measured, in table order: by k', then k; window = all last.</summary>
    public static IReadOnlyList<PolicySpec> Grid(bool quick)
    {
        var (windows, swaps) = quick ? (new[] { 1, 2, 4 }, new[] { 1, 2 }) : (new[] { 1, 2, 3, 4, 6, 8 }, new[] { 1, 2, 4 });
        var grid = swaps.SelectMany(s => windows.Where(k => k >= s).Select(k => new PolicySpec(k, s))).ToList();
        grid.Add(PolicySpec.Resident);
        return grid;
    }

    public static async Task<int> RunAsync(TradeoffOptions o, TextWriter output, CancellationToken cancel, TextWriter? log = null)
    {
        log ??= TextWriter.Null;
        int repeats = Stats.Repeats(o.Repeats, o.Quick ? 3 : 5);
        if (!(o.TransferOverCompute > 0) || double.IsInfinity(o.TransferOverCompute))
            throw new ArgumentException($"the transfer ÷ compute ratio must be a positive number; got {o.TransferOverCompute}");
        var files = ReportWriter.Prepare(o.OutDir, "tradeoff", "tradeoff.png");

        var spec = o.Quick ? QuickModel : FullModel;
        var model = ModelCatalog.Create(spec);
        var cost = ModelCost.From(model);
        long capacity = BenchHarness.CapacityFor(model);
        var grid = Grid(o.Quick).Select(p => (Spec: p, Policy: OffloadPolicy.For(p, model.Layers.Count))).ToArray();
        var started = DateTimeOffset.UtcNow;
        log.WriteLine($"tradeoff: {(o.Quick ? "quick, " : "")}{grid.Length} points × {repeats} repeats; model {BenchHarness.Describe(spec, model)}; " +
            $"device capacity {capacity:N0} bytes");

        // 1. The link, matched to a block's compute time inside streamed passes without link emulation, as bench (b)
        //    does; but to the fast quartile of those times rather than their median. A machine that slows down during
        //    the run then only makes passes more compute-bound, where the peak does not depend on timing; what can flip
        //    a peak is compute getting faster than the link was matched to (see PeakSensitiveToTiming).
        BlockCost block;
        await using (var plain = EmbeddedHost.Start(new DeviceSpec(DeviceKind.Sim, capacity, null)))
        {
            for (int i = 0; i < 2; i++) await BenchHarness.EnginePassAsync(plain, spec, new PolicySpec(3, 1), cancel); // deploys and warms up
            block = await BenchHarness.MeasureBlockAsync(plain, spec, model, 3, log, cancel);
        }
        double firstBlockSeconds = Stats.Quantile(block.ComputeSeconds, 0.25), blockSeconds = firstBlockSeconds;
        double LinkFor(double seconds) => block.Bytes / (o.TransferOverCompute * seconds);
        double linkBytesPerSecond = LinkFor(blockSeconds);
        log.WriteLine($"tradeoff: link {linkBytesPerSecond / 1e9:0.000} GB/s, so one block's transfer takes {o.TransferOverCompute:0.##} × its compute " +
            $"({blockSeconds * 1e3:0.00} ms, the fast quartile of {block.ComputeSeconds.Count} in-pass block times)");

        // 2. The grid. Each measured pass is preceded by a calibration pass (k=3, k'=1) whose compute rate (the model's
        //    FLOPs ÷ the sum of its layers' compute seconds) sets the simulator's device for that pass: on a shared
        //    2-core machine the speed drifts by tens of percent within seconds, and the pass next to it is the best
        //    estimate of the speed the measured pass met. Rounds go over every point in turn, so that drift is spread
        //    over all points alike. The first round warms up (deploys the model, maps the memory) and is not counted;
        //    its calibration passes also check the link: if the block times they saw put transfer ÷ compute more than
        //    25 % away from the target (the first measurement fell in a slow or fast spell), the link is matched again
        //    to them and the warm-up round repeated, once.
        var calibrationPolicy = new PolicySpec(3, 1);
        var runs = grid.Select(_ => new List<(double Rate, EngineRun Run)>()).ToArray();
        EmbeddedHost? host = null;
        int rematches = 0, threads = 0;
        try
        {
            while (true)
            {
                host = EmbeddedHost.Start(new DeviceSpec(DeviceKind.Sim, capacity, linkBytesPerSecond / 1e9));
                var warmBlocks = new List<double>();
                foreach (var (p, _) in grid)
                {
                    var calibration = await BenchHarness.EnginePassAsync(host, spec, calibrationPolicy, cancel);
                    warmBlocks.AddRange(Enumerable.Range(1, spec.Blocks).Select(b => calibration.Report.LayerTimings[b].ComputeSeconds));
                    if (p.Window is null) await BenchHarness.EnginePassAsync(host, spec, p, cancel); // window = all: loads the pinned layers
                    await BenchHarness.EnginePassAsync(host, spec, p, cancel);
                }
                double warm = Stats.Quantile(warmBlocks, 0.25);
                double ratio = block.Bytes / linkBytesPerSecond / warm;
                log.WriteLine($"tradeoff: warm-up: block compute {warm * 1e3:0.00} ms (fast quartile of {warmBlocks.Count}), " +
                    $"so transfer ÷ compute = {ratio:0.00}");
                if (rematches > 0 || Math.Abs(ratio / o.TransferOverCompute - 1) <= 0.25) break;
                rematches++;
                blockSeconds = warm;
                linkBytesPerSecond = LinkFor(blockSeconds);
                log.WriteLine($"tradeoff: link matched again: {linkBytesPerSecond / 1e9:0.000} GB/s");
                await host.DisposeAsync();
                host = null;
            }
            threads = await host.Device.OnTransferThread(TorchSharp.torch.get_num_threads);
            for (int r = 0; r < repeats; r++)
            {
                for (int g = 0; g < grid.Length; g++)
                {
                    var calibration = await BenchHarness.EnginePassAsync(host, spec, calibrationPolicy, cancel);
                    // Window = all pins every layer: the pass before the measured one loads them (the calibration pass released
                    // them), so the measured one is a later pass of a job, where nothing but the input moves.
                    if (grid[g].Policy.IsResident) await BenchHarness.EnginePassAsync(host, spec, grid[g].Spec, cancel);
                    var run = await BenchHarness.EnginePassAsync(host, spec, grid[g].Spec, cancel);
                    runs[g].Add((cost.Flops / calibration.Report.LayerTimings.Sum(t => t.ComputeSeconds), run));
                }
                log.WriteLine($"tradeoff: round {r + 1}/{repeats}: " +
                    string.Join(", ", grid.Select((p, g) =>
                        $"{Label(p.Policy)} {runs[g][^1].Run.Report.WallSeconds:0.000} s ({runs[g][^1].Rate / 1e9:0} GFLOP/s)")));
            }
        }
        finally
        {
            if (host is not null) await host.DisposeAsync();
        }
        double gbps = linkBytesPerSecond / 1e9;
        var rates = runs.SelectMany(x => x.Select(y => y.Rate)).ToArray();
        double flopsPerSecond = Stats.Median(rates);
        var device = new DeviceCost("sim (calibrated)", capacity, linkBytesPerSecond, flopsPerSecond, TransferLatencySeconds: 0).Validated();
        log.WriteLine($"tradeoff: compute rate {flopsPerSecond / 1e9:0.00} GFLOP/s (median of {rates.Length} calibration passes at {calibrationPolicy}; " +
            $"{rates.Min() / 1e9:0.0} to {rates.Max() / 1e9:0.0})");

        var points = grid.Select((p, g) => Point(p.Policy, runs[g], cost, device)).ToArray();
        var report = new TradeoffReport(
            Timestamp: started.ToString("O", CultureInfo.InvariantCulture),
            Machine: BenchHarness.Machine(threads),
            Quick: o.Quick,
            Repeats: repeats,
            Model: ModelShape.Of(spec, model),
            DeviceCapacityBytes: capacity,
            LinkCalibration: new LinkCalibration(block.Layer, block.Name, block.Bytes, firstBlockSeconds, blockSeconds, rematches, o.TransferOverCompute, gbps,
                block.Bytes / linkBytesPerSecond / (cost.Layers[block.Layer].Flops / flopsPerSecond),
                calibrationPolicy.ToString(), rates.Length, rates.Min(), rates.Max(), flopsPerSecond, cost.Flops, 0),
            Points: points,
            MeanAbsoluteErrorPercent: points.Average(p => Math.Abs(p.ErrorPercent)),
            PeaksEqual: points.Count(p => p.PeakEqual),
            OutputsIdentical: points.Select(p => p.OutputSha256).Distinct().Count() == 1 && points.All(p => p.OutputSha256 != "differs"));

        var png = files.Others[0];
        await ReportWriter.WriteAsync(files, Markdown(report, Path.GetFileName(png)), report, output, cancel, () => TradeoffPlot.Save(png, report));
        return 0;
    }

    /// <summary>"3/1", or "all" for the resident baseline.</summary>
    public static string Label(OffloadPolicy p) => p.IsResident ? "all" : $"{p.Window}/{p.Swap}";

    /// <summary>A point measured and predicted: each repeat is predicted with the compute rate of the calibration pass
    /// just before it; the point's times are medians over the repeats, its peaks the largest over the repeats.</summary>
    static TradeoffPoint Point(OffloadPolicy policy, List<(double Rate, EngineRun Run)> runs, ModelCost cost, DeviceCost device)
    {
        var predictions = runs.Select(x => Predict(cost, device with { FlopsPerSecond = x.Rate }, policy)).ToArray();
        double rate = Stats.Median(runs.Select(x => x.Rate));
        var atMedianRate = Predict(cost, device with { FlopsPerSecond = rate }, policy);
        var reports = runs.Select(x => x.Run.Report).ToArray();
        double measured = Stats.Median(reports.Select(r => r.WallSeconds));
        double predicted = Stats.Median(predictions.Select(p => p.MakespanSeconds));
        var peaks = reports.Select(r => r.PeakDeviceBytes).ToArray();
        var predictedPeaks = predictions.Select(p => p.PeakDeviceBytes).ToArray();
        var shas = runs.Select(x => x.Run.Sha256).Distinct().ToArray();
        return new TradeoffPoint(
            Label(policy), policy.Window, policy.Swap, policy.IsResident, policy.PrefetchDepth,
            measured, reports.Select(r => r.WallSeconds).ToArray(),
            Stats.Median(reports.Select(r => r.LowerBoundSeconds)),
            cost.Flops / Stats.Median(reports.Select(r => r.LayerTimings.Sum(t => t.ComputeSeconds))),
            runs.Select(x => x.Rate).ToArray(),
            predicted, predictions.Select(p => p.MakespanSeconds).ToArray(),
            Stats.Median(predictions.Select(p => p.LowerBoundSeconds)),
            (predicted - measured) / measured * 100,
            peaks.Max(), peaks, predictedPeaks.Max(), predictedPeaks, peaks.SequenceEqual(predictedPeaks),
            PeakSensitiveToTiming(cost, device with { FlopsPerSecond = rate }, policy, atMedianRate.PeakDeviceBytes),
            shas.Length == 1 ? shas[0] : "differs");
    }

    /// <summary>Whether the predicted peak changes when the compute rate is 20 % off either way: the peak is then
    /// decided by a race between a load starting and a compute ending, and a measured pass may fall on either side.</summary>
    public static bool PeakSensitiveToTiming(ModelCost cost, DeviceCost device, OffloadPolicy policy, long peak) =>
        new[] { 0.8, 1.25 }.Any(f => Predict(cost, device with { FlopsPerSecond = device.FlopsPerSecond * f }, policy).PeakDeviceBytes != peak);

    /// <summary>The simulated pass of a grid point as it is measured: window = all as a later pass of a job, every layer pinned
    /// and already on the device; a window with nothing pinned.</summary>
    static SimulatedPass Predict(ModelCost cost, DeviceCost device, OffloadPolicy policy)
    {
        var bytes = cost.Layers.Select(l => l.Bytes).ToArray();
        var pinned = policy.PinnedSet(bytes.Length);
        return PassSimulator.Run(cost, device, new WindowGate(policy, bytes, pinned), pinned);
    }

    static string Markdown(TradeoffReport r, string png)
    {
        static string F(double v, string format) => v.ToString(format, CultureInfo.InvariantCulture);
        static string Bytes(IEnumerable<long> bytes) => string.Join(", ", bytes.Select(b => b.ToString("N0", CultureInfo.InvariantCulture)));
        var m = r.Model;
        var c = r.LinkCalibration;
        var lines = new List<string>
        {
            $"# superpipeline bench --tradeoff{(r.Quick ? " (quick)" : "")}",
            "",
            $"{r.Timestamp} · {r.Machine.Cores} cores, {r.Machine.TorchThreads} torch threads · {r.Machine.Os} · {r.Machine.Runtime}",
            "",
            $"Model: {m.Layers} layers ({m.Blocks} blocks + embeddings + head), hidden {m.Hidden}, heads {m.Heads}, vocab {m.Vocab}, " +
            $"batch {m.Batch} × sequence {m.Sequence}, {m.ModelBytes:N0} bytes; one block {m.BlockBytes:N0} bytes. " +
            $"Simulated device of {r.DeviceCapacityBytes:N0} bytes, link emulated at {F(c.LinkGBps, "0.000")} GB/s " +
            $"(a block's transfer = {F(c.TransferOverCompute, "0.##")} × its {F(c.BlockComputeSeconds * 1e3, "0.00")} ms compute, the fast quartile of " +
            (c.LinkRematches == 0
                ? "a calibration without the link"
                : $"the warm-up round's calibration passes, the first calibration ({F(c.FirstBlockComputeSeconds * 1e3, "0.00")} ms) " +
                    "having been more than 25 % off") +
            $"; {F(c.EffectiveTransferOverCompute, "0.00")} × at the median rate below). " +
            $"Prediction: PassSimulator with the emulated link, no transfer latency, and the compute rate of a calibration pass " +
            $"({c.CalibrationPolicy}) run just before each measured pass: median {F(c.FlopsPerSecond / 1e9, "0.0")} GFLOP/s, " +
            $"from {F(c.MinFlopsPerSecond / 1e9, "0.0")} to {F(c.MaxFlopsPerSecond / 1e9, "0.0")} over {c.CalibrationPasses} passes. " +
            $"Measured and predicted times are medians of {r.Repeats} passes, peaks the largest of them; error = (predicted − measured) ÷ measured. " +
            "Window = all pins every layer: it is measured as a later pass of a job (the pass before it loaded the layers), where only the " +
            "input crosses the link.",
            "",
        };
        var table = new MarkdownTable("k", "k'", "measured s", "predicted s", "error %", "measured peak bytes", "predicted peak bytes", "peak MiB");
        foreach (var p in r.Points)
        {
            string k = p.Resident ? $"all ({p.Window})" : p.Window.ToString(CultureInfo.InvariantCulture);
            string peak = p.PeakEqual ? "" : " ≠";
            table.Row(k, $"{p.Swap}", F(p.MeasuredSeconds, "0.0000"), F(p.PredictedSeconds, "0.0000"), F(p.ErrorPercent, "+0.0;-0.0;0.0"),
                $"{p.MeasuredPeakBytes:N0}{peak}", $"{p.PredictedPeakBytes:N0}{(p.PeakSensitiveToTiming ? " (timing-sensitive)" : "")}",
                F(p.MeasuredPeakBytes / (double)(1 << 20), "0.0"));
        }
        lines.AddRange(table.Lines());
        lines.Add("");
        lines.Add($"Mean absolute prediction error (time per pass): {F(r.MeanAbsoluteErrorPercent, "0.0")} %. " +
            $"Predicted peak bytes equal measured peak bytes (every repeat) at {r.PeaksEqual} of {r.Points.Count} points. " +
            $"Outputs bit-identical across all points: {(r.OutputsIdentical ? "yes" : "NO")}.");
        if (r.Points.Any(p => !p.PeakEqual || p.PeakSensitiveToTiming))
        {
            lines.Add("");
            lines.Add("≠ marks a point where some repeat's measured peak differs from its own prediction; \"timing-sensitive\" marks one whose " +
                "predicted peak (at the median compute rate) changes when compute runs 20 % faster or slower: whether one more layer's load starts " +
                "before a compute ends is a race there, so a pass may land on either side of it, and its peak varies from pass to pass.");
            foreach (var p in r.Points.Where(p => !p.PeakEqual || p.MeasuredPeakBytesPerRepeat.Distinct().Count() > 1))
                lines.Add($"- {p.Label}: measured peaks per repeat {Bytes(p.MeasuredPeakBytesPerRepeat)}; " +
                    $"predicted (each with its own calibration pass) {Bytes(p.PredictedPeakBytesPerRepeat)}.");
        }
        lines.Add("");
        lines.Add($"![peak device memory against time per pass]({png})");
        lines.Add("");
        return string.Join('\n', lines);
    }
}

/// <summary>tradeoff.json.</summary>
public sealed record TradeoffReport(
    string Timestamp, MachineInfo Machine, bool Quick, int Repeats, ModelShape Model, long DeviceCapacityBytes,
    LinkCalibration LinkCalibration, IReadOnlyList<TradeoffPoint> Points, double MeanAbsoluteErrorPercent, int PeaksEqual, bool OutputsIdentical);

/// <summary>How the link and the simulator's device were set in this run.</summary>
/// <param name="FirstBlockComputeSeconds">The fast quartile of block compute times in streamed passes without link emulation.</param>
/// <param name="BlockComputeSeconds">The block compute time the link is matched to: the first, or, when the warm-up round's
/// calibration passes found it more than 25 % off, the fast quartile of their block times.</param>
/// <param name="LinkRematches">0, or 1 when the link was matched again after the warm-up round.</param>
/// <param name="LinkGBps">The emulated link, = block bytes ÷ (<paramref name="TransferOverCompute"/> × block compute) ÷ 1e9.</param>
/// <param name="EffectiveTransferOverCompute">A block's transfer time ÷ its compute time at the median calibrated rate:
/// the ratio the measured passes actually met (typically a little below <paramref name="TransferOverCompute"/>).</param>
/// <param name="CalibrationPasses">One before every measured pass; each gives a compute rate, the model's FLOPs ÷ the sum
/// of its layers' compute seconds, that predicts the pass after it.</param>
/// <param name="FlopsPerSecond">The median of those rates (the figure in the plot's legend).</param>
public sealed record LinkCalibration(int BlockLayer, string BlockName, long BlockBytes, double FirstBlockComputeSeconds, double BlockComputeSeconds,
    int LinkRematches, double TransferOverCompute, double LinkGBps, double EffectiveTransferOverCompute, string CalibrationPolicy, int CalibrationPasses,
    double MinFlopsPerSecond, double MaxFlopsPerSecond, double FlopsPerSecond, double ModelFlops, double TransferLatencySeconds);

/// <summary>One (k, k') measured and predicted.</summary>
/// <param name="MeasuredSeconds">Median wall time per pass of the real engine.</param>
/// <param name="MeasuredFlopsPerSecond">The model's FLOPs ÷ the median sum of its layers' compute seconds at this point.</param>
/// <param name="CalibrationFlopsPerSecond">Per repeat, the compute rate of the calibration pass just before it.</param>
/// <param name="PredictedSeconds">Median over the repeats of the simulator's makespan with that repeat's compute rate.</param>
/// <param name="ErrorPercent">(predicted − measured) ÷ measured × 100.</param>
/// <param name="MeasuredPeakBytes">Largest peak device bytes over the repeats (they are normally all equal).</param>
/// <param name="PredictedPeakBytes">Largest predicted peak over the repeats, each predicted with its own calibration pass.</param>
/// <param name="PeakEqual">Every repeat's measured peak equals its own prediction.</param>
/// <param name="PeakSensitiveToTiming">The predicted peak at the median of this point's compute rates changes with a rate
/// 20 % off: a race decides it.</param>
/// <param name="OutputSha256">SHA-256 of the output, or "differs" if the repeats disagreed.</param>
public sealed record TradeoffPoint(
    string Label, int Window, int Swap, bool Resident, int PrefetchDepth,
    double MeasuredSeconds, IReadOnlyList<double> MeasuredSecondsPerRepeat, double MeasuredLowerBoundSeconds, double MeasuredFlopsPerSecond,
    IReadOnlyList<double> CalibrationFlopsPerSecond,
    double PredictedSeconds, IReadOnlyList<double> PredictedSecondsPerRepeat, double PredictedLowerBoundSeconds, double ErrorPercent,
    long MeasuredPeakBytes, IReadOnlyList<long> MeasuredPeakBytesPerRepeat, long PredictedPeakBytes, IReadOnlyList<long> PredictedPeakBytesPerRepeat,
    bool PeakEqual, bool PeakSensitiveToTiming, string OutputSha256);
