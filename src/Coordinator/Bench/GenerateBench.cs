using System.Globalization;
using System.Security.Cryptography;
using Akka.Actor;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Commands;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Generation;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;
using Superpipeline.Workers;
using WorkerKv = Superpipeline.Workers.KvPlacement;

namespace Superpipeline.Coordinator.Bench;

/// <summary>What <c>superpipeline bench --generate</c> was asked to do, already parsed.</summary>
/// <param name="OutDir">Folder for generate.md and generate.json (created if missing).</param>
/// <param name="Quick">A small checkpoint, a prompt of 4, 6 new tokens and one warm repeat: a smoke run the tests use.</param>
/// <param name="Repeats">Warm generations per variant after the cold one; null for the default (3, or 1 with <paramref name="Quick"/>).</param>
/// <param name="TransferOverCompute">The emulated link is set so that streaming every layer once takes this multiple of a resident
/// decode pass's compute (measured first, without link emulation).</param>
/// <param name="HarderTransferOverCompute">The same for the second, transfer-bound link (synchronous and planned only).</param>
/// <param name="ComputeThreads">Threads libtorch computes with on each simulated device (null: libtorch's default, every core).
/// One by default: the simulated accelerator computes on one core and the host side (actors, stream, loader) has the other,
/// as a real accelerator leaves the host's cores to the host.</param>
public sealed record GenerateBenchOptions(string OutDir = "bench-results", bool Quick = false, int? Repeats = null,
    double TransferOverCompute = GenerateBench.DefaultTransferOverCompute, double HarderTransferOverCompute = GenerateBench.DefaultHarderTransferOverCompute,
    int? ComputeThreads = 1);

/// <summary><c>superpipeline bench --generate</c> (issue 8, point 10): a seeded Llama checkpoint (F32) four times the simulated device
/// generates 32 new tokens for a batch of 8 under link emulation, in one run: (a) resident on a device big enough (the reference
/// tokens and peak), (b) synchronous k = k' = 1, (c) the window and pins <see cref="Planner.ChooseForGeneration"/> plans from this
/// run's measured compute rate and link, (d) the plan with the disk tier at a host memory of a quarter of the model; then (b) and (c)
/// again under a harder (transfer-bound) link. Each variant runs on a fresh <see cref="GenerationStage"/> and device: a cold
/// generation, then warm repeats whose medians give the ratios. It writes generate.md and generate.json. A missed goal is a
/// measurement, not an error: the exit code is 0 unless something failed.
/// <para>F32 rather than BF16: the device computes in float32, so an F32 checkpoint's stored, moved, host and device bytes are one
/// figure, and "4× the device", "30 % of resident" and "a quarter of the model" mean one thing each (BF16 moves half the bytes and
/// is widened on the device, so the model is 2× the device in one measure and 4× in the other).</para></summary>
public static class GenerateBench
{
    /// <summary>Goals, as issue 8 states them.</summary>
    public const double SpeedupGoal = 1.8, PeakOfResidentGoal = 0.30;

    /// <summary>Streaming every layer once ÷ a resident decode pass's compute: comparable.</summary>
    public const double DefaultTransferOverCompute = 1.0;

    /// <summary>The harder link: the transfer takes twice the compute.</summary>
    public const double DefaultHarderTransferOverCompute = 2.0;

    public const int Batch = 8;

    /// <summary>How far (as a fraction) the ratio the comparable runs met may be from its target before the link is matched again.</summary>
    public const double RematchTolerance = 0.15;

    /// <summary>The full checkpoint: 16 blocks + embeddings + head = 18 layers, about 189 MB in F32; blocks dominate.</summary>
    public static LlamaConfig FullModel { get; } = new(Hidden: 512, Ffn: 1408, Layers: 16, Heads: 8, KvHeads: 2, RmsNormEps: 1e-5,
        RopeTheta: 10000.0, Vocab: 2048, MaxPositions: 128, TieWordEmbeddings: false);

    /// <summary>The quick checkpoint: 8 blocks + embeddings + head = 10 layers, about 12 MB; wide enough that a block outweighs the
    /// activations of a batch of 8 (a quarter of the model holds one block with them).</summary>
    public static LlamaConfig QuickModel { get; } = new(Hidden: 192, Ffn: 512, Layers: 8, Heads: 4, KvHeads: 1, RmsNormEps: 1e-5,
        RopeTheta: 10000.0, Vocab: 128, MaxPositions: 64, TieWordEmbeddings: false);

    public static async Task<int> RunAsync(GenerateBenchOptions o, TextWriter output, CancellationToken cancel, TextWriter? log = null)
    {
        // libtorch's thread count may be process-wide: whatever the devices were set to, the process gets its own back.
        int threadsBefore = TorchSharp.torch.get_num_threads();
        try
        {
            return await RunCoreAsync(o, output, cancel, log).ConfigureAwait(false);
        }
        finally
        {
            TorchSharp.torch.set_num_threads(threadsBefore);
        }
    }

    static async Task<int> RunCoreAsync(GenerateBenchOptions o, TextWriter output, CancellationToken cancel, TextWriter? log)
    {
        log ??= TextWriter.Null;
        int repeats = Stats.Repeats(o.Repeats, o.Quick ? 1 : 3);
        foreach (var ratio in new[] { o.TransferOverCompute, o.HarderTransferOverCompute })
            if (!(ratio > 0) || double.IsInfinity(ratio)) throw new ArgumentException($"the transfer ÷ compute ratio must be a positive number; got {ratio}");
        var files = ReportWriter.Prepare(o.OutDir, "generate");
        var started = DateTimeOffset.UtcNow;
        var config = o.Quick ? QuickModel : FullModel;
        int prompt = o.Quick ? 4 : 16, newTokens = o.Quick ? 6 : 32;
        const long seed = 1;

        string dir = Directory.CreateTempSubdirectory("superpipeline-gbench-").FullName;
        try
        {
            ExportDemoCommand.Export("llama", "f32", dir, seed, shards: 2, () => config);
            var model = ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, Batch, prompt, seed));
            var prompts = Prompts(config.Vocab, prompt, seed);
            var shape = new GenerationShape(Batch, prompt, newTokens, Superpipeline.Engine.Simulation.KvPlacement.Device);
            var costs = GenerationCosts.Of(model, shape);
            long modelBytes = model.Bytes;
            long storedBytes;
            using (var checkpoint = new CheckpointWeights(dir)) storedBytes = model.Layers.Sum(checkpoint.StoredBytes);
            long offloadedCapacity = modelBytes / 4;
            const long mib = 1L << 20;
            long residentCapacity = ((modelBytes + costs.TotalKvBytes + costs.ActivationBoundBytes) * 5 / 4 + mib - 1) / mib * mib;
            long hostBudget = storedBytes / 4;
            var request = new GenerationRequest(newTokens, new SamplingSettings());
            log.WriteLine($"generate bench: {(o.Quick ? "quick, " : "")}Llama F32 of {model.Layers.Count} layers, {modelBytes:N0} bytes; batch {Batch}, "
                + $"prompt {prompt}, {newTokens} new tokens; offloaded device {offloadedCapacity:N0} bytes, resident {residentCapacity:N0}; "
                + $"KV {costs.TotalKvBytes:N0} bytes on the device; {repeats} warm repeat(s)");

            var system = ActorSystem.Create("gbench", WorkerConfig.Load(null));
            try
            {
                var settings = SuperpipelineSettings.Create(system.Settings.Config);
                var run = new Runner(system, settings, model, dir, prompts, request, repeats, log, cancel) { ComputeThreads = o.ComputeThreads };

                // 1. Compute first: a resident generation without link emulation; its warm decode passes move no weights.
                var calibrating = run.Start("calibration (resident, no link)", PolicySpec.Resident, residentCapacity, null, null);
                var calibration = (await run.InterleavedAsync([calibrating]))[0];
                double decodeSeconds = Batch / calibration.DecodeTokensPerSecond;
                double flopsPerSecond = costs.Decode.Flops / decodeSeconds;
                double LinkFor(double ratio) => modelBytes / (ratio * decodeSeconds);
                log.WriteLine($"generate bench: a resident decode pass computes in {decodeSeconds * 1e3:0.00} ms ({flopsPerSecond / 1e9:0.00} GFLOP/s)");

                async Task<LinkRun> LinkAsync(double ratio, bool full)
                {
                    double link = LinkFor(ratio);
                    var device = new DeviceCost("sim (calibrated)", offloadedCapacity, link, flopsPerSecond).Validated();
                    var plan = Planner.ChooseForGeneration(model, device, shape);
                    log.WriteLine($"generate bench: transfer ÷ compute {ratio:0.##}: link {link / 1e9:0.000} GB/s; plan {plan.Policy} "
                        + $"(predicted {plan.Best.DecodeTokensPerSecond:0.0} tokens/s, {plan.SpeedupOverSynchronous:0.00}× synchronous; {plan.Simulated} "
                        + "simulated)");
                    var asked = new List<(string Name, PolicySpec Spec, long Capacity, long? HostBudget)>();
                    if (full) asked.Add(("resident", PolicySpec.Resident, residentCapacity, null));
                    asked.Add(("synchronous", new PolicySpec(1, 1), offloadedCapacity, null));
                    asked.Add(("planned", plan.Policy, offloadedCapacity, null));
                    if (full) asked.Add(("planned, disk tier", plan.Policy, offloadedCapacity, hostBudget));
                    var variants = await run.InterleavedAsync([.. asked.Select(a => run.Start(a.Name, a.Spec, a.Capacity, link, a.HostBudget))]);
                    return new LinkRun(ratio, link / 1e9, ratio, plan.Policy.ToString(), plan.Best.DecodeTokensPerSecond,
                        plan.Synchronous.DecodeTokensPerSecond, plan.Best.PeakDeviceBytes, variants);
                }
                // The ratio the runs met: the link's time for every layer ÷ the warm resident decode pass measured beside them.
                double residentDecode = 0;
                LinkRun Met(LinkRun r)
                {
                    residentDecode = Batch / r.Variants.Single(v => v.Name == "resident").DecodeTokensPerSecond;
                    return r with { EffectiveTransferOverCompute = modelBytes / (r.LinkGBps * 1e9) / residentDecode };
                }
                var comparable = Met(await LinkAsync(o.TransferOverCompute, full: true));
                double? firstMet = null;
                if (Math.Abs(comparable.EffectiveTransferOverCompute / o.TransferOverCompute - 1) > RematchTolerance)
                {
                    // The machine's speed drifted between the calibration and the runs (a shared machine does): match the link again to
                    // the resident decode pass the runs met, and run the variants again, once.
                    firstMet = comparable.EffectiveTransferOverCompute;
                    decodeSeconds = residentDecode;
                    flopsPerSecond = costs.Decode.Flops / decodeSeconds;
                    log.WriteLine($"generate bench: the runs met transfer ÷ compute {firstMet:0.00}, not {o.TransferOverCompute:0.##}: link matched again to "
                        + $"a resident decode pass of {decodeSeconds * 1e3:0.00} ms");
                    comparable = Met(await LinkAsync(o.TransferOverCompute, full: true));
                }
                var harder = await LinkAsync(o.HarderTransferOverCompute, full: false);
                harder = harder with { EffectiveTransferOverCompute = modelBytes / (harder.LinkGBps * 1e9) / residentDecode };
                int threads = await run.TorchThreadsAsync();

                var report = Report(started, threads, o.Quick, repeats, config, model, prompt, newTokens, storedBytes, offloadedCapacity, residentCapacity,
                    hostBudget, costs.TotalKvBytes, decodeSeconds, flopsPerSecond, calibration, comparable, harder, firstMet);
                await ReportWriter.WriteAsync(files, Markdown(report), report, output, cancel);
            }
            finally
            {
                await system.Terminate();
            }
        }
        finally
        {
            try { Directory.Delete(dir, recursive: true); }
            catch (IOException) { /* a temporary folder left behind is harmless */ }
        }
        return 0;
    }

    /// <summary>Seeded prompts: <see cref="Batch"/> rows of <paramref name="length"/> ids in [0, vocab).</summary>
    static long[][] Prompts(int vocab, int length, long seed)
    {
        var random = new Random((int)seed);
        return [.. Enumerable.Range(0, Batch).Select(_ => Enumerable.Range(0, length).Select(_ => (long)random.Next(vocab)).ToArray())];
    }

    /// <summary>Runs variants, each on a fresh simulated device and <see cref="GenerationStage"/>: every variant's cold generation,
    /// then rounds of one warm generation per variant, so that a machine whose speed drifts during the run (a shared 2-core machine
    /// does) slows every variant alike.</summary>
    sealed class Runner(ActorSystem system, SuperpipelineSettings settings, LayeredModel model, string dir, long[][] prompts,
        GenerationRequest request, int repeats, TextWriter log, CancellationToken cancel)
    {
        int _stages;

        ActorSystem System { get; } = system;
        SuperpipelineSettings Settings { get; } = settings;
        LayeredModel Model { get; } = model;
        string Dir { get; } = dir;
        long[][] Prompts { get; } = prompts;
        GenerationRequest Request { get; } = request;
        CancellationToken Cancel { get; } = cancel;
        public int? ComputeThreads { get; init; }

        /// <summary>A simulated device for a variant, computing with <see cref="ComputeThreads"/> threads.</summary>
        public Accelerator Device(long capacity, double? linkBytesPerSecond)
        {
            var device = DeviceFactory.Create(new DeviceSpec(DeviceKind.Sim, capacity, linkBytesPerSecond / 1e9));
            if (ComputeThreads is { } n) device.OnComputeThread(() => { TorchSharp.torch.set_num_threads(n); return 0; }).Wait();
            return device;
        }

        public VariantRun Start(string name, PolicySpec spec, long capacity, double? linkBytesPerSecond, long? hostBudget) =>
            new(this, name, spec, capacity, linkBytesPerSecond, hostBudget, $"gbench-{_stages++}");

        public async Task<IReadOnlyList<GenerateVariant>> InterleavedAsync(IReadOnlyList<VariantRun> runs)
        {
            try
            {
                for (int round = 0; round <= repeats; round++)
                    foreach (var r in runs) await r.GenerateAsync();
                var results = runs.Select(r => r.Result()).ToArray();
                foreach (var v in results)
                    log.WriteLine($"generate bench: {v.Name} ({v.Policy}): cold {v.ColdDecodeTokensPerSecond:0.0} tokens/s, "
                        + $"warm {v.DecodeTokensPerSecond:0.0} (TTFT {v.TimeToFirstTokenSeconds * 1e3:0.0} ms); "
                        + $"peak {v.PeakDeviceBytes:N0} of {v.DeviceCapacityBytes:N0}; sha {v.TokensSha256[..12]}");
                return results;
            }
            finally
            {
                foreach (var r in runs) await r.StopAsync();
            }
        }

        /// <summary>One variant's device, weights and stage, and its generations so far (the first is the cold one).</summary>
        public sealed class VariantRun
        {
            readonly Runner _runner;
            readonly string _name;
            readonly PolicySpec _spec;
            readonly OffloadPolicy _policy;
            readonly long _capacity;
            readonly double? _link;
            readonly Accelerator _device;
            readonly HostWeightBudget? _budget;
            readonly CheckpointWeights _checkpoint;
            readonly GenerationStage _stage;
            readonly List<Superpipeline.Workers.GenerationResult> _runs = [];

            public VariantRun(Runner runner, string name, PolicySpec spec, long capacity, double? linkBytesPerSecond, long? hostBudget, string stageName)
            {
                _runner = runner;
                (_name, _spec, _capacity, _link) = (name, spec, capacity, linkBytesPerSecond);
                _policy = OffloadPolicy.For(spec, runner.Model.Layers.Count);
                _device = runner.Device(capacity, linkBytesPerSecond);
                _budget = hostBudget is { } b ? new HostWeightBudget(b) : null;
                _checkpoint = new CheckpointWeights(runner.Dir);
                IWeightSource weights = _budget is null ? _checkpoint : new DiskTierWeights(runner.Dir, _budget);
                _stage = GenerationStage.Start(runner.System, _device, runner.Model, weights, runner.Settings.AskTimeout, stageName);
            }

            public async Task GenerateAsync()
            {
                _runner.Cancel.ThrowIfCancellationRequested();
                var options = new GenerationOptions(_runner.Request, _policy, WorkerKv.Device);
                _runs.Add(await _stage.GenerateAsync(_runner.Prompts, options, _runner.Settings.PassTimeout, cancel: _runner.Cancel));
            }

            public GenerateVariant Result()
            {
                var cold = _runs[0].Report;
                var warm = _runs.Skip(1).Select(r => r.Report).ToArray();
                var shas = _runs.Select(r => Sha(r.Tokens)).Distinct().ToArray();
                var model = _runner.Model;
                long hostPeak = _budget?.Peak ?? model.Layers.Sum(_checkpoint.StoredBytes);
                return new GenerateVariant(_name, _spec.ToString(), _policy.IsResident ? "all" : $"{_policy.Window}",
                    _policy.IsResident ? "all" : $"{_policy.Swap}", _policy.IsResident ? model.Layers.Count : _policy.Pinned, _capacity, _link / 1e9,
                    cold.TimeToFirstTokenSeconds, cold.DecodeTokensPerSecond, cold.BytesTransferred, cold.WallSeconds,
                    Stats.Median(warm.Select(r => r.TimeToFirstTokenSeconds)), Stats.Median(warm.Select(r => r.DecodeTokensPerSecond)),
                    [.. warm.Select(r => r.DecodeTokensPerSecond)], Stats.Median(warm.Select(r => (double)r.BytesTransferred)),
                    _runs.Max(r => r.Report.PeakDeviceBytes), cold.KvBytes, hostPeak, _budget?.Capacity,
                    shas.Length == 1 ? shas[0] : "differs");
            }

            /// <summary>Stops the stage's actors and waits for them (they free their device bytes), then frees the device.</summary>
            public async Task StopAsync()
            {
                var timeout = _runner.Settings.AskTimeout;
                try { await Task.WhenAll(_stage.Layers.Append(_stage.Loader).Select(a => a.GracefulStop(timeout))); }
                catch (TaskCanceledException) { /* an actor that did not stop in time is stopped with the system */ }
                _checkpoint.Dispose();
                _device.Dispose();
            }
        }

        public Task<int> TorchThreadsAsync()
        {
            using var device = Device(1L << 20, null);
            return device.OnComputeThread(TorchSharp.torch.get_num_threads);
        }
    }

    static string Sha(long[,] tokens)
    {
        var bytes = new byte[tokens.Length * sizeof(long)];
        Buffer.BlockCopy(tokens, 0, bytes, 0, bytes.Length);
        return Convert.ToHexStringLower(SHA256.HashData(bytes));
    }

    static GenerateBenchReport Report(DateTimeOffset started, int threads, bool quick, int repeats, LlamaConfig config, LayeredModel model, int prompt,
        int newTokens, long storedBytes, long offloadedCapacity, long residentCapacity, long hostBudget, long kvBytes, double decodeSeconds,
        double flopsPerSecond, GenerateVariant calibration, LinkRun comparable, LinkRun harder, double? firstMet)
    {
        GenerateVariant Of(string name) => comparable.Variants.Single(v => v.Name == name);
        var (resident, sync, planned, disk) = (Of("resident"), Of("synchronous"), Of("planned"), Of("planned, disk tier"));
        double speedup = planned.DecodeTokensPerSecond / sync.DecodeTokensPerSecond;
        double peakShare = planned.PeakDeviceBytes / (double)resident.PeakDeviceBytes;
        bool tokensEqual = comparable.Variants.Concat(harder.Variants).Append(calibration).All(v => v.TokensSha256 == resident.TokensSha256)
            && resident.TokensSha256 != "differs";
        var goals = new[]
        {
            new GenerateGoal("decode tokens/s, planned ÷ synchronous", $"≥ {SpeedupGoal:0.0#}×", $"{speedup:0.00}×", speedup >= SpeedupGoal),
            new GenerateGoal("peak device bytes, planned ÷ resident", $"≤ {PeakOfResidentGoal:P0}", $"{peakShare:P1}", peakShare <= PeakOfResidentGoal),
            new GenerateGoal("disk tier at a quarter of the model: tokens equal resident, peak host weight bytes within the budget",
                $"equal, ≤ {hostBudget:N0}", $"{(disk.TokensSha256 == resident.TokensSha256 ? "equal" : "DIFFER")}, {disk.PeakHostWeightBytes:N0}",
                disk.TokensSha256 == resident.TokensSha256 && disk.PeakHostWeightBytes <= hostBudget),
        };
        return new GenerateBenchReport(
            started.ToString("O", CultureInfo.InvariantCulture), BenchHarness.Machine(threads), quick, repeats,
            new GenerateModel("llama", "F32", model.Layers.Count, config.Layers, config.Hidden, config.Ffn, config.Heads, config.KvHeads, config.Vocab,
                model.Bytes, storedBytes, model.Layers.Max(l => l.Bytes)),
            Batch, prompt, newTokens, "device", kvBytes, offloadedCapacity, residentCapacity, model.Bytes / (double)offloadedCapacity, hostBudget,
            decodeSeconds, flopsPerSecond, firstMet, calibration, comparable, harder, speedup, harder.Speedup, peakShare, tokensEqual, goals);
    }

    static string Markdown(GenerateBenchReport r)
    {
        static string F(double v, string format) => v.ToString(format, CultureInfo.InvariantCulture);
        var m = r.Model;
        var lines = new List<string>
        {
            "# superpipeline bench --generate",
            "",
            $"{r.Timestamp}; {r.Machine.Cores} cores, {r.Machine.Os}, {r.Machine.Runtime}, {r.Machine.TorchThreads} torch threads"
                + (r.Quick ? "; **quick run** (small checkpoint: figures are a smoke test)" : ""),
            "",
            $"Model: a seeded Llama checkpoint in {m.Dtype} (export-demo), {m.Layers} layers ({m.Blocks} blocks + embeddings + head), hidden {m.Hidden}, "
                + $"ffn {m.Ffn}, heads {m.Heads} (KV heads {m.KvHeads}), vocab {m.Vocab}: {m.ModelBytes:N0} bytes "
                + $"({F(r.ModelOverDevice, "0.00")}× the offloaded device of {r.DeviceCapacityBytes:N0}); largest layer {m.LargestLayerBytes:N0}.",
            $"Work: batch {r.Batch}, prompt {r.PromptTokens} tokens, {r.NewTokens} new tokens (greedy), KV cache on the device "
                + $"({r.KvBytes:N0} bytes). Resident device: {r.ResidentCapacityBytes:N0} bytes. Disk tier host memory: {r.HostBudgetBytes:N0} bytes "
                + "(a quarter of the stored model).",
            r.RematchedFrom is { } first
                ? $"Compute measured first (a warm resident decode pass without link emulation), but the runs under the link met transfer ÷ compute "
                    + $"{F(first, "0.00")}, so the link was matched again to their warm resident decode pass, {F(r.DecodePassSeconds * 1e3, "0.00")} ms "
                    + $"({F(r.DecodeFlopsPerSecond / 1e9, "0.00")} GFLOP/s over the decode FLOPs, the rate the planner was given), and they ran again."
                : $"Compute measured first: a warm resident decode pass without link emulation takes {F(r.DecodePassSeconds * 1e3, "0.00")} ms "
                    + $"({F(r.DecodeFlopsPerSecond / 1e9, "0.00")} GFLOP/s over the decode FLOPs), the rate the planner was given.",
            $"Each variant: a fresh device and stage, a cold generation, then {r.Repeats} warm one(s); tokens/s and TTFT are warm medians.",
            "",
        };
        foreach (var link in new[] { r.Comparable, r.Harder })
        {
            lines.Add($"## transfer ÷ compute {F(link.TransferOverCompute, "0.##")} (met: {F(link.EffectiveTransferOverCompute, "0.00")}), link "
                + $"{F(link.LinkGBps, "0.000")} GB/s");
            lines.Add("");
            double predicted = link.PredictedDecodeTokensPerSecond / link.PredictedSynchronousTokensPerSecond;
            lines.Add($"Plan: {link.Plan}; predicted {F(link.PredictedDecodeTokensPerSecond, "0.0")} decode tokens/s against "
                + $"{F(link.PredictedSynchronousTokensPerSecond, "0.0")} synchronous ({F(predicted, "0.00")}×), "
                + $"peak {link.PredictedPeakBytes:N0} bytes. Measured: {F(link.Speedup, "0.00")}× (warm medians; per round "
                + $"{string.Join(", ", link.SpeedupPerRound.Select(x => F(x, "0.00")))}).");
            lines.Add("");
            var table = new MarkdownTable("variant", "k", "k'", "pinned>", "decode tok/s>", "cold tok/s>", "TTFT ms>", "cold TTFT ms>", "peak device bytes>",
                "% of resident>", "KV bytes>", "bytes moved (warm)>", "host weight peak / budget>", "tokens sha256");
            long residentPeak = r.Comparable.Variants.Single(v => v.Name == "resident").PeakDeviceBytes;
            foreach (var v in link.Variants)
                table.Row(v.Name, v.Window, v.Swap, $"{v.Pinned}", F(v.DecodeTokensPerSecond, "0.0"), F(v.ColdDecodeTokensPerSecond, "0.0"),
                    F(v.TimeToFirstTokenSeconds * 1e3, "0.0"), F(v.ColdTimeToFirstTokenSeconds * 1e3, "0.0"), $"{v.PeakDeviceBytes:N0}",
                    F(v.PeakDeviceBytes * 100.0 / residentPeak, "0.0"), $"{v.KvBytes:N0}", $"{v.BytesTransferred:N0}",
                    v.HostBudgetBytes is { } b ? $"{v.PeakHostWeightBytes:N0} / {b:N0}" : $"{v.PeakHostWeightBytes:N0} (resident)", v.TokensSha256[..16]);
            lines.AddRange(table.Lines());
            lines.Add("");
        }
        lines.Add($"Tokens equal to resident in every variant (and the calibration run): {(r.TokensEqual ? "yes" : "NO")}.");
        lines.Add("");
        lines.Add("## goals (issue 8, point 10; transfer ÷ compute " + F(r.Comparable.TransferOverCompute, "0.##") + ")");
        lines.Add("");
        foreach (var g in r.Goals) lines.Add($"- {(g.Met ? "PASS" : "MISS")}: {g.Measure}: {g.Measured} (goal {g.Goal})");
        lines.Add("");
        return string.Join('\n', lines);
    }
}

/// <summary>generate.json.</summary>
/// <param name="ModelOverDevice">Model bytes ÷ the offloaded device's capacity (4).</param>
/// <param name="DecodePassSeconds">A warm resident decode pass without link emulation: the compute the links are matched to.</param>
/// <param name="DecodeFlopsPerSecond">The decode pass's FLOPs ÷ <paramref name="DecodePassSeconds"/>: the planner's compute rate.</param>
/// <param name="RematchedFrom">When the comparable link's runs met a ratio more than <see cref="GenerateBench.RematchTolerance"/> off
/// its target, the ratio they met; the link was then matched again to their resident decode pass (which
/// <paramref name="DecodePassSeconds"/> then is) and the variants run again. Null: no rematch.</param>
/// <param name="Speedup">Warm median decode tokens/s, planned ÷ synchronous, under the comparable link.</param>
/// <param name="HarderSpeedup">The same under the harder link.</param>
/// <param name="PeakOfResident">Peak device bytes, planned ÷ resident.</param>
public sealed record GenerateBenchReport(string Timestamp, MachineInfo Machine, bool Quick, int Repeats, GenerateModel Model, int Batch,
    int PromptTokens, int NewTokens, string KvPlacement, long KvBytes, long DeviceCapacityBytes, long ResidentCapacityBytes, double ModelOverDevice,
    long HostBudgetBytes, double DecodePassSeconds, double DecodeFlopsPerSecond, double? RematchedFrom, GenerateVariant Calibration, LinkRun Comparable,
    LinkRun Harder, double Speedup, double HarderSpeedup, double PeakOfResident, bool TokensEqual, IReadOnlyList<GenerateGoal> Goals);

/// <summary>The generated checkpoint.</summary>
public sealed record GenerateModel(string Family, string Dtype, int Layers, int Blocks, int Hidden, int Ffn, int Heads, int KvHeads, int Vocab,
    long ModelBytes, long StoredBytes, long LargestLayerBytes);

/// <summary>The variants run under one emulated link, and what the planner predicted for it.</summary>
/// <param name="TransferOverCompute">The target: the link's time for every layer ÷ a resident decode pass's compute.</param>
/// <param name="EffectiveTransferOverCompute">The same against the warm resident decode pass measured under the link.</param>
public sealed record LinkRun(double TransferOverCompute, double LinkGBps, double EffectiveTransferOverCompute, string Plan,
    double PredictedDecodeTokensPerSecond, double PredictedSynchronousTokensPerSecond, long PredictedPeakBytes, IReadOnlyList<GenerateVariant> Variants)
{
    /// <summary>Warm median decode tokens/s, planned ÷ synchronous.</summary>
    public double Speedup => Planned.DecodeTokensPerSecond / Synchronous.DecodeTokensPerSecond;

    /// <summary>Planned ÷ synchronous decode tokens/s within each warm round (the two ran one after the other).</summary>
    public IReadOnlyList<double> SpeedupPerRound => [.. Planned.WarmDecodeTokensPerSecond.Zip(Synchronous.WarmDecodeTokensPerSecond, (p, s) => p / s)];

    GenerateVariant Planned => Variants.Single(v => v.Name == "planned");
    GenerateVariant Synchronous => Variants.Single(v => v.Name == "synchronous");
}

/// <summary>One variant: its policy and device, the cold generation, the warm repeats' medians, peaks and the tokens' digest.</summary>
/// <param name="LinkGBps">The emulated link; null: none (a plain copy).</param>
/// <param name="PeakDeviceBytes">The largest peak the generations' reports gave.</param>
/// <param name="PeakHostWeightBytes">Disk tier: the most the host weight budget held at once over the variant; else the stored bytes
/// the layer actors hold.</param>
/// <param name="TokensSha256">SHA-256 of the tokens (int64 [batch, prompt + new]), or "differs" if the generations disagreed.</param>
public sealed record GenerateVariant(string Name, string Policy, string Window, string Swap, int Pinned, long DeviceCapacityBytes, double? LinkGBps,
    double ColdTimeToFirstTokenSeconds, double ColdDecodeTokensPerSecond, long ColdBytesTransferred, double ColdWallSeconds,
    double TimeToFirstTokenSeconds, double DecodeTokensPerSecond, IReadOnlyList<double> WarmDecodeTokensPerSecond, double BytesTransferred,
    long PeakDeviceBytes, long KvBytes, long PeakHostWeightBytes, long? HostBudgetBytes, string TokensSha256);

/// <summary>One goal of issue 8's point 10 and whether this run met it.</summary>
public sealed record GenerateGoal(string Measure, string Goal, string Measured, bool Met);
