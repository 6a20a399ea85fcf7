using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Superpipeline.Engine;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Messages;
using static Superpipeline.Messages.JobProtocol;
using static TorchSharp.torch;

namespace Superpipeline.Coordinator;

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
public static class BenchCommand
{
    /// <summary>Goals, as the project states them.</summary>
    public const double EngineOverheadGoal = 1.03, StreamedOverLowerBoundGoal = 1.10, SyncOverStreamedGoal = 1.8, PeakWindow2Goal = 0.12;

    /// <summary>Full bench: 22 blocks + embeddings + head = 24 layers; a small vocabulary so blocks dominate.</summary>
    public static ModelSpec FullModel { get; } = new("demo", Blocks: 22, Hidden: 512, Heads: 8, Vocab: 512, Sequence: 128, Batch: 4, Seed: 1);

    /// <summary>Quick bench: the same 24 layers at a quarter of the width, for smoke runs and tests.</summary>
    public static ModelSpec QuickModel { get; } = new("demo", Blocks: 22, Hidden: 256, Heads: 4, Vocab: 128, Sequence: 64, Batch: 2, Seed: 1);

    public static Command Build()
    {
        var output = new Option<string>("--out") { Description = "folder for bench.md and bench.json (or the tradeoff files)", DefaultValueFactory = _ => "bench-results" };
        var quick = new Option<bool>("--quick") { Description = "smaller model and fewer repetitions (runs in seconds; figures are noisier)" };
        var repeats = new Option<int?>("--repeats") { Description = "measured repetitions per measure (default 9, or 3 with --quick; with --tradeoff 5, or 3 with --quick)" };
        var tradeoff = new Option<bool>("--tradeoff")
        {
            Description = "instead: peak memory against time per pass over a grid of (k, k'), measured and predicted by the simulator; writes tradeoff.md, tradeoff.json and tradeoff.png",
        };
        var cluster = new Option<bool>("--cluster") { Description = "instead: job throughput of an in-process cluster with one worker node against two; writes cluster.md and cluster.json" };
        var bench = new Command("bench", "Measure the engine: overhead against a hand-written loop, overlap under link emulation, peak memory; or, with --tradeoff, the memory/time trade-off over (k, k').");
        foreach (var o in new Option[] { output, quick, repeats, tradeoff, cluster }) bench.Options.Add(o);
        bench.SetAction((r, cancel) => r.GetValue(cluster) ? ClusterBench.RunAsync(r.GetValue(output)!, r.GetValue(quick), Console.Out, Console.Error) : r.GetValue(tradeoff)
            ? TradeoffBench.RunAsync(new TradeoffOptions(r.GetValue(output)!, r.GetValue(quick), r.GetValue(repeats)), Console.Out, cancel, Console.Error)
            : RunAsync(new BenchOptions(r.GetValue(output)!, r.GetValue(quick), r.GetValue(repeats)), Console.Out, cancel, Console.Error));
        return bench;
    }

    /// <summary>Runs every measure, writes <c>bench.md</c> and <c>bench.json</c> under <see cref="BenchOptions.OutDir"/>,
    /// prints the Markdown table to <paramref name="output"/> and progress to <paramref name="log"/>. Returns the exit code:
    /// 0 whether or not the goals are met; errors (a failed pass, an unwritable folder) throw.</summary>
    public static async Task<int> RunAsync(BenchOptions o, TextWriter output, CancellationToken cancel, TextWriter? log = null)
    {
        log ??= TextWriter.Null;
        int repeats = o.Repeats ?? (o.Quick ? 3 : 9);
        if (repeats < 1) throw new ArgumentException($"--repeats must be at least 1; got {repeats}");
        if (string.IsNullOrWhiteSpace(o.OutDir)) throw new ArgumentException("--out must name a folder");
        var dir = Directory.CreateDirectory(o.OutDir).FullName;
        var mdPath = Path.Combine(dir, "bench.md");
        var jsonPath = Path.Combine(dir, "bench.json");
        OutputPaths.CheckWritable(mdPath, "--out");
        OutputPaths.CheckWritable(jsonPath, "--out");

        var spec = o.Quick ? QuickModel : FullModel;
        var model = ModelCatalog.Create(spec);
        long capacity = CapacityFor(model);
        var started = DateTimeOffset.UtcNow;
        log.WriteLine($"bench: {(o.Quick ? "quick, " : "")}{repeats} repeats; model {Describe(spec, model)}; device capacity {capacity:N0} bytes");

        EngineOverhead overhead;
        PeakMemory peak;
        BlockCost block;
        await using (var host = EmbeddedHost.Start(new DeviceSpec("sim", capacity, null)))
        {
            overhead = await MeasureOverheadAsync(host, spec, model, repeats, log, cancel);
            if (!overhead.HandMatchesEngine)
            {
                var line = $"FAIL: the hand loop's output (sha256 {overhead.HandOutputSha256}) differs from the engine's ({overhead.EngineOutputSha256}): the overhead comparison is not fair";
                output.WriteLine(line);
                log.WriteLine(line);
            }
            peak = await MeasurePeakAsync(host, spec, model, overhead, log, cancel);
            block = await MeasureBlockAsync(host, spec, model, o.Quick ? 5 : 15, log, cancel);
        }
        var overlap = await MeasureOverlapAsync(spec, model, capacity, block, repeats, log, cancel);

        var report = new BenchReport(
            Timestamp: started.ToString("O", CultureInfo.InvariantCulture),
            Machine: new MachineInfo(Environment.ProcessorCount, RuntimeInformation.OSDescription, RuntimeInformation.FrameworkDescription, overhead.TorchThreads),
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

        var markdown = Markdown(report);
        await File.WriteAllTextAsync(mdPath, markdown, cancel);
        await File.WriteAllTextAsync(jsonPath, JsonReport.Serialize(report), cancel);
        output.Write(markdown);
        output.WriteLine();
        output.WriteLine($"written: {mdPath}, {jsonPath}");
        return 0;
    }

    /// <summary>Room for the resident pass (every layer, the input and the two live activations) with a margin.</summary>
    internal static long CapacityFor(LayeredModel model)
    {
        long need = model.Bytes + model.ActivationBoundBytes() + TensorBytes.Of(model.InputShape, model.InputDType);
        const long mib = 1L << 20;
        return (need * 5 / 4 + mib - 1) / mib * mib;
    }

    internal static string Describe(ModelSpec s, LayeredModel m) =>
        $"{m.Layers.Count} layers ({s.Blocks} blocks + embeddings + head), hidden {s.Hidden}, heads {s.Heads}, vocab {s.Vocab}, " +
        $"batch {s.Batch} × sequence {s.Sequence}, {m.Bytes:N0} bytes";

    // ---------------------------------------------------------------- (a) engine overhead

    static async Task<EngineOverhead> MeasureOverheadAsync(EmbeddedHost host, ModelSpec spec, LayeredModel model, int repeats, TextWriter log, CancellationToken cancel)
    {
        var device = host.Device;
        var source = ModelCatalog.Weights(spec);
        // Host weights and input for the hand loop, made once (as the LayerActors hold theirs before a pass starts),
        // on a device thread: the bench's own async flow does no TorchSharp work.
        var (weights, input, threads) = await device.OnTransferThread(() =>
        {
            var w = model.Layers.Select(l =>
            {
                var loaded = source.Load(l);
                return l.Parameters.Select(p => (p.Name, loaded[p.Name])).ToArray();
            }).ToArray();
            return (w, model.MakeInput(spec.Seed), get_num_threads());
        });
        try
        {
            log.WriteLine("bench (a): warming up the resident engine and the hand loop");
            var engineShas = new HashSet<string>();
            var handShas = new HashSet<string>();
            for (int i = 0; i < 2; i++)
            {
                engineShas.Add((await EnginePassAsync(host, spec, PolicySpec.Resident, cancel)).Sha256);
                handShas.Add((await HandPassAsync(device, model, weights, input)).Sha256);
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
                var e = await EnginePassAsync(host, spec, PolicySpec.Resident, cancel);
                engine.Add(e.Report.WallSeconds);
                var t = e.Report.LayerTimings;
                engineCompute.Add(t.Sum(l => l.ComputeSeconds));
                engineGaps.Add(ComputeGapSeconds(e.Report));
                engineFirst.Add(t[0].ComputeStart);
                engineShas.Add(e.Sha256);
                residentPeaks.Add(e.Report.PeakDeviceBytes);
                var hf = MinorFaults();
                var h = await HandPassAsync(device, model, weights, input);
                handFaults.Add(MinorFaults() - hf);
                engineFaults.Add(e.MinorFaults);
                hand.Add(h.Seconds);
                handCompute.Add(h.ComputeSeconds);
                handGaps.Add(h.GapSeconds);
                handFirst.Add(h.FirstComputeAt);
                handShas.Add(h.Sha256);
                log.WriteLine($"bench (a) {i + 1}/{repeats}: engine {e.Report.WallSeconds:0.0000} s, hand loop {h.Seconds:0.0000} s");
            }
            bool match = engineShas.Count == 1 && handShas.Count == 1 && engineShas.Single() == handShas.Single();
            double em = Median(engine), hm = Median(hand);
            var paired = engine.Zip(hand, (e, h) => e / h).ToArray();
            return new EngineOverhead("window=all (resident)", em, hm, em / hm, Median(paired), engine, hand, paired,
                string.Join(",", engineShas), string.Join(",", handShas), match, residentPeaks.Max(), threads,
                new PassBreakdown(engineCompute, engineGaps, engineFirst, engineFaults), new PassBreakdown(handCompute, handGaps, handFirst, handFaults));
        }
        finally
        {
            await device.OnTransferThread(() =>
            {
                foreach (var layer in weights) foreach (var (_, t) in layer) t.Dispose();
                input.Dispose();
                return 0;
            });
        }
    }

    internal sealed record EngineRun(PassReport Report, string Sha256, long? MinorFaults);

    /// <summary>One pass through the engine, exactly as <c>superpipeline run</c> submits it.</summary>
    internal static async Task<EngineRun> EnginePassAsync(EmbeddedHost host, ModelSpec spec, PolicySpec policy, CancellationToken cancel)
    {
        cancel.ThrowIfCancellationRequested();
        var faults = MinorFaults();
        var answer = await host.RunAsync(new SubmitJob(JobId.New(), spec, policy));
        faults = MinorFaults() - faults;
        if (answer is JobFailed failed) throw new InvalidOperationException($"bench: the engine pass ({policy}) failed: {failed.Reason}");
        var ok = (JobSucceeded)answer;
        return new EngineRun(ok.Report, Convert.ToHexStringLower(SHA256.HashData(ok.Output.Bytes.AsSpan())), faults);
    }

    /// <summary>The process's minor page faults so far (Linux, from /proc/self/stat), or null where unavailable:
    /// a diagnostic for passes whose compute is slowed by freshly mapped memory.</summary>
    static long? MinorFaults()
    {
        try
        {
            if (!OperatingSystem.IsLinux()) return null;
            var stat = File.ReadAllText("/proc/self/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return long.Parse(fields[7], CultureInfo.InvariantCulture); // field 10 (minflt); fields[0] is field 3
        }
        catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException or IndexOutOfRangeException)
        {
            return null;
        }
    }

    /// <summary>The hand-written loop: the work of a resident pass with nothing around it. Every upload (input, then
    /// each layer) is queued on the transfer thread at once, as a plain program would; one compute-thread item runs the
    /// layers in order, each as soon as its weights are on the device, frees the weights after the last layer, and
    /// copies the output to host. The stopwatch covers what the engine's wall time covers (first upload to output on host).</summary>
    static async Task<(double Seconds, string Sha256, double ComputeSeconds, double GapSeconds, double FirstComputeAt)> HandPassAsync(IDevice device, LayeredModel model, (string Name, Tensor Host)[][] weights, Tensor input)
    {
        int n = model.Layers.Count;
        var clock = Stopwatch.StartNew();
        var placedInput = device.OnTransferThread(() => device.Upload([("input", input)], "the hand loop's input"));
        var uploads = new Task<DeviceTensors>[n];
        for (int i = 0; i < n; i++)
        {
            int layer = i;
            uploads[i] = device.OnTransferThread(() => device.Upload(weights[layer], $"hand loop layer {layer}"));
        }
        try
        {
            return await device.OnComputeThread(() =>
            {
                var inputOnDevice = placedInput.GetAwaiter().GetResult();
                Tensor x = inputOnDevice["input"];
                Tensor? produced = null;
                double computeSeconds = 0, gapSeconds = 0, firstComputeAt = 0, lastEnd = 0;
                try
                {
                    for (int i = 0; i < n; i++)
                    {
                        var w = uploads[i].GetAwaiter().GetResult();
                        Tensor y;
                        double start = clock.Elapsed.TotalSeconds;
                        if (i == 0) firstComputeAt = start; else gapSeconds += start - lastEnd;
                        {
                            using var scope = NewDisposeScope();
                            using var _ = inference_mode();
                            y = model.Layers[i].Forward(w.Tensors, x).MoveToOuterDisposeScope();
                        }
                        lastEnd = clock.Elapsed.TotalSeconds;
                        computeSeconds += lastEnd - start;
                        if (produced is null) inputOnDevice.Dispose(); else produced.Dispose();
                        produced = y;
                        x = y;
                    }
                    foreach (var u in uploads) u.Result.Dispose();
                    using var onHost = device.ToHost(x);
                    double seconds = clock.Elapsed.TotalSeconds;
                    return (seconds, TensorBytes.Sha256(onHost), computeSeconds, gapSeconds, firstComputeAt);
                }
                finally
                {
                    produced?.Dispose();
                    inputOnDevice.Dispose();
                }
            });
        }
        finally
        {
            // On any failure, whatever was uploaded is freed too (DeviceTensors.Dispose is idempotent).
            foreach (var u in uploads.Prepend(placedInput))
            {
                try { (await u).Dispose(); } catch { /* the failure is already on its way */ }
            }
        }
    }

    // ---------------------------------------------------------------- (c) peak device bytes

    static async Task<PeakMemory> MeasurePeakAsync(EmbeddedHost host, ModelSpec spec, LayeredModel model, EngineOverhead resident, TextWriter log, CancellationToken cancel)
    {
        var run = await EnginePassAsync(host, spec, new PolicySpec(2, 1), cancel);
        double ratio = run.Report.PeakDeviceBytes / (double)resident.ResidentPeakDeviceBytes;
        log.WriteLine($"bench (c): peak at window 2 {run.Report.PeakDeviceBytes:N0} bytes, resident {resident.ResidentPeakDeviceBytes:N0} bytes: {ratio:P2}");
        return new PeakMemory(model.Layers.Count, spec.Blocks, 2, 1, run.Report.PeakDeviceBytes, resident.ResidentPeakDeviceBytes, ratio,
            model.Bytes, run.Sha256 == resident.EngineOutputSha256);
    }

    // ---------------------------------------------------------------- (b) overlap under link emulation

    internal sealed record BlockCost(int Layer, string Name, long Bytes, IReadOnlyList<double> ComputeSeconds, double MedianSeconds,
        IReadOnlyList<double> IsolatedSeconds, double IsolatedMedianSeconds);

    /// <summary>A block's compute time as the engine times it inside a streamed pass (window 3, swap 1, no link emulation):
    /// the median over every block of two passes. That is what the link is matched to. For reference, also the median of
    /// the first block run alone, repeatedly, on the device's compute thread (its weights stay hot in cache, so it is faster).</summary>
    internal static async Task<BlockCost> MeasureBlockAsync(EmbeddedHost host, ModelSpec spec, LayeredModel model, int count, TextWriter log, CancellationToken cancel)
    {
        var inPass = new List<double>();
        for (int i = 0; i < 2; i++)
        {
            var run = await EnginePassAsync(host, spec, new PolicySpec(3, 1), cancel);
            inPass.AddRange(Enumerable.Range(1, spec.Blocks).Select(b => run.Report.LayerTimings[b].ComputeSeconds));
        }
        var device = host.Device;
        var source = ModelCatalog.Weights(spec);
        var embed = model.Layers[0];
        var block = model.Layers[1];
        var times = await device.OnComputeThread(() =>
        {
            var ew = source.Load(embed);
            var bw = source.Load(block);
            using var input = model.MakeInput(spec.Seed);
            Tensor x;
            {
                using var scope = NewDisposeScope();
                using var _ = inference_mode();
                x = embed.Forward(ew, input).MoveToOuterDisposeScope();
            }
            try
            {
                var list = new List<double>();
                for (int i = 0; i < count + 3; i++)
                {
                    long start = Stopwatch.GetTimestamp();
                    {
                        using var scope = NewDisposeScope();
                        using var _ = inference_mode();
                        block.Forward(bw, x);
                    }
                    if (i >= 3) list.Add(Stopwatch.GetElapsedTime(start).TotalSeconds);
                }
                return list;
            }
            finally
            {
                x.Dispose();
                foreach (var t in ew.Values.Concat(bw.Values)) t.Dispose();
            }
        });
        var cost = new BlockCost(block.Index, block.Name, block.Bytes, inPass, Median(inPass), times, Median(times));
        log.WriteLine($"bench (b): one block ({block.Bytes:N0} bytes) computes in {cost.MedianSeconds * 1e3:0.00} ms in a streamed pass " +
            $"(median of {inPass.Count}); alone, {cost.IsolatedMedianSeconds * 1e3:0.00} ms (median of {count})");
        return cost;
    }

    static async Task<Overlap> MeasureOverlapAsync(ModelSpec spec, LayeredModel model, long capacity, BlockCost block, int repeats, TextWriter log, CancellationToken cancel)
    {
        double gbps = block.Bytes / block.MedianSeconds / 1e9;
        log.WriteLine($"bench (b): link {gbps:0.000} GB/s, so one block's transfer takes as long as its compute");
        await using var host = EmbeddedHost.Start(new DeviceSpec("sim", capacity, gbps));
        var streamedPolicy = new PolicySpec(3, 1);
        var syncPolicy = new PolicySpec(1, 1);
        await EnginePassAsync(host, spec, streamedPolicy, cancel); // deploys the model and warms up
        await EnginePassAsync(host, spec, syncPolicy, cancel);

        var streamed = new List<PassReport>();
        var sync = new List<PassReport>();
        var streamedFaults = new List<long?>();
        var syncFaults = new List<long?>();
        for (int i = 0; i < repeats; i++)
        {
            var s = await EnginePassAsync(host, spec, streamedPolicy, cancel);
            var y = await EnginePassAsync(host, spec, syncPolicy, cancel);
            streamed.Add(s.Report);
            sync.Add(y.Report);
            streamedFaults.Add(s.MinorFaults);
            syncFaults.Add(y.MinorFaults);
            log.WriteLine($"bench (b) {i + 1}/{repeats}: streamed {s.Report.WallSeconds:0.0000} s (lower bound {s.Report.LowerBoundSeconds:0.0000} s), synchronous {y.Report.WallSeconds:0.0000} s");
        }

        var blocks = Enumerable.Range(1, spec.Blocks).ToArray();
        PolicyRuns Runs(List<PassReport> runs, List<long?> faults, PolicySpec policy) => new(
            policy.Window!.Value, policy.Swap!.Value,
            runs.Select(r => r.WallSeconds).ToArray(),
            runs.Select(r => r.LowerBoundSeconds).ToArray(),
            runs.Select(r => r.WallSeconds / r.LowerBoundSeconds).ToArray(),
            Median(runs.Select(r => r.WallSeconds)),
            Median(runs.Select(r => r.LowerBoundSeconds)),
            Median(runs.SelectMany(r => blocks.Select(b => r.LayerTimings[b].LoadSeconds))),
            Median(runs.SelectMany(r => blocks.Select(b => r.LayerTimings[b].ComputeSeconds))),
            runs.Select(r => r.LayerTimings.Sum(l => l.LoadSeconds)).ToArray(),
            runs.Select(r => r.LayerTimings.Sum(l => l.ComputeSeconds)).ToArray(),
            runs.Select(r => LoadDispatchSeconds(r, policy.Window!.Value)).ToArray(),
            runs.Select(r => ComputeGapSeconds(r)).ToArray(),
            faults);
        var st = Runs(streamed, streamedFaults, streamedPolicy);
        var sy = Runs(sync, syncFaults, syncPolicy);
        return new Overlap(block.Layer, block.Name, block.Bytes, block.ComputeSeconds, block.MedianSeconds,
            block.IsolatedSeconds, block.IsolatedMedianSeconds, gbps,
            st, sy, Median(st.WallOverLowerBound), sy.MedianWallSeconds / st.MedianWallSeconds);
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

    internal static double Median(IEnumerable<double> values)
    {
        var a = values.Order().ToArray();
        if (a.Length == 0) return double.NaN;
        return a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2;
    }

    static string Markdown(BenchReport r)
    {
        static string Yes(bool b) => b ? "yes" : "no";
        string F(double v, string format) => v.ToString(format, CultureInfo.InvariantCulture);
        var m = r.Model;
        var a = r.EngineOverhead;
        var b = r.Overlap;
        var c = r.PeakMemory;
        var lines = new List<string>
        {
            $"# superpipeline bench{(r.Quick ? " (quick)" : "")}",
            "",
            $"{r.Timestamp} · {r.Machine.Cores} cores, {r.Machine.TorchThreads} torch threads · {r.Machine.Os} · {r.Machine.Runtime}",
            "",
            $"Model: {m.Layers} layers ({m.Blocks} blocks + embeddings + head), hidden {m.Hidden}, heads {m.Heads}, vocab {m.Vocab}, " +
            $"batch {m.Batch} × sequence {m.Sequence}, {m.ModelBytes:N0} bytes; one block {m.BlockBytes:N0} bytes. " +
            $"Simulated device of {r.DeviceCapacityBytes:N0} bytes. Medians of {r.Repeats} repeats, all ratios measured in this run.",
            "",
            "| measure | value | goal | met |",
            "|---|---|---|---|",
            $"| (a) engine overhead: resident engine wall ÷ hand-written TorchSharp loop wall (median {F(a.EngineMedianSeconds, "0.0000")} s ÷ {F(a.HandMedianSeconds, "0.0000")} s; median of per-repeat ratios {F(a.MedianPairedRatio, "0.000")}) | {F(a.Ratio, "0.000")} | ≤ {F(EngineOverheadGoal, "0.00")} | {Yes(r.Met.EngineOverhead)} |",
            $"| (a) hand loop output = engine output (SHA-256) | {Yes(a.HandMatchesEngine)} | equal | {Yes(a.HandMatchesEngine)} |",
            $"| (b) streamed (window 3, swap 1) wall ÷ lower bound, link {F(b.LinkGBps, "0.000")} GB/s (a block's transfer ≈ its {F(b.BlockComputeMedianSeconds * 1e3, "0.00")} ms compute in a streamed pass) | {F(r.Ratios.StreamedOverLowerBound, "0.000")} | ≤ {F(StreamedOverLowerBoundGoal, "0.00")} | {Yes(r.Met.StreamedOverLowerBound)} |",
            $"| (b) synchronous (window 1, swap 1) wall ÷ streamed wall (median {F(b.Synchronous.MedianWallSeconds, "0.000")} s ÷ {F(b.Streamed.MedianWallSeconds, "0.000")} s) | {F(r.Ratios.SyncOverStreamed, "0.000")} | ≥ {F(SyncOverStreamedGoal, "0.0")} | {Yes(r.Met.SyncOverStreamed)} |",
            $"| (c) peak device bytes, window 2 (swap 1) ÷ resident, {c.Layers} layers ({c.WindowPeakBytes:N0} ÷ {c.ResidentPeakBytes:N0}) | {F(c.Ratio * 100, "0.0")} % | ≤ {F(PeakWindow2Goal * 100, "0")} % | {Yes(r.Met.PeakWindow2)} |",
            "",
        };
        return string.Join('\n', lines);
    }
}

/// <summary>bench.json: the ratios, the goals, and the raw figures behind them.</summary>
public sealed record BenchReport(
    string Timestamp, MachineInfo Machine, bool Quick, int Repeats, ModelShape Model, long DeviceCapacityBytes,
    Ratios Ratios, Goals Goals, Met Met, EngineOverhead EngineOverhead, Overlap Overlap, PeakMemory PeakMemory);

/// <summary>Where the bench ran.</summary>
public sealed record MachineInfo(int Cores, string Os, string Runtime, int TorchThreads);

/// <summary>The bench model's shape and sizes.</summary>
public sealed record ModelShape(string Name, int Layers, int Blocks, int Hidden, int Heads, int Vocab, int Sequence, int Batch, long Seed,
    long ModelBytes, long BlockBytes, long EmbeddingBytes, long HeadBytes)
{
    public static ModelShape Of(ModelSpec s, LayeredModel m) => new(s.Name, m.Layers.Count, s.Blocks, s.Hidden, s.Heads, s.Vocab, s.Sequence, s.Batch, s.Seed,
        m.Bytes, m.Layers[1].Bytes, m.Layers[0].Bytes, m.Layers[^1].Bytes);
}

/// <summary>The ratios the bench exists for.</summary>
/// <param name="EngineOverHand">(a) median engine wall ÷ median hand-loop wall, resident; goal ≤ 1.03.</param>
/// <param name="StreamedOverLowerBound">(b) median over repeats of streamed wall ÷ its lower bound; goal ≤ 1.10.</param>
/// <param name="SyncOverStreamed">(b) median synchronous wall ÷ median streamed wall; goal ≥ 1.8.</param>
/// <param name="PeakWindow2OverResident">(c) peak device bytes at window 2 ÷ resident; goal ≤ 0.12.</param>
public sealed record Ratios(double EngineOverHand, double StreamedOverLowerBound, double SyncOverStreamed, double PeakWindow2OverResident);

/// <summary>The goal of each ratio.</summary>
public sealed record Goals(double EngineOverHandAtMost, double StreamedOverLowerBoundAtMost, double SyncOverStreamedAtLeast, double PeakWindow2OverResidentAtMost);

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
