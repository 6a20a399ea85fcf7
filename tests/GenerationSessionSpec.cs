using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Generation;
using Superpipeline.Workers;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>Generation through the real loader (<see cref="GenerationSession"/> driving a <see cref="DeviceLoaderActor"/> and the
/// layers' <see cref="LayerActor"/>s): greedy tokens equal an argmax over a full recompute of the sequence; tokens offloaded
/// under several (k, k') with the KV cache on the device or on the host equal the resident ones, greedy and sampled; a batch of
/// prompts of different lengths gives each row the tokens of its prompt alone; the KV bytes count in the peak, and every
/// device byte is freed when a generation ends, fails or is cancelled.</summary>
public sealed class GenerationSessionSpec() : TestKit(WorkerConfig.Load())
{
    static readonly TimeSpan PassTimeout = TimeSpan.FromMinutes(1);

    static LlamaConfig Grouped() => new(Hidden: 32, Ffn: 48, Layers: 3, Heads: 4, KvHeads: 2, RmsNormEps: 1e-5, RopeTheta: 10000.0,
        Vocab: 61, MaxPositions: 64, TieWordEmbeddings: false);

    static Gpt2Config Small() => new(Hidden: 32, Layers: 3, Heads: 4, MaxPositions: 32, Vocab: 61, Inner: 40);

    static LayeredModel Create(string family) => family == "llama" ? Llama.Create("llama", Grouped(), 1, 1) : Gpt2.Create("gpt2", Small(), 1, 1);

    /// <summary>A device, the layers' actors (seeded weights) and a loader in this test's actor system.</summary>
    sealed class Stage : IDisposable
    {
        readonly ActorSystem _system;

        public Stage(ActorSystem system, LayeredModel model, long capacity = 64L << 20, long seed = 3)
        {
            _system = system;
            Model = model;
            Device = new SimulatedDevice("sim:0", capacity);
            var weights = new SeededWeights(seed);
            var tag = Guid.NewGuid().ToString("N")[..8];
            Layers = [.. model.Layers.Select(l => system.ActorOf(LayerActor.Props(l, weights, pin: false), $"{tag}-layer-{l.Index}"))];
            Loader = system.ActorOf(DeviceLoaderActor.Props(Device, TimeSpan.FromSeconds(30)), $"{tag}-sim-loader-0");
        }

        public LayeredModel Model { get; }
        public SimulatedDevice Device { get; }
        public IActorRef[] Layers { get; }
        public IActorRef Loader { get; }

        public OffloadPolicy Policy(int? window, int? swap = null) => OffloadPolicy.For(new PolicySpec(window, swap), Model.Layers.Count);

        public Task<GenerationResult> Generate(IReadOnlyList<IReadOnlyList<long>> prompts, GenerationRequest request, OffloadPolicy policy,
            KvPlacement placement, Action<TokenStep>? onToken = null, CancellationToken cancel = default) =>
            GenerationSession.RunAsync(Loader, Model, Layers, prompts, new GenerationOptions(request, policy, placement), PassTimeout, onToken, cancel);

        public void Dispose()
        {
            foreach (var l in Layers) _system.Stop(l);
            _system.Stop(Loader);
            Device.Dispose();
        }
    }

    static long[][] Prompts(int rows, int length, long seed, int vocab = 61)
    {
        var random = new Random((int)seed);
        return [.. Enumerable.Range(0, rows).Select(_ => Enumerable.Range(0, length).Select(_ => (long)random.Next(vocab)).ToArray())];
    }

    static long[] Row(long[,] tokens, int row, int from) =>
        [.. Enumerable.Range(from, tokens.GetLength(1) - from).Select(t => tokens[row, t])];

    /// <summary>Greedy by full recompute: the plain forward of every layer over the whole sequence so far, argmax of the last
    /// position, appended, and again (no cache, no step context).</summary>
    static long[] GreedyByRecompute(LayeredModel model, long[] prompt, int steps, long seed = 3)
    {
        var source = new SeededWeights(seed);
        var weights = model.Layers.Select(source.Load).ToArray();
        var sequence = prompt.ToList();
        for (int s = 0; s < steps; s++)
        {
            using var scope = NewDisposeScope();
            using var noGrad = inference_mode();
            var x = tensor(sequence.ToArray()).view(1, -1);
            for (int i = 0; i < model.Layers.Count; i++) x = model.Layers[i].Forward(weights[i], x);
            sequence.Add(x[0, -1].argmax().item<long>());
        }
        foreach (var w in weights) foreach (var t in w.Values) t.Dispose();
        return [.. sequence.Skip(prompt.Length)];
    }

    public static TheoryData<string> Families => new() { "llama", "gpt2" };

    [Theory]
    [MemberData(nameof(Families))]
    public async Task Greedy_tokens_equal_an_argmax_over_a_full_recompute_and_every_window_swap_and_kv_placement_gives_the_same_tokens(string family)
    {
        using var stage = new Stage(Sys, Create(family));
        var prompts = Prompts(2, 5, seed: 1);
        var greedy = new GenerationRequest(6, SamplingSettings.Greedy);
        var resident = await stage.Generate(prompts, greedy, stage.Policy(null), KvPlacement.Device);
        Assert.Equal([2L, 11], [resident.Tokens.GetLength(0), resident.Tokens.GetLength(1)]);
        for (int b = 0; b < 2; b++)
        {
            Assert.Equal(prompts[b], Row(resident.Tokens, b, 0)[..5]);
            Assert.Equal(GreedyByRecompute(stage.Model, prompts[b], 6), Row(resident.Tokens, b, 5));
        }
        var sampling = new GenerationRequest(6, new SamplingSettings(Temperature: 0.9, TopK: 20, TopP: 0.95, Seed: 7));
        var sampledResident = await stage.Generate(prompts, sampling, stage.Policy(null), KvPlacement.Device);
        Assert.NotEqual(Row(resident.Tokens, 0, 5), Row(sampledResident.Tokens, 0, 5)); // sampling does sample
        foreach (var placement in new[] { KvPlacement.Device, KvPlacement.Host })
            foreach (var (k, swap) in new[] { (1, 1), (2, 1), (2, 2), (4, 3) })
            {
                var offloaded = await stage.Generate(prompts, greedy, stage.Policy(k, swap), placement);
                Assert.True(Same(resident.Tokens, offloaded.Tokens), $"greedy, window {k}, swap {swap}, kv {placement} differs from resident");
                var sampled = await stage.Generate(prompts, sampling, stage.Policy(k, swap), placement);
                Assert.True(Same(sampledResident.Tokens, sampled.Tokens), $"sampling, window {k}, swap {swap}, kv {placement} differs from resident");
                Assert.Equal((k, swap, 6, 6), (offloaded.Report.Window, offloaded.Report.Swap, offloaded.Report.Passes, offloaded.Report.NewTokens));
                Assert.Equal(0, stage.Device.Memory.Reserved);
            }
    }

    static bool Same(long[,] a, long[,] b) =>
        a.GetLength(0) == b.GetLength(0) && a.GetLength(1) == b.GetLength(1) && a.Cast<long>().SequenceEqual(b.Cast<long>());

    [Theory]
    [InlineData("llama", KvPlacement.Device)]
    [InlineData("gpt2", KvPlacement.Host)]
    public async Task A_batch_of_prompts_of_different_lengths_gives_each_row_the_tokens_of_its_prompt_run_alone(string family, KvPlacement placement)
    {
        using var stage = new Stage(Sys, Create(family));
        long[][] prompts = [Prompts(1, 7, 2)[0], Prompts(1, 3, 3)[0], Prompts(1, 1, 4)[0]];
        var request = new GenerationRequest(5, SamplingSettings.Greedy);
        var batch = await stage.Generate(prompts, request, stage.Policy(2, 1), placement);
        Assert.Equal(7 + 5, batch.Tokens.GetLength(1));
        for (int b = 0; b < prompts.Length; b++)
        {
            int pad = 7 - prompts[b].Length;
            Assert.All(Row(batch.Tokens, b, 0)[..pad], id => Assert.Equal(request.Pad, id)); // left padding
            var alone = await stage.Generate([prompts[b]], request, stage.Policy(2, 1), placement);
            Assert.Equal(Row(alone.Tokens, 0, prompts[b].Length), Row(batch.Tokens, b, 7));
        }
    }

    [Fact]
    public async Task A_row_that_emits_eos_is_finished_and_pads_and_generation_stops_when_every_row_has()
    {
        using var stage = new Stage(Sys, Create("llama"));
        var prompts = Prompts(2, 4, seed: 5);
        var free = await stage.Generate(prompts, new GenerationRequest(6, SamplingSettings.Greedy), stage.Policy(2, 1), KvPlacement.Device);
        long eos = free.Tokens[0, 4 + 1]; // row 0's second new token becomes the EOS
        var stopped = await stage.Generate(prompts, new GenerationRequest(6, SamplingSettings.Greedy, Eos: eos, PadId: 60),
            stage.Policy(2, 1), KvPlacement.Device);
        var row0 = Row(stopped.Tokens, 0, 4);
        int at = Array.IndexOf(row0, eos);
        Assert.InRange(at, 0, 1);
        Assert.All(row0[(at + 1)..], id => Assert.Equal(60L, id));
        var row1 = Row(stopped.Tokens, 1, 4);
        int end1 = Array.IndexOf(row1, eos);
        int expectedNew = end1 < 0 ? 6 : Math.Max(at, end1) + 1;
        Assert.Equal(expectedNew, stopped.Report.NewTokens);
        // Until it finished, row 1's tokens are those it makes without an EOS.
        int until = end1 < 0 ? row1.Length : end1 + 1;
        Assert.Equal(Row(free.Tokens, 1, 4)[..until], row1[..until]);
    }

    [Fact]
    public async Task The_peak_device_bytes_include_the_kv_cache_on_the_device_and_not_with_it_on_the_host()
    {
        using var stage = new Stage(Sys, Create("llama"));
        var prompts = Prompts(2, 6, seed: 6);
        var request = new GenerationRequest(4, SamplingSettings.Greedy);
        var onDevice = await stage.Generate(prompts, request, stage.Policy(1, 1), KvPlacement.Device);
        var onHost = await stage.Generate(prompts, request, stage.Policy(1, 1), KvPlacement.Host);
        // Three blocks of K and V, each [2 rows, 2 kv heads, 10 entries, 8] in float32.
        long kv = 3 * 2 * (2L * 2 * 10 * 8 * sizeof(float));
        Assert.Equal(kv, onDevice.Report.KvBytes);
        Assert.Equal(kv, onHost.Report.KvBytes);
        long largestLayer = stage.Model.Layers.Max(l => l.Bytes);
        Assert.True(onDevice.Report.PeakDeviceBytes >= kv + largestLayer, $"peak {onDevice.Report.PeakDeviceBytes} without the KV bytes {kv}");
        // On the host, one block's filled cache is on the device at a time: the peak is lower by most of the KV bytes.
        Assert.True(onHost.Report.PeakDeviceBytes <= onDevice.Report.PeakDeviceBytes - kv * 2 / 3,
            $"host placement peak {onHost.Report.PeakDeviceBytes} vs device {onDevice.Report.PeakDeviceBytes}");
        Assert.True(onHost.Report.BytesTransferred > onDevice.Report.BytesTransferred, "host KV moves its caches with the layers");
        Assert.Equal(0, stage.Device.Memory.Reserved);
    }

    [Fact]
    public async Task A_generation_that_fails_for_device_memory_mid_prefill_frees_every_device_byte()
    {
        var model = Create("llama");
        // Each block's cache is 4 rows × 2 kv heads × 62 entries × 8 × 4 bytes × 2 = 31,744 bytes: window 1 fits with the first
        // block's cache, not with the second's on top, so the prefill fails at block 1 with block 0's cache held.
        long capacity = model.Layers.Max(l => l.Bytes) + 80_000;
        using var stage = new Stage(Sys, model, capacity);
        var prompts = Prompts(4, 2, seed: 7);
        var request = new GenerationRequest(60, SamplingSettings.Greedy);
        var e = await Assert.ThrowsAsync<GenerationFailedException>(() => stage.Generate(prompts, request, stage.Policy(1, 1), KvPlacement.Device));
        Assert.True(e.Message.Contains("out of memory: the KV cache of layer 2 (block.1)"), e.Message);
        Assert.Equal(0, stage.Device.Memory.Reserved);
        // The same stage still generates with the caches on the host.
        var onHost = await stage.Generate(prompts, new GenerationRequest(2, SamplingSettings.Greedy), stage.Policy(1, 1), KvPlacement.Host);
        Assert.Equal(2, onHost.Report.NewTokens);
        Assert.Equal(0, stage.Device.Memory.Reserved);
    }

    [Theory]
    [InlineData(KvPlacement.Device)]
    [InlineData(KvPlacement.Host)]
    public async Task A_cancelled_generation_frees_every_device_byte_and_the_stage_generates_again(KvPlacement placement)
    {
        using var stage = new Stage(Sys, Create("gpt2"));
        var prompts = Prompts(2, 4, seed: 8);
        var request = new GenerationRequest(8, SamplingSettings.Greedy);
        using var cancel = new CancellationTokenSource();
        long heldDuringDecode = -1;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => stage.Generate(prompts, request, stage.Policy(2, 1), placement, step =>
        {
            if (step.Step == 2)
            {
                heldDuringDecode = stage.Device.Memory.Reserved;
                cancel.Cancel();
            }
        }, cancel.Token));
        if (placement == KvPlacement.Device) Assert.True(heldDuringDecode > 0, "the device caches were not held between passes");
        else Assert.Equal(0, heldDuringDecode);
        Assert.Equal(0, stage.Device.Memory.Reserved);
        var again = await stage.Generate(prompts, request, stage.Policy(2, 1), placement);
        Assert.Equal(8, again.Report.NewTokens);
        Assert.Equal(0, stage.Device.Memory.Reserved);
    }
}
