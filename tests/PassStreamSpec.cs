using Akka.Actor;
using Akka.TestKit.Xunit2;
using CsCheck;
using Superpipeline.Engine.Simulation;
using Superpipeline.Messages;
using Superpipeline.Workers;
using TorchSharp;

namespace Superpipeline.Tests;

/// <summary>The loader stream through the actors: outputs bit-identical for every window, bytes accounted,
/// nothing left behind after success or failure. In a collection that never runs beside another: it compares the
/// process-wide tensor count.</summary>
[Collection(TensorCountCollection.Name)]
public sealed class PassStreamSpec() : TestKit(WorkerConfig.Load())
{
    const long Roomy = 256L << 20;

    [Fact]
    public async Task Resident_output_equals_a_plain_forward_over_the_layers()
    {
        using var h = new EngineHarness(Sys, EngineHarness.Tiny(), Roomy);
        var (output, report) = await h.Pass(h.Policy(null));
        Assert.Equal(h.PlainForward(), output);
        Assert.Equal(h.Model.Layers.Count, report.Window);
        Assert.Equal(h.Model.Bytes, report.ModelBytes);
    }

    [Fact]
    public async Task Every_window_and_swap_of_a_small_model_is_bit_identical_to_resident()
    {
        using var h = new EngineHarness(Sys, EngineHarness.Tiny(blocks: 4), Roomy);
        int layers = h.Model.Layers.Count; // 6
        var (resident, _) = await h.Pass(h.Policy(null));
        int cases = 0;
        for (int k = 1; k <= layers; k++)
            for (int s = 1; s <= k; s++)
            {
                var (output, report) = await h.Pass(h.Policy(k, s));
                Assert.True(resident.AsSpan().SequenceEqual(output), $"k={k}, k'={s} differs from resident");
                Assert.Equal((k, s), (report.Window, report.Swap));
                cases++;
            }
        Assert.Equal(layers * (layers + 1) / 2, cases);
    }

    [Theory]
    [InlineData(1, 2, 16, 2, 50, 5, 1)]
    [InlineData(2, 5, 48, 6, 97, 12, 3)]
    [InlineData(3, 3, 64, 8, 128, 16, 2)]
    public async Task Other_shapes_and_seeds_are_bit_identical_across_windows(long seed, int blocks, int hidden, int heads, int vocab, int seq, int batch)
    {
        using var h = new EngineHarness(Sys, EngineHarness.Tiny(seed, blocks, hidden, heads, vocab, seq, batch), Roomy);
        var (resident, _) = await h.Pass(h.Policy(null));
        Assert.Equal(h.PlainForward(), resident);
        foreach (var (k, s) in new[] { (1, 1), (2, 1), (2, 2), (3, 2) })
        {
            var (output, _) = await h.Pass(h.Policy(k, s));
            Assert.True(resident.AsSpan().SequenceEqual(output), $"k={k}, k'={s} differs");
        }
    }

    [Fact]
    public void Property_random_models_and_knobs_match_resident_and_respect_the_memory_bound()
    {
        var gen =
            from seed in Gen.Long[1, 1_000_000]
            from blocks in Gen.Int[1, 4]
            from heads in Gen.Int[1, 4]
            from headDim in Gen.Int[2, 8]
            from vocab in Gen.Int[5, 80]
            from seq in Gen.Int[1, 10]
            from batch in Gen.Int[1, 3]
            from k in Gen.Int[1, blocks + 2]
            from s in Gen.Int[1, k]
            select (seed, blocks, heads, hidden: heads * headDim, vocab, seq, batch, k, s);
        gen.Sample(c =>
        {
            using var h = new EngineHarness(Sys, EngineHarness.Tiny(c.seed, c.blocks, c.hidden, c.heads, c.vocab, c.seq, c.batch), Roomy);
            var (resident, _) = h.Pass(h.Policy(null)).GetAwaiter().GetResult();
            var (output, report) = h.Pass(h.Policy(c.k, c.s)).GetAwaiter().GetResult();
            return resident.AsSpan().SequenceEqual(output)
                && report.PeakDeviceBytes <= ModelCost.From(h.Model).LargestLayersBytes(c.k) + ModelCost.From(h.Model).ActivationBoundBytes()
                && h.Device.Memory.Reserved == 0;
        }, iter: 25, threads: 1);
    }

    [Fact]
    public async Task Peak_device_bytes_stay_within_the_k_largest_layers_plus_activations()
    {
        using var h = new EngineHarness(Sys, EngineHarness.Tiny(blocks: 6, hidden: 64, vocab: 200), Roomy);
        int layers = h.Model.Layers.Count;
        var (_, resident) = await h.Pass(h.Policy(null));
        Assert.True(resident.PeakDeviceBytes >= h.Model.Bytes, "resident holds every layer");
        for (int k = 1; k <= layers; k++)
            for (int s = 1; s <= k; s++)
            {
                var (_, report) = await h.Pass(h.Policy(k, s));
                long bound = ModelCost.From(h.Model).LargestLayersBytes(k) + ModelCost.From(h.Model).ActivationBoundBytes();
                Assert.True(report.PeakDeviceBytes <= bound, $"k={k}, k'={s}: peak {report.PeakDeviceBytes} > bound {bound}");
                Assert.Equal(h.Model.Bytes + TensorBytes(h), report.BytesTransferred);
            }
    }

    static long TensorBytes(EngineHarness h) => Engine.TensorBytes.Of(h.Input);

    /// <summary>The real device path against the hand schedules of six layers (<see cref="HandSchedules"/>). What
    /// does not depend on timing is asserted exactly: the groups (from the compute thread's own order of events, and
    /// as the report records them, one eviction time per group), and every eviction the rule requires before a load.
    /// Which loads run ahead of which computes is a race here, so peaks are checked against bounds derived by hand.</summary>
    [Theory]
    [MemberData(nameof(HandSchedules.Knobs), MemberType = typeof(HandSchedules))]
    public async Task Evictions_leave_in_the_hand_derived_groups_and_no_load_starts_before_the_groups_it_needs_are_freed(int k, int s)
    {
        var expected = HandSchedules.For(k, s);
        using var h = new EngineHarness(Sys, EngineHarness.Tiny(blocks: 4), Roomy);
        int layers = h.Model.Layers.Count;
        Assert.Equal(HandSchedules.Sizes.Length, layers);
        var events = new List<LayerProgress>();
        var (_, report) = await h.Pass(h.Policy(k, s), events);
        LayerProgress[] log;
        lock (events) log = [.. events];

        Assert.Equal(Enumerable.Range(0, layers), log.Where(e => e.Phase == LayerPhase.Loaded).Select(e => e.Layer));
        Assert.Equal(Enumerable.Range(0, layers), log.Where(e => e.Phase == LayerPhase.Computed).Select(e => e.Layer));
        Assert.Equal(layers, log.Count(e => e.Phase == LayerPhase.Evicted));

        // Groups: computes and evictions happen on the device's compute thread, so their order in the log is the order
        // they happened in; the evictions after "computed L" are the group L's compute closed.
        var groups = new List<(int Closer, List<int> Layers)>();
        foreach (var e in log.Where(e => e.Phase != LayerPhase.Loaded))
        {
            if (e.Phase == LayerPhase.Computed) groups.Add((e.Layer, []));
            else groups[^1].Layers.Add(e.Layer);
        }
        var closed = groups.Where(g => g.Layers.Count > 0).ToArray();
        Assert.Equal(expected.Groups, string.Join("|", closed.Select(g => string.Join(",", g.Layers))));
        Assert.All(closed, g => Assert.Equal(g.Closer, g.Layers[^1]));
        // The report records the same groups: one eviction time per group, later groups later.
        Assert.Equal(expected.Groups, HandSchedules.Groups(report.LayerTimings));

        // No load before the evictions it needs: in the hand schedule loads start as early as the rule allows, so every
        // group evicted before "Lj" there must be evicted before layer j is loaded here.
        int At(LayerPhase phase, int layer) => Array.FindIndex(log, e => e.Phase == phase && e.Layer == layer);
        var needed = new List<int>();
        foreach (var token in expected.Order.Split(' '))
        {
            if (token[0] == 'E') needed.AddRange(token[1..].Split(',').Select(int.Parse));
            else
            {
                int j = int.Parse(token[1..]), loaded = At(LayerPhase.Loaded, j);
                Assert.All(needed, n => Assert.True(At(LayerPhase.Evicted, n) < loaded, $"k={k}, k'={s}: layer {j} loaded before layer {n} was evicted"));
            }
        }
        // Never more than k layers loaded and not evicted, counted in the log's order (a load is logged after the
        // evictions that admitted it, so this count can only be higher than the truth, never lower).
        int resident = 0, most = 0;
        foreach (var e in log)
        {
            resident += e.Phase switch { LayerPhase.Loaded => 1, LayerPhase.Evicted => -1, _ => 0 };
            most = Math.Max(most, resident);
        }
        Assert.InRange(most, 1, k);

        // Peak, by hand from the groups: computing layer L needs its group's layers up to L resident (lower bound);
        // at most the k layers from a group's first layer on are ever resident (upper bound, plus activations).
        var bytes = h.Model.Layers.Select(l => l.Bytes).ToArray();
        var parsed = HandSchedules.ParseGroups(expected.Groups);
        long lower = parsed.Max(g => g.Max(l => g.TakeWhile(x => x <= l).Sum(x => bytes[x])));
        long upper = parsed.Max(g => bytes.Skip(g[0]).Take(k).Sum()) + ModelCost.From(h.Model).ActivationBoundBytes();
        Assert.InRange(report.PeakDeviceBytes, lower, upper);
        Assert.Equal(0, h.Device.Memory.Reserved);
    }


    [Fact]
    public async Task Hundred_passes_return_device_bytes_and_live_tensors_to_where_they_started()
    {
        using var h = new EngineHarness(Sys, EngineHarness.Tiny(blocks: 3), Roomy);
        await h.Pass(h.Policy(2, 1)); // warm-up: layer actors hold their weights
        long reserved = h.Device.Memory.Reserved;
        long tensors = TensorProbe.LiveTensors();
        for (int i = 0; i < 100; i++)
            await h.Pass(h.Policy(1 + i % 3, 1 + i % 3 / 2));
        Assert.Equal(reserved, h.Device.Memory.Reserved);
        Assert.Equal(tensors, TensorProbe.LiveTensors());
    }

    [Fact]
    public async Task A_failed_pass_frees_every_byte_and_the_loader_serves_the_next_pass()
    {
        var spec = EngineHarness.Tiny(blocks: 4, hidden: 64, vocab: 100);
        var model = Engine.Models.ModelCatalog.Create(spec);
        // Room for two blocks and activations, not for the embedding and two blocks: window 3 with swap 3 loads
        // layers 0, 1 and 2 before it may evict any, so it must fail part-way with out-of-memory.
        var cost = ModelCost.From(model);
        long capacity = cost.LargestLayersBytes(2) + cost.ActivationBoundBytes() + 1024;
        using var h = new EngineHarness(Sys, spec, capacity);
        var (good, _) = await h.Pass(h.Policy(2, 1));
        long tensors = TensorProbe.LiveTensors();
        for (int i = 0; i < 100; i++)
        {
            var e = await Assert.ThrowsAsync<PassFailedException>(() => h.Pass(h.Policy(3, 3)));
            Assert.Contains("out of memory", e.Message);
            Assert.Equal(0, h.Device.Memory.Reserved);
        }
        Assert.Equal(tensors, TensorProbe.LiveTensors());
        var (again, _) = await h.Pass(h.Policy(2, 1));
        Assert.Equal(good, again);
    }

    [Fact]
    public async Task Passes_sent_together_are_queued_and_each_gets_exactly_one_answer()
    {
        using var h = new EngineHarness(Sys, EngineHarness.Tiny(), Roomy);
        var (resident, _) = await h.Pass(h.Policy(null));
        var all = await Task.WhenAll(Enumerable.Range(0, 20).Select(i => h.Pass(h.Policy(1 + i % 5, 1))));
        Assert.All(all, r => Assert.Equal(resident, r.Output));
        Assert.Equal(0, h.Device.Memory.Reserved);
    }

    [Fact]
    public async Task Micro_batches_share_each_weight_load_and_each_output_is_bit_identical_to_its_own_pass()
    {
        using var h = new EngineHarness(Sys, EngineHarness.Tiny(blocks: 4), Roomy);
        var inputs = new[] { 21L, 22L, 23L }.Select(seed => h.Model.MakeInput(seed)).ToArray();
        try
        {
            var (together, report) = await h.PassMany(h.Policy(2, 1), inputs);
            for (int m = 0; m < inputs.Length; m++)
            {
                var (alone, _) = await h.PassMany(h.Policy(null), [inputs[m]]);
                Assert.Equal(alone[0], together[m]);
            }
            Assert.NotEqual(together[0], together[1]);
            // Weights cross the link once for all three micro-batches.
            Assert.Equal(h.Model.Bytes + inputs.Sum(i => Engine.TensorBytes.Of(i)), report.BytesTransferred);
            Assert.True(report.PeakDeviceBytes <= ModelCost.From(h.Model).LargestLayersBytes(2) + 3 * ModelCost.From(h.Model).ActivationBoundBytes());
            Assert.Equal(0, h.Device.Memory.Reserved);
        }
        finally
        {
            foreach (var i in inputs) i.Dispose();
        }
    }

    [Fact]
    public async Task A_stopped_pass_ends_at_its_next_step_frees_its_bytes_and_the_loader_serves_the_next()
    {
        using var h = new EngineHarness(Sys, EngineHarness.Tiny(blocks: 6, hidden: 64), Roomy, linkGBps: 0.002); // about 25 ms a block
        using var stop = new CancellationTokenSource();
        var events = new List<LayerProgress>();
        var answer = h.Loader.Ask<object>(new DeviceLoaderActor.RunPass(h.Model, h.Layers, h.Input, h.Policy(2, 1),
            p =>
            {
                lock (events) events.Add(p);
                if (p.Phase == LayerPhase.Computed && p.Layer == 1) stop.Cancel();
            }) { Stop = stop.Token }, TimeSpan.FromMinutes(1));
        Assert.IsType<DeviceLoaderActor.PassFailed>(await answer);
        Assert.True(events.Count(e => e.Phase == LayerPhase.Computed) < h.Model.Layers.Count, "the pass stopped before its end");
        Assert.Equal(0, h.Device.Memory.Reserved);
        var (output, _) = await h.Pass(h.Policy(2, 1));
        Assert.Equal(h.PlainForward(), output);
    }

    [Fact]
    public async Task Report_accounts_load_and_compute_per_layer_and_a_lower_bound()
    {
        using var h = new EngineHarness(Sys, EngineHarness.Tiny(blocks: 2), Roomy, linkGBps: 0.5);
        var (_, r) = await h.Pass(h.Policy(2, 1));
        Assert.Equal(h.Model.Layers.Count, r.LayerTimings.Length);
        Assert.All(r.LayerTimings, l => Assert.True(l.LoadSeconds > 0 && l.ComputeSeconds > 0 && l.EvictAt >= l.ComputeStart));
        double transfer = r.LayerTimings.Sum(l => l.LoadSeconds), compute = r.LayerTimings.Sum(l => l.ComputeSeconds);
        Assert.Equal(Math.Max(transfer, compute), r.LowerBoundSeconds, 9);
        Assert.True(r.WallSeconds >= r.LowerBoundSeconds);
        // The emulated link: no layer's load can be faster than its bytes over 0.5 GB/s.
        Assert.All(r.LayerTimings, l => Assert.True(l.LoadSeconds >= l.Bytes / 0.5e9, $"{l.Name} loaded faster than the link"));
    }
}

/// <summary>Tests that read the process-wide TorchSharp tensor count: never run in parallel with any other test.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class TensorCountCollection
{
    public const string Name = "process-wide tensor count";
}
