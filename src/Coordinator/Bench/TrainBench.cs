using System.Globalization;
using System.Text.Json.Serialization;
using Akka.Actor;
using Akka.Configuration;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Commands;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;
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
/// train.json. (c) The same under an emulated link, as a user meets a real accelerator: the link is set so that the streamed step's
/// transfers (forward and backward, at the small model's largest streamed batch) take as long as their compute (transfer ÷ compute
/// <see cref="TransferOverCompute"/>, from the compute measured without the link, matched again up to <see cref="Rematches"/> times
/// to the compute measured under it while the ratio met is more than <see cref="RematchTolerance"/> off), and again at
/// <see cref="HarderTransferOverCompute"/>; beside the bench's window, <c>train</c>'s default window (<see cref="DefaultWindow"/>,
/// swap <see cref="DefaultSwap"/>) and <c>train --window auto</c> (<see cref="TrainingPlanner.Choose"/> on the calibrated linked
/// device). Every variant reports its first (cold) step beside its warm median. Figures are measurements: the exit code is 0 unless
/// something failed.</summary>
public static class TrainBench
{
    /// <summary>The streamed window: two layers, one swapped at a time (the next layer loads while one computes).</summary>
    public const int Window = 2, Swap = 1;

    /// <summary><c>train</c>'s default window (<c>--window 3</c>, swap 1): what a user who sets nothing trains with.</summary>
    public const int DefaultWindow = 3, DefaultSwap = 1;

    /// <summary>The streamed step's transfers ÷ their compute under the comparable link, and under the harder one.</summary>
    public const double TransferOverCompute = 1.0, HarderTransferOverCompute = 2.0;

    /// <summary>How far (as a fraction) the ratio the comparable link's runs met may be from its target before the link is matched again.</summary>
    public const double RematchTolerance = 0.15;

    /// <summary>How many times the comparable link is matched again at most (a shared machine's speed drifts).</summary>
    public const int Rematches = 3;

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
                int residentBatch = residentSearch.LargestBatch, streamedBatch = streamedSearch.LargestBatch;
                var measured = await bench.MeasureAsync(steps, null,
                [
                    new(ResidentLargest, "small", smallDir, resident, residentBatch),
                    new(StreamedLargest, "small", smallDir, streamed, streamedBatch),
                    new(StreamedAtResidents, "small", smallDir, streamed, residentBatch),
                ]);

                // (b) The model 4× the device: resident refused at one row, streamed trains.
                var largeResident = await bench.TryAsync(largeDir, resident, 1, null);
                var largeTrials = new List<BatchTrial>();
                int batch = streamedBatch;
                while (batch >= 1)
                {
                    var trial = await bench.TryAsync(largeDir, streamed, batch, null);
                    largeTrials.Add(trial);
                    if (trial.Fits) break;
                    batch /= 2;
                }
                if (batch < 1) throw new InvalidOperationException($"bench: the large model trains streamed at no batch: {largeTrials[^1].Refusal}");
                var largeRun = (await bench.MeasureAsync(steps, null, [new(LargeStreamed, "large", largeDir, streamed, batch)]))[0];

                // (c) Under an emulated link matched to the streamed step's compute: every variant again, the defaults and the plan.
                long bytes = measured[1].BytesTransferred;
                async Task<TrainLinkRun> LinkedAsync(double ratio, double computeSeconds, bool full)
                {
                    double gbps = bytes / (ratio * computeSeconds) / 1e9;
                    log.WriteLine($"train bench: transfer ÷ compute {ratio:0.##}: the streamed step moves {bytes:N0} bytes, computes "
                        + $"{computeSeconds * 1e3:0.0} ms: link {gbps:0.000} GB/s");
                    var asks = new List<VariantAsk>
                    {
                        new(ResidentLargest, "small", smallDir, resident, residentBatch),
                        new(StreamedLargest, "small", smallDir, streamed, streamedBatch),
                    };
                    var plans = new List<TrainPlanChoice>();
                    BatchTrial? refused = null;
                    if (full)
                    {
                        asks.Add(new(StreamedAtResidents, "small", smallDir, streamed, residentBatch));
                        asks.Add(new(DefaultAtResidents, "small", smallDir, new PolicySpec(DefaultWindow, DefaultSwap), residentBatch));
                        foreach (var (name, at) in new[] { (AutoAtStreamed, streamedBatch), (AutoAtResidents, residentBatch) })
                        {
                            var plan = await bench.PlanAsync(name, smallDir, at, gbps);
                            plans.Add(plan);
                            if (plan.Refusal is null) asks.Add(new(name, "small", smallDir, plan.Spec, at));
                        }
                        refused = await bench.TryAsync(largeDir, resident, 1, gbps);
                    }
                    asks.Add(new(LargeStreamed, "large", largeDir, streamed, batch));
                    var variants = await bench.MeasureAsync(steps, gbps, asks);
                    return new TrainLinkRun(ratio, gbps, computeSeconds, bytes, variants[1].TransferOverCompute ?? double.NaN, [], plans, refused,
                        variants);
                }
                var comparable = await LinkedAsync(TransferOverCompute, measured[1].ComputeSeconds, full: true);
                var missed = new List<double>();
                while (Math.Abs(comparable.EffectiveTransferOverCompute / TransferOverCompute - 1) > RematchTolerance && missed.Count < Rematches)
                {
                    // The machine's speed differs between the run the link was matched to and the runs under it (a shared machine's
                    // does, and the link frees the compute of the host copies): match it again to the compute the runs met.
                    missed.Add(comparable.EffectiveTransferOverCompute);
                    log.WriteLine($"train bench: the runs met transfer ÷ compute {comparable.EffectiveTransferOverCompute:0.00}, not "
                        + $"{TransferOverCompute:0.##}: the link is matched again");
                    comparable = await LinkedAsync(TransferOverCompute, comparable.Variants[1].ComputeSeconds, full: true);
                }
                comparable = comparable with { Missed = [.. missed] };
                var harder = await LinkedAsync(HarderTransferOverCompute, comparable.Variants[1].ComputeSeconds, full: false);
                int threads = get_num_threads();

                var report = new TrainBenchReport(started.ToString("O", CultureInfo.InvariantCulture), BenchHarness.Machine(threads), o.Quick, steps,
                    capacity, sequence, $"window {Window}, swap {Swap}", SearchMethod, small, residentSearch, streamedSearch, measured,
                    streamedBatch / (double)residentBatch, measured[1].SamplesPerSecond / measured[0].SamplesPerSecond,
                    new LargeModelRun(large, large.ModelBytes / (double)capacity, largeResident, largeTrials, largeRun))
                {
                    RematchTolerance = RematchTolerance, Comparable = comparable, Harder = harder,
                };
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

    /// <summary>The variants' names (the same variant under each link has the same name).</summary>
    public const string ResidentLargest = "resident, largest batch", StreamedLargest = "streamed, largest batch",
        StreamedAtResidents = "streamed, resident's batch", DefaultAtResidents = "train's default, resident's batch",
        AutoAtStreamed = "window auto, streamed's largest batch", AutoAtResidents = "window auto, resident's batch", LargeStreamed = "large, streamed";

    /// <summary>One variant to measure: its name, which checkpoint ("small" or "large") in which folder, the policy and the batch.</summary>
    sealed record VariantAsk(string Name, string Model, string Dir, PolicySpec Policy, int Batch);

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
                var t = await TryAsync(dir, policy, batch, null);
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
        public async Task<BatchTrial> TryAsync(string dir, PolicySpec policy, int batch, double? linkGBps)
        {
            await using var rig = await Rig.StartAsync(system, dir, batch, sequence, capacity, linkGBps, policy, askTimeout, $"tbench-{_rigs++}");
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

        /// <summary>Each variant on a fresh device (with the emulated link <paramref name="linkGBps"/>, or none), all at once: a warm-up
        /// step each, then <paramref name="steps"/> rounds of one step per variant, so that a machine whose speed drifts slows every
        /// variant alike.</summary>
        public async Task<IReadOnlyList<TrainVariant>> MeasureAsync(int steps, double? linkGBps, IReadOnlyList<VariantAsk> variants)
        {
            var rigs = new List<Rig>();
            try
            {
                foreach (var v in variants)
                    rigs.Add(await Rig.StartAsync(system, v.Dir, v.Batch, sequence, capacity, linkGBps, v.Policy, askTimeout, $"tbench-{_rigs++}"));
                var reports = variants.Select(_ => new List<TrainingStepReport>()).ToArray();
                for (int step = 0; step <= steps; step++)
                    for (int i = 0; i < rigs.Count; i++)
                    {
                        cancel.ThrowIfCancellationRequested();
                        using var ids = Ids(rigs[i].Model, variants[i].Batch, sequence, step);
                        reports[i].Add(await rigs[i].Session.StepAsync(step, ids));
                    }
                var result = variants.Select((v, i) => Variant(v, linkGBps, reports[i])).ToArray();
                foreach (var r in result)
                    log.WriteLine($"train bench: {r.Name} ({r.Policy}, batch {r.Batch}{(linkGBps is { } g ? $", link {g:0.000} GB/s" : "")}): "
                        + $"{r.SamplesPerSecond:0.00} samples/s, cold step {r.WarmupSeconds:0.000} s, warm median {r.WarmMedianSeconds:0.000} s, "
                        + $"peak {r.PeakDeviceBytes:N0} bytes" + (r.TransferOverCompute is { } x ? $", transfer ÷ compute {x:0.00}" : ""));
                return result;
            }
            finally
            {
                foreach (var r in rigs) await r.DisposeAsync();
            }
        }

        /// <summary>What <c>train --window auto</c> plans for <paramref name="batch"/> rows: the device of the bench's capacity and
        /// link measured as <c>train</c> measures it (<see cref="DeviceCalibration"/>), then <see cref="TrainingPlanner.Choose"/>.</summary>
        public async Task<TrainPlanChoice> PlanAsync(string name, string dir, int batch, double linkGBps)
        {
            using var device = new SimulatedDevice($"sim:tbench-{_rigs++}", capacity, linkGBps);
            var cost = (await DeviceCalibration.MeasureAsync(device)).Validated();
            var model = ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, batch, sequence, 0));
            try
            {
                var plan = TrainingPlanner.Choose(model, 1, cost);
                log.WriteLine($"train bench: {name}: planned window {plan.Window}, swap {plan.Swap} (predicted peak {plan.PeakBytes:N0} bytes, "
                    + $"step {plan.StepSeconds:0.000} s; {cost.FlopsPerSecond / 1e9:0.00} GFLOP/s calibrated)");
                return new TrainPlanChoice(name, batch, Describe(plan.Policy), plan.Policy.Window is null, plan.Window, plan.Swap, plan.PeakBytes,
                    plan.StepSeconds, cost.LinkBytesPerSecond / 1e9, cost.FlopsPerSecond / 1e9, null);
            }
            catch (FieldException e)
            {
                log.WriteLine($"train bench: {name}: the planner refused: {e.Message}");
                return new TrainPlanChoice(name, batch, null, false, 0, 0, 0, 0, cost.LinkBytesPerSecond / 1e9, cost.FlopsPerSecond / 1e9, e.Message);
            }
        }

        /// <summary>A variant's figures: samples and tokens per second over the measured steps, the warm-up (cold) step beside the
        /// measured steps' median, and the medians of their compute, transfer time and bytes moved.</summary>
        static TrainVariant Variant(VariantAsk v, double? linkGBps, List<TrainingStepReport> steps)
        {
            var measured = steps.Skip(1).ToArray();
            double seconds = measured.Sum(s => s.Seconds);
            double compute = Stats.Median(measured.Select(s => s.ComputeSeconds));
            long bytes = (long)Stats.Median(measured.Select(s => (double)s.BytesTransferred));
            double? met = linkGBps is { } g && compute > 0 ? bytes / (g * 1e9) / compute : null;
            return new TrainVariant(v.Name, Describe(v.Policy), v.Batch, v.Batch * measured.Length / seconds, measured.Sum(s => s.Tokens) / seconds,
                steps[0].Seconds, [.. measured.Select(s => s.Seconds)], steps.Max(s => s.PeakDeviceBytes), steps.Max(s => s.PeakHostBytes),
                [.. steps.Select(s => s.Loss)])
            {
                Model = v.Model, WarmMedianSeconds = Stats.Median(measured.Select(s => s.Seconds)), ComputeSeconds = compute,
                TransferSeconds = Stats.Median(measured.Select(s => s.TransferSeconds)), BytesTransferred = bytes, LinkGBps = linkGBps,
                TransferOverCompute = met,
            };
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

        public static async Task<Rig> StartAsync(ActorSystem system, string dir, int batch, int sequence, long capacity, double? linkGBps,
            PolicySpec policy, TimeSpan askTimeout, string name)
        {
            var model = ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, batch, sequence, 0));
            var device = new SimulatedDevice($"sim:{name}", capacity, linkGBps);
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
            $"Device: simulated, {r.DeviceCapacityBytes:N0} bytes (a quarter of the large model); (a) and (b) without link emulation "
                + "(transfers are host copies: the easy case), (c) under an emulated link. "
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
        lines.Add($"Each variant: a fresh device, a warm-up step, then {r.Steps} measured step(s), in rounds of one step per variant. "
            + "\"cold step\" is the warm-up: the first step of fresh layer actors on a fresh device (their master copies and optimizer state "
            + "new, no device byte held), in a process whose libtorch earlier variants warmed; \"warm median\" the measured steps' median.");
        lines.Add("");
        var table = new MarkdownTable("variant", "model", "policy", "batch>", "samples/s>", "tokens/s>", "cold step s>", "warm median s>",
            "peak device bytes>", "% of device>", "peak host bytes>");
        string Model(string model) => model == "large" ? $"large ({F(r.Large.ModelOverDevice, "0.0")}×)" : "small";
        foreach (var v in r.Throughput)
            table.Row(v.Name, "small", v.Policy, $"{v.Batch}", F(v.SamplesPerSecond, "0.00"), F(v.TokensPerSecond, "0.0"), F(v.WarmupSeconds, "0.000"),
                F(v.WarmMedianSeconds, "0.000"), $"{v.PeakDeviceBytes:N0}", Share(v.PeakDeviceBytes), $"{v.PeakHostBytes:N0}");
        var lr = r.Large.Resident;
        table.Row("large, resident", Model("large"), "resident (window all)", $"{lr.Batch}",
            lr.Fits ? "fits?" : "refused", "", "", "", $"{lr.PeakDeviceBytes:N0}", Share(lr.PeakDeviceBytes), "");
        var ls = r.Large.Streamed;
        table.Row(ls.Name, Model("large"), ls.Policy, $"{ls.Batch}", F(ls.SamplesPerSecond, "0.00"), F(ls.TokensPerSecond, "0.0"),
            F(ls.WarmupSeconds, "0.000"), F(ls.WarmMedianSeconds, "0.000"), $"{ls.PeakDeviceBytes:N0}", Share(ls.PeakDeviceBytes), $"{ls.PeakHostBytes:N0}");
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
        lines.Add("## (c) under an emulated link: what a user meets on an accelerator");
        lines.Add("");
        var c = r.Comparable;
        lines.Add($"The link is set from the streamed step at its largest batch ({F(c.MatchedBytes / 1e6, "0.00")} MB moved per step, forward and "
            + "backward): its bytes at the link's rate take the given multiple of the step's compute (its layers' compute seconds summed, a warm "
            + "median). The first link is matched to the compute measured without a link; "
            + (c.Missed.Count == 0
                ? $"the runs under it met {F(c.EffectiveTransferOverCompute, "0.00")}, within ±{F(r.RematchTolerance * 100, "0")} %."
                : $"the runs under it met {string.Join(", then ", c.Missed.Select(x => F(x, "0.00")))}, more than ±{F(r.RematchTolerance * 100, "0")} % "
                    + $"off, so it was matched again to the compute they met, and the last runs met {F(c.EffectiveTransferOverCompute, "0.00")}.")
            + $" The harder link is set to {F(r.Harder.TransferOverCompute, "0.##")}× from the comparable runs' compute (not matched again). "
            + "\"transfer ÷ compute met\" is each variant's own (its warm step's bytes at the link's rate ÷ its compute): resident training moves "
            + "its weights every step too (they change after each), once: its backward pass reuses what its forward pass left on the device.");
        lines.Add("");
        foreach (var link in new[] { r.Comparable, r.Harder })
        {
            lines.Add($"### transfer ÷ compute {F(link.TransferOverCompute, "0.##")} (met: {F(link.EffectiveTransferOverCompute, "0.00")}), link "
                + $"{F(link.LinkGBps, "0.000")} GB/s");
            lines.Add("");
            foreach (var p in link.Plans)
                lines.Add(p.Refusal is null
                    ? $"- `train --window auto` at {p.Batch} rows: planned {p.Policy}{(p.Resident ? $" (k = k' = {p.Window})" : "")}; predicted peak "
                        + $"{p.PredictedPeakDeviceBytes:N0} bytes ({Share(p.PredictedPeakDeviceBytes)} %), step {F(p.PredictedStepSeconds, "0.000")} s; "
                        + $"calibrated {F(p.CalibratedGflops, "0.0")} GFLOP/s, link {F(p.CalibratedLinkGBps, "0.000")} GB/s"
                    : $"- `train --window auto` at {p.Batch} rows: refused: \"{p.Refusal}\"");
            if (link.LargeResident is { } refused)
                lines.Add(refused.Fits ? "- large, resident at 1 row: FITS (unexpected)"
                    : $"- large, resident at 1 row: refused; {refused.ReservedAfterBytes:N0} bytes left reserved after the refusal");
            if (link.Plans.Count > 0 || link.LargeResident is not null) lines.Add("");
            var linked = new MarkdownTable("variant", "model", "policy", "batch>", "samples/s>", "tokens/s>", "cold step s>", "warm median s>",
                "compute s>", "transfer ÷ compute met>", "MB moved>", "peak device bytes>", "% of device>");
            foreach (var v in link.Variants)
                linked.Row(v.Name, Model(v.Model), v.Policy, $"{v.Batch}", F(v.SamplesPerSecond, "0.00"), F(v.TokensPerSecond, "0.0"),
                    F(v.WarmupSeconds, "0.000"), F(v.WarmMedianSeconds, "0.000"), F(v.ComputeSeconds, "0.000"), F(v.TransferOverCompute ?? double.NaN, "0.00"),
                    F(v.BytesTransferred / 1e6, "0.00"), $"{v.PeakDeviceBytes:N0}", Share(v.PeakDeviceBytes));
            lines.AddRange(linked.Lines());
            lines.Add("");
            lines.Add($"Streamed ÷ resident at each one's largest batch: samples/s {F(link.SamplesPerSecondRatio, "0.00")}× (one run).");
            lines.Add("");
        }
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
/// <param name="Large">The model 4× the device, without link emulation.</param>
public sealed record TrainBenchReport(string Timestamp, MachineInfo Machine, bool Quick, int Steps, long DeviceCapacityBytes, int Sequence,
    string StreamedPolicy, string Search, TrainBenchModel Model, BatchSearch Resident, BatchSearch Streamed, IReadOnlyList<TrainVariant> Throughput,
    double BatchRatio, double SamplesPerSecondRatio, LargeModelRun Large)
{
    /// <summary>How far (as a fraction) the comparable link's ratio met may be from its target (<see cref="TrainBench.RematchTolerance"/>).</summary>
    public double RematchTolerance { get; init; }

    /// <summary>Every variant under the link matched to transfer ÷ compute <see cref="TrainBench.TransferOverCompute"/>, with
    /// <c>train</c>'s default window and <c>train --window auto</c>.</summary>
    public required TrainLinkRun Comparable { get; init; }

    /// <summary>Resident and streamed at their largest batches and the 4× model under the harder link
    /// (<see cref="TrainBench.HarderTransferOverCompute"/>).</summary>
    public required TrainLinkRun Harder { get; init; }
}

/// <summary>The variants measured under one emulated link, in one run.</summary>
/// <param name="TransferOverCompute">The target: the streamed step's transfers (its bytes at the link's rate) ÷ their compute.</param>
/// <param name="MatchedComputeSeconds">The streamed step's compute (summed over its layers, forward and backward; a warm median) the
/// link was matched to: measured without the link, or, after a miss, under the previous link.</param>
/// <param name="MatchedBytes">The bytes the streamed step moves (forward and backward).</param>
/// <param name="EffectiveTransferOverCompute">What the streamed step met: its bytes at the link's rate ÷ its compute measured under
/// the link (a warm median).</param>
/// <param name="Missed">The ratios met by earlier runs that were more than the tolerance off, each followed by a match again.</param>
/// <param name="Plans">What <c>train --window auto</c> planned at each batch (the comparable link only).</param>
/// <param name="LargeResident">The 4× model tried resident at one row under this link (the comparable link only).</param>
public sealed record TrainLinkRun(double TransferOverCompute, double LinkGBps, double MatchedComputeSeconds, long MatchedBytes,
    double EffectiveTransferOverCompute, IReadOnlyList<double> Missed, IReadOnlyList<TrainPlanChoice> Plans, BatchTrial? LargeResident,
    IReadOnlyList<TrainVariant> Variants)
{
    /// <summary>Samples/s, streamed at its largest batch ÷ resident at its largest batch, measured in this run.</summary>
    public double SamplesPerSecondRatio => Of(TrainBench.StreamedLargest).SamplesPerSecond / Of(TrainBench.ResidentLargest).SamplesPerSecond;

    TrainVariant Of(string name) => Variants.Single(v => v.Name == name);
}

/// <summary>What <c>train --window auto</c> chose for the small model at <paramref name="Batch"/> rows on the bench's device under
/// the link, calibrated as <c>train</c> calibrates it.</summary>
/// <param name="Policy">The chosen window, as the variants name theirs; null when the planner refused.</param>
/// <param name="Resident">The plan is window all.</param>
/// <param name="PredictedStepSeconds">The planner's simulated seconds of the step's two passes.</param>
/// <param name="Refusal">The planner's refusal (no window fits); null when it planned.</param>
public sealed record TrainPlanChoice(string Variant, int Batch, string? Policy, bool Resident, int Window, int Swap, long PredictedPeakDeviceBytes,
    double PredictedStepSeconds, double CalibratedLinkGBps, double CalibratedGflops, string? Refusal)
{
    /// <summary>The plan as a window to train with.</summary>
    [JsonIgnore] public PolicySpec Spec => Resident ? PolicySpec.Resident : new PolicySpec(Window, Swap);
}

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
/// <param name="WarmupSeconds">The first (cold) step on the variant's fresh device.</param>
public sealed record TrainVariant(string Name, string Policy, int Batch, double SamplesPerSecond, double TokensPerSecond, double WarmupSeconds,
    IReadOnlyList<double> StepSeconds, long PeakDeviceBytes, long PeakHostBytes, IReadOnlyList<double> Losses)
{
    /// <summary>"small" or "large".</summary>
    public string Model { get; init; } = "small";

    /// <summary>The median of the measured (warm) steps' seconds.</summary>
    public double WarmMedianSeconds { get; init; }

    /// <summary>A warm step's compute: its two passes' layers' compute seconds summed (the median over the measured steps).</summary>
    public double ComputeSeconds { get; init; }

    /// <summary>A warm step's layer loads: their seconds summed over both passes (the median; they overlap compute when streamed).</summary>
    public double TransferSeconds { get; init; }

    /// <summary>Bytes a warm step moved to the device (the median).</summary>
    public long BytesTransferred { get; init; }

    /// <summary>The emulated link; null: none (transfers are host copies).</summary>
    public double? LinkGBps { get; init; }

    /// <summary>The transfer ÷ compute this variant met: <see cref="BytesTransferred"/> at the link's rate ÷ <see cref="ComputeSeconds"/>;
    /// null without a link.</summary>
    public double? TransferOverCompute { get; init; }
}

/// <summary>The model 4× the device: resident tried at one row, streamed tried from the small model's largest streamed batch down
/// (halving) and measured at the first that fit.</summary>
public sealed record LargeModelRun(TrainBenchModel Model, double ModelOverDevice, BatchTrial Resident, IReadOnlyList<BatchTrial> StreamedTrials,
    TrainVariant Streamed);
