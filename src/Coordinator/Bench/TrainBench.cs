using System.Globalization;
using Akka.Actor;
using Akka.Configuration;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Commands;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Training;
using Superpipeline.Workers;
using static TorchSharp.torch;

namespace Superpipeline.Coordinator.Bench;

/// <summary>What <c>superpipeline bench --train</c> was asked to do, already parsed.</summary>
/// <param name="OutDir">Folder for train.md and train.json (created if missing).</param>
/// <param name="Quick">Small checkpoints, short rows and two measured steps: a smoke run the tests use.</param>
/// <param name="Steps">Measured steps per variant after its warm-up step; null for the default (5, or 2 with <paramref name="Quick"/>).</param>
public sealed record TrainBenchOptions(string OutDir = "bench-results", bool Quick = false, int? Steps = null);

/// <summary><c>superpipeline bench --train</c> (issue 10, point 6): what training with offload buys on one simulated device of fixed
/// capacity (a quarter of the large model). Two seeded Llama checkpoints (F32, export-demo) with the same blocks: a small one of
/// about three quarters of the device and a large one of about four times the device. (a) The largest batch the small model
/// trains with resident (window all) and with the layers streamed (window <see cref="Window"/>, swap <see cref="Swap"/>), each
/// found by trying real training steps on a fresh device: doubling from one row until a step is refused for device memory, then
/// bisection between the last batch that fit and the first that did not. A refused step must be a device-memory refusal that leaves
/// no byte reserved. Then samples per second of the two at their largest batches, and of the streamed one at the resident's
/// batch, measured in one run: a warm-up step each, then rounds of one step per variant. (b) The large model: resident is refused
/// at one row; streamed, it trains (at the small model's largest streamed batch, halved until a step fits). Writes train.md and
/// train.json. The simulated device has no link emulation (its transfers are host copies). Figures are measurements: the exit
/// code is 0 unless something failed.</summary>
public static class TrainBench
{
    /// <summary>The streamed window: two layers, one swapped at a time (the next layer loads while one computes).</summary>
    public const int Window = 2, Swap = 1;

    /// <summary>The largest batch a search tries (a safeguard: the device's capacity stops the doubling long before).</summary>
    public const int BatchCap = 4096;

    const long Seed = 1;

    /// <summary>The blocks both checkpoints share (full run): about 2.8 MB each in F32, rows of 16 tokens (<c>MaxPositions</c>). A
    /// block is wide against a row's activations (a row's backward step holds about a third of a block), as a large model's blocks
    /// are against a short context: the regime where the weights, not the activations, fill the device.</summary>
    public static LlamaConfig FullBlock { get; } = new(Hidden: 256, Ffn: 688, Layers: 0, Heads: 4, KvHeads: 1, RmsNormEps: 1e-5,
        RopeTheta: 10000.0, Vocab: 128, MaxPositions: 16, TieWordEmbeddings: false);

    /// <summary>The blocks of the quick run: about 690 KB each, rows of 8 tokens (the same ratio of a block to a row's activations).</summary>
    public static LlamaConfig QuickBlock { get; } = new(Hidden: 128, Ffn: 344, Layers: 0, Heads: 4, KvHeads: 1, RmsNormEps: 1e-5,
        RopeTheta: 10000.0, Vocab: 128, MaxPositions: 8, TieWordEmbeddings: false);

    /// <summary>Blocks of the small and the large checkpoint, in both runs: the large one is 4× the device (which then holds about ten
    /// blocks), the small one about ¾ of it. A streamed backward step holds about three blocks (two layers' weights and one's gradients), resident
    /// training the whole model and one block's gradients: the room left for activations is what sets each one's largest batch.</summary>
    public static (int Small, int Large) Blocks { get; } = (7, 40);

    static readonly TrainingSettings Settings = new(new OptimizerSettings(OptimizerKind.AdamW, 1e-3), LrSchedule.Constant);

    public static async Task<int> RunAsync(TrainBenchOptions o, TextWriter output, CancellationToken cancel, TextWriter? log = null)
    {
        log ??= TextWriter.Null;
        int steps = Stats.Repeats(o.Steps, o.Quick ? 2 : 5);
        var files = ReportWriter.Prepare(o.OutDir, "train");
        var started = DateTimeOffset.UtcNow;
        var block = o.Quick ? QuickBlock : FullBlock;
        var (smallBlocks, largeBlocks) = Blocks;
        int sequence = block.MaxPositions;

        string root = Directory.CreateTempSubdirectory("superpipeline-tbench-").FullName;
        try
        {
            string smallDir = Path.Combine(root, "small"), largeDir = Path.Combine(root, "large");
            ExportDemoCommand.Export("llama", "f32", smallDir, Seed, shards: 1, () => block with { Layers = smallBlocks });
            ExportDemoCommand.Export("llama", "f32", largeDir, Seed, shards: 1, () => block with { Layers = largeBlocks });
            var small = Describe(smallDir, block with { Layers = smallBlocks }, sequence);
            var large = Describe(largeDir, block with { Layers = largeBlocks }, sequence);
            long capacity = large.ModelBytes / 4;
            log.WriteLine($"train bench: {(o.Quick ? "quick, " : "")}device {capacity:N0} bytes; small model {small.ModelBytes:N0} bytes "
                + $"({small.Layers} layers), large {large.ModelBytes:N0} ({large.Layers} layers); rows of {sequence} tokens; {steps} measured step(s)");

            // The loader logs every failed pass as a warning; the search's refused steps are expected, and reported.
            var config = ConfigurationFactory.ParseString("akka.loglevel = OFF, akka.stdout-loglevel = OFF").WithFallback(WorkerConfig.Load(null));
            var system = ActorSystem.Create("tbench", config);
            try
            {
                var bench = new Bench(system, SuperpipelineSettings.Create(config).AskTimeout, capacity, sequence, log, cancel);
                var resident = new PolicySpec(null, null);
                var streamed = new PolicySpec(Window, Swap);

                // (a) The largest batch each way, by trying steps.
                var residentSearch = await bench.LargestBatchAsync(smallDir, resident);
                var streamedSearch = await bench.LargestBatchAsync(smallDir, streamed);
                if (residentSearch.LargestBatch < 1)
                    throw new InvalidOperationException(
                        $"bench: the small model trains resident at no batch on {capacity:N0} bytes: {Refusal(residentSearch)}");
                var measured = await bench.MeasureAsync(smallDir, steps,
                [
                    ("resident, largest batch", resident, residentSearch.LargestBatch),
                    ("streamed, largest batch", streamed, streamedSearch.LargestBatch),
                    ("streamed, resident's batch", streamed, residentSearch.LargestBatch),
                ]);

                // (b) The model 4× the device: resident refused at one row, streamed trains.
                var largeResident = await bench.TryAsync(largeDir, resident, 1);
                var largeTrials = new List<BatchTrial>();
                int batch = streamedSearch.LargestBatch;
                while (batch >= 1)
                {
                    var trial = await bench.TryAsync(largeDir, streamed, batch);
                    largeTrials.Add(trial);
                    if (trial.Fits) break;
                    batch /= 2;
                }
                if (batch < 1) throw new InvalidOperationException($"bench: the large model trains streamed at no batch: {largeTrials[^1].Refusal}");
                var largeRun = (await bench.MeasureAsync(largeDir, steps, [("large, streamed", streamed, batch)]))[0];
                int threads = get_num_threads();

                var report = new TrainBenchReport(started.ToString("O", CultureInfo.InvariantCulture), BenchHarness.Machine(threads), o.Quick, steps,
                    capacity, sequence, $"window {Window}, swap {Swap}", SearchMethod, small, residentSearch, streamedSearch, measured,
                    streamedSearch.LargestBatch / (double)residentSearch.LargestBatch,
                    measured[1].SamplesPerSecond / measured[0].SamplesPerSecond,
                    new LargeModelRun(large, large.ModelBytes / (double)capacity, largeResident, largeTrials, largeRun));
                await ReportWriter.WriteAsync(files, Markdown(report), report, output, cancel);
            }
            finally
            {
                await system.Terminate();
            }
        }
        finally
        {
            try { Directory.Delete(root, recursive: true); }
            catch (IOException) { /* a temporary folder left behind is harmless */ }
        }
        return 0;
    }

    public const string SearchMethod = "doubling from 1 row until a step is refused for device memory, then bisection between the last batch that fit "
        + "and the first that did not; each try one real training step on a fresh device";

    /// <summary>The batches tried, in order, each with whether it fit.</summary>
    static string Tried(IEnumerable<BatchTrial> trials) => string.Join(", ", trials.Select(t => $"{t.Batch} {(t.Fits ? "fits" : "refused")}"));

    static string Refusal(BatchSearch s) => s.Trials.FirstOrDefault(t => !t.Fits)?.Refusal ?? "no refusal";

    static TrainBenchModel Describe(string dir, LlamaConfig c, int sequence)
    {
        var model = ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, 1, sequence, 0));
        return new TrainBenchModel("llama", "F32", model.Layers.Count, c.Layers, c.Hidden, c.Ffn, c.Heads, c.KvHeads, c.Vocab, model.Bytes,
            model.Layers.Max(l => l.Bytes));
    }

    /// <summary>Training steps on fresh simulated devices of one capacity, in one actor system.</summary>
    sealed class Bench(ActorSystem system, TimeSpan askTimeout, long capacity, int sequence, TextWriter log, CancellationToken cancel)
    {
        int _rigs;

        /// <summary>The largest batch that trains under <paramref name="policy"/>: doubling, then bisection (<see cref="SearchMethod"/>).</summary>
        public async Task<BatchSearch> LargestBatchAsync(string dir, PolicySpec policy)
        {
            var trials = new List<BatchTrial>();
            async Task<bool> Fits(int batch)
            {
                var t = await TryAsync(dir, policy, batch);
                trials.Add(t);
                return t.Fits;
            }
            int fit = 0, refused = 0;
            for (int b = 1; b <= BatchCap; b *= 2)
            {
                if (!await Fits(b))
                {
                    refused = b;
                    break;
                }
                fit = b;
            }
            if (refused != 0)
                while (refused - fit > 1)
                {
                    int mid = fit + (refused - fit) / 2;
                    if (await Fits(mid)) fit = mid;
                    else refused = mid;
                }
            log.WriteLine($"train bench: {Describe(policy)}: largest batch {fit} ({Tried(trials)})");
            return new BatchSearch(Describe(policy), fit, refused == 0, trials);
        }

        /// <summary>One training step at <paramref name="batch"/> rows on a fresh device: it fits, or it is refused for device memory
        /// (anything else is a failure of the bench) and the device must hold no byte after it.</summary>
        public async Task<BatchTrial> TryAsync(string dir, PolicySpec policy, int batch)
        {
            await using var rig = await Rig.StartAsync(system, dir, batch, sequence, capacity, policy, askTimeout, $"tbench-{_rigs++}");
            cancel.ThrowIfCancellationRequested();
            using var ids = Ids(rig.Model, batch, sequence);
            try
            {
                var step = await rig.Session.StepAsync(0, ids);
                return new BatchTrial(batch, true, step.PeakDeviceBytes, rig.Device.Memory.Reserved, null);
            }
            catch (TrainingStepException e) when (OutOfMemory(e) is not null)
            {
                return new BatchTrial(batch, false, rig.Device.Memory.Peak, rig.Device.Memory.Reserved, OutOfMemory(e)!.Message);
            }
        }

        /// <summary>Each variant on a fresh device, all at once: a warm-up step each, then <paramref name="steps"/> rounds of one step per
        /// variant, so that a machine whose speed drifts slows every variant alike.</summary>
        public async Task<IReadOnlyList<TrainVariant>> MeasureAsync(string dir, int steps, IReadOnlyList<(string Name, PolicySpec Policy, int Batch)> variants)
        {
            var rigs = new List<Rig>();
            try
            {
                foreach (var v in variants)
                    rigs.Add(await Rig.StartAsync(system, dir, v.Batch, sequence, capacity, v.Policy, askTimeout, $"tbench-{_rigs++}"));
                var reports = variants.Select(_ => new List<TrainingStepReport>()).ToArray();
                for (int step = 0; step <= steps; step++)
                    for (int i = 0; i < rigs.Count; i++)
                    {
                        cancel.ThrowIfCancellationRequested();
                        using var ids = Ids(rigs[i].Model, variants[i].Batch, sequence, step);
                        reports[i].Add(await rigs[i].Session.StepAsync(step, ids));
                    }
                var result = variants.Select((v, i) => Variant(v.Name, Describe(v.Policy), v.Batch, reports[i])).ToArray();
                foreach (var r in result)
                    log.WriteLine($"train bench: {r.Name} ({r.Policy}, batch {r.Batch}): {r.SamplesPerSecond:0.00} samples/s, "
                        + $"peak {r.PeakDeviceBytes:N0} bytes");
                return result;
            }
            finally
            {
                foreach (var r in rigs) await r.DisposeAsync();
            }
        }

        static TrainVariant Variant(string name, string policy, int batch, List<TrainingStepReport> steps)
        {
            var measured = steps.Skip(1).ToArray();
            double seconds = measured.Sum(s => s.Seconds);
            return new TrainVariant(name, policy, batch, batch * measured.Length / seconds, measured.Sum(s => s.Tokens) / seconds, steps[0].Seconds,
                [.. measured.Select(s => s.Seconds)], steps.Max(s => s.PeakDeviceBytes), steps.Max(s => s.PeakHostBytes), [.. steps.Select(s => s.Loss)]);
        }

        /// <summary>Seeded token ids in [0, vocab): the same rows for the same batch, step and model.</summary>
        static Tensor Ids(LayeredModel model, int batch, int sequence, int step = 0)
        {
            long vocab = model.ActivationShapes()[^1].Shape[^1];
            var random = new Random((int)Seed + 7919 * step);
            var ids = new long[batch * (long)sequence];
            for (long i = 0; i < ids.Length; i++) ids[i] = random.NextInt64(vocab);
            return tensor(ids, [batch, sequence], ScalarType.Int64);
        }

        static string Describe(PolicySpec p) => p.Window is null ? "resident (window all)" : $"window {p.Window}, swap {p.Swap}";

        static DeviceOutOfMemoryException? OutOfMemory(Exception e)
        {
            for (Exception? x = e; x is not null; x = x.InnerException)
                if (x is DeviceOutOfMemoryException oom) return oom;
            return null;
        }
    }

    /// <summary>A checkpoint's layer actors at one batch, a simulated device of the bench's capacity, its loader and a started
    /// <see cref="TrainingSession"/>; disposing stops the actors and frees the device.</summary>
    sealed class Rig : IAsyncDisposable
    {
        readonly IActorRef[] _actors;

        Rig(LayeredModel model, SimulatedDevice device, IActorRef[] actors, IActorRef loader, TrainingSession session)
        {
            Model = model;
            Device = device;
            _actors = [.. actors, loader];
            Session = session;
        }

        public LayeredModel Model { get; }
        public SimulatedDevice Device { get; }
        public TrainingSession Session { get; }

        public static async Task<Rig> StartAsync(ActorSystem system, string dir, int batch, int sequence, long capacity, PolicySpec policy,
            TimeSpan askTimeout, string name)
        {
            var model = ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, batch, sequence, 0));
            var device = new SimulatedDevice($"sim:{name}", capacity);
            var layers = new List<IActorRef>();
            IActorRef? loader = null;
            try
            {
                using (var weights = new CheckpointWeights(dir))
                {
                    foreach (var l in model.Layers) layers.Add(system.ActorOf(LayerActor.Props(l, weights, device.WantsPinnedHost), $"{name}-layer-{l.Index}"));
                    foreach (var a in layers) await a.Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, askTimeout); // loaded from weights
                }
                loader = system.ActorOf(DeviceLoaderActor.Props(device, askTimeout), $"{name}-loader");
                var session = new TrainingSession(loader, model, layers, OffloadPolicy.For(policy, model.Layers.Count), Settings, askTimeout);
                await session.StartAsync();
                return new Rig(model, device, [.. layers], loader, session);
            }
            catch
            {
                foreach (var a in layers) system.Stop(a);
                if (loader is not null) system.Stop(loader);
                device.Dispose();
                throw;
            }
        }

        public async ValueTask DisposeAsync()
        {
            await Task.WhenAll(_actors.Select(a => a.GracefulStop(TimeSpan.FromSeconds(30))));
            Device.Dispose();
        }
    }

    static string Markdown(TrainBenchReport r)
    {
        static string F(double v, string format) => v.ToString(format, CultureInfo.InvariantCulture);
        string Share(long bytes) => F(bytes * 100.0 / r.DeviceCapacityBytes, "0.0");
        var s = r.Model;
        var l = r.Large.Model;
        var lines = new List<string>
        {
            "# superpipeline bench --train",
            "",
            $"{r.Timestamp}; {r.Machine.Cores} cores, {r.Machine.Os}, {r.Machine.Runtime}, {r.Machine.TorchThreads} torch threads"
                + (r.Quick ? "; **quick run** (small checkpoints: figures are a smoke test)" : ""),
            "",
            $"Device: simulated, {r.DeviceCapacityBytes:N0} bytes (a quarter of the large model), no link emulation. "
                + $"Rows of {r.Sequence} seeded random token ids (new rows each step); "
                + "AdamW (lr 1e-3), causal-LM loss; streamed = " + r.StreamedPolicy + ".",
            $"Small model: seeded Llama F32, {s.Layers} layers ({s.Blocks} blocks + embeddings + head), hidden {s.Hidden}, ffn {s.Ffn}: "
                + $"{s.ModelBytes:N0} bytes ({Share(s.ModelBytes)} % of the device). Large model: {l.Layers} layers ({l.Blocks} blocks), "
                + $"{l.ModelBytes:N0} bytes ({F(r.Large.ModelOverDevice, "0.00")}× the device).",
            $"Batch search: {r.Search}.",
            "",
            "## (a) the largest batch, resident against streamed",
            "",
        };
        foreach (var search in new[] { r.Resident, r.Streamed })
            lines.Add($"- {search.Policy}: largest batch **{search.LargestBatch}**{(search.Capped ? $" (the cap, {BatchCap})" : "")}; tried "
                + Tried(search.Trials)
                + (search.Trials.FirstOrDefault(t => !t.Fits) is { } first ? $". First refusal: \"{first.Refusal}\"" : ""));
        lines.Add("");
        lines.Add($"Each variant: a fresh device, a warm-up step, then {r.Steps} measured step(s), in rounds of one step per variant.");
        lines.Add("");
        var table = new MarkdownTable("variant", "model", "policy", "batch>", "samples/s>", "tokens/s>", "warm-up s>", "peak device bytes>",
            "% of device>", "peak host bytes>");
        foreach (var v in r.Throughput)
            table.Row(v.Name, "small", v.Policy, $"{v.Batch}", F(v.SamplesPerSecond, "0.00"), F(v.TokensPerSecond, "0.0"), F(v.WarmupSeconds, "0.000"),
                $"{v.PeakDeviceBytes:N0}", Share(v.PeakDeviceBytes), $"{v.PeakHostBytes:N0}");
        var lr = r.Large.Resident;
        table.Row("large, resident", $"large ({F(r.Large.ModelOverDevice, "0.0")}×)", "resident (window all)", $"{lr.Batch}",
            lr.Fits ? "fits?" : "refused", "", "", $"{lr.PeakDeviceBytes:N0}", Share(lr.PeakDeviceBytes), "");
        var ls = r.Large.Streamed;
        table.Row(ls.Name, $"large ({F(r.Large.ModelOverDevice, "0.0")}×)", ls.Policy, $"{ls.Batch}", F(ls.SamplesPerSecond, "0.00"),
            F(ls.TokensPerSecond, "0.0"), F(ls.WarmupSeconds, "0.000"), $"{ls.PeakDeviceBytes:N0}", Share(ls.PeakDeviceBytes), $"{ls.PeakHostBytes:N0}");
        lines.AddRange(table.Lines());
        lines.Add("");
        lines.Add($"Streamed ÷ resident, small model at each one's largest batch: batch {F(r.BatchRatio, "0.00")}×, samples/s "
            + $"{F(r.SamplesPerSecondRatio, "0.00")}× (one run). At the resident's batch, streamed trains "
            + $"{F(r.Throughput[2].SamplesPerSecond / r.Throughput[0].SamplesPerSecond, "0.00")}× resident's samples/s.");
        lines.Add("");
        lines.Add("## (b) the model 4× the device");
        lines.Add("");
        lines.Add(lr.Fits
            ? $"- resident at 1 row: FITS (unexpected)"
            : $"- resident at 1 row: refused: \"{lr.Refusal}\"; {lr.ReservedAfterBytes:N0} bytes left reserved after the refusal");
        lines.Add($"- streamed ({ls.Policy}) at {ls.Batch} row(s) (tried {Tried(r.Large.StreamedTrials)}): "
            + $"{F(ls.SamplesPerSecond, "0.00")} samples/s, peak device {ls.PeakDeviceBytes:N0} bytes ({Share(ls.PeakDeviceBytes)} % of the device), "
            + $"loss {string.Join(" → ", ls.Losses.Select(x => F(x, "0.0000")))}");
        lines.Add("");
        return string.Join('\n', lines);
    }
}

/// <summary>train.json.</summary>
/// <param name="Steps">Measured steps per variant (after one warm-up step).</param>
/// <param name="DeviceCapacityBytes">The simulated device every step ran on: a quarter of the large model.</param>
/// <param name="Sequence">Tokens per row.</param>
/// <param name="Model">The small model, trained both ways.</param>
/// <param name="Throughput">The small model: resident at its largest batch, streamed at its largest batch, streamed at the resident's.</param>
/// <param name="BatchRatio">The largest streamed batch ÷ the largest resident batch.</param>
/// <param name="SamplesPerSecondRatio">Samples/s, streamed at its largest batch ÷ resident at its largest batch, measured in one run.</param>
public sealed record TrainBenchReport(string Timestamp, MachineInfo Machine, bool Quick, int Steps, long DeviceCapacityBytes, int Sequence,
    string StreamedPolicy, string Search, TrainBenchModel Model, BatchSearch Resident, BatchSearch Streamed, IReadOnlyList<TrainVariant> Throughput,
    double BatchRatio, double SamplesPerSecondRatio, LargeModelRun Large);

/// <summary>A seeded checkpoint of the bench.</summary>
public sealed record TrainBenchModel(string Family, string Dtype, int Layers, int Blocks, int Hidden, int Ffn, int Heads, int KvHeads, int Vocab,
    long ModelBytes, long LargestLayerBytes);

/// <summary>The largest batch that trained under one policy, and every batch tried on the way, in order.</summary>
/// <param name="Capped">The doubling reached <see cref="TrainBench.BatchCap"/> without a refusal.</param>
public sealed record BatchSearch(string Policy, int LargestBatch, bool Capped, IReadOnlyList<BatchTrial> Trials);

/// <summary>One training step tried at <paramref name="Batch"/> rows on a fresh device.</summary>
/// <param name="PeakDeviceBytes">The step's peak (for a refused step, the most the device held before the refusal).</param>
/// <param name="ReservedAfterBytes">Device bytes still reserved once the step ended or was refused: 0 when every byte was freed.</param>
/// <param name="Refusal">The device's out-of-memory message; null when the step fit.</param>
public sealed record BatchTrial(int Batch, bool Fits, long PeakDeviceBytes, long ReservedAfterBytes, string? Refusal);

/// <summary>One measured variant: samples and tokens per second over the measured steps, the warm-up step's time, each measured
/// step's seconds, the peaks over every step and every step's loss (the warm-up's first).</summary>
public sealed record TrainVariant(string Name, string Policy, int Batch, double SamplesPerSecond, double TokensPerSecond, double WarmupSeconds,
    IReadOnlyList<double> StepSeconds, long PeakDeviceBytes, long PeakHostBytes, IReadOnlyList<double> Losses);

/// <summary>The model 4× the device: resident tried at one row, streamed tried from the small model's largest streamed batch down
/// (halving) and measured at the first that fit.</summary>
public sealed record LargeModelRun(TrainBenchModel Model, double ModelOverDevice, BatchTrial Resident, IReadOnlyList<BatchTrial> StreamedTrials,
    TrainVariant Streamed);
