using Superpipeline.Engine.Simulation;

namespace Superpipeline.Tests;

/// <summary><see cref="Planner.ChooseForGeneration"/>: the (k, k') and pins it picks fit the device with the KV caches it holds
/// (bytes worked out here from the layers, not from the planner's own helpers), never lose to k = k' = 1 in the simulator, beat
/// every other fitting choice, and a device that cannot hold one layer beside the caches is refused naming the device memory.</summary>
public sealed class GenerationPlanSpec
{
    // The demo (GPT-2 family): 8 blocks + embeddings + head = 10 layers, each block with a KV cache.
    const int Hidden = 128, Heads = 4;
    static readonly LayeredModel Model = ModelCatalog.Create(EngineHarness.Tiny(blocks: 8, hidden: Hidden, heads: Heads, vocab: 64, seq: 8, batch: 2));
    static readonly GenerationShape Shape = new(Batch: 4, Prompt: 6, NewTokens: 10);

    /// <summary>K and V in float32 for every attention layer at prompt + new tokens: 2 × batch × heads × length × head dim × 4.</summary>
    static long KvBytes(GenerationShape s) =>
        Model.Layers.Count(l => l.Kv is not null) * 2L * s.Batch * Heads * (s.Prompt + s.NewTokens) * (Hidden / Heads) * sizeof(float);

    /// <summary>The most bytes besides weights: each phase's largest input + output + workspace of one layer, from the layers.</summary>
    static long Activations(GenerationShape s)
    {
        long most = 0;
        foreach (long tokens in new long[] { s.Prompt, 1 })
        {
            long[] shape = [s.Batch, tokens];
            long inputBytes = shape[0] * shape[1] * sizeof(long);
            foreach (var l in Model.Layers)
            {
                var output = l.OutputShape(shape);
                long outputBytes = output.Aggregate(1L, (a, b) => a * b) * sizeof(float);
                most = Math.Max(most, inputBytes + outputBytes + l.WorkspaceBytes(shape));
                (shape, inputBytes) = (output, outputBytes);
            }
        }
        return most;
    }

    /// <summary>Pinned layers + the window's largest streamed layers + activations + the device KV caches; with the caches on the
    /// host, a layer brings its cache in with its weights.</summary>
    static long Need(PolicySpec p, GenerationShape s)
    {
        int n = Model.Layers.Count;
        long layerKv = KvBytes(s) / Model.Layers.Count(l => l.Kv is not null);
        long[] bytes = [.. Model.Layers.Select(l => l.Bytes + (s.Kv == KvPlacement.Host && l.Kv is not null ? layerKv : 0))];
        long weights = p.Window is null ? bytes.Sum() : PinnedLayers.Spread(p.ResidentLayers, n).Sum(i => bytes[i])
            + Enumerable.Range(0, n).Where(i => !PinnedLayers.Spread(p.ResidentLayers, n).Contains(i)).Select(i => bytes[i]).OrderDescending()
                .Take(p.Window.Value).Sum();
        return weights + Activations(s) + (s.Kv == KvPlacement.Device ? KvBytes(s) : 0);
    }

    static DeviceCost Device(long capacity, double linkBytesPerSecond) => new("sim", capacity, linkBytesPerSecond, 2e9);

    public static TheoryData<double, double, double> Devices()
    {
        var data = new TheoryData<double, double, double>();
        // Capacity as a share of the model; the link as bytes per second against a 2 GFLOP/s device.
        foreach (double share in new[] { 0.25, 0.4, 0.7 })
            foreach (double link in new[] { 2e8, 1e9, 1e10 })
                data.Add(share, link, 0);
        data.Add(0.25, 1e9, 1); // the KV cache on the host
        return data;
    }

    [Theory]
    [MemberData(nameof(Devices))]
    public void The_plan_fits_the_device_with_its_caches_and_no_fitting_choice_decodes_faster(double share, double link, double kvOnHost)
    {
        var shape = Shape with { Kv = kvOnHost > 0 ? KvPlacement.Host : KvPlacement.Device };
        var device = Device((long)(Model.Bytes * share), link);
        var plan = Planner.ChooseForGeneration(Model, device, shape);

        Assert.True(Need(plan.Policy, shape) <= device.CapacityBytes, $"{plan.Policy} needs {Need(plan.Policy, shape):N0} of {device.CapacityBytes:N0}");
        Assert.Equal(Need(plan.Policy, shape), plan.Best.NeedBytes);
        Assert.True(plan.Best.PeakDeviceBytes <= device.CapacityBytes);
        Assert.True(plan.Best.DecodeTokensPerSecond >= plan.Synchronous.DecodeTokensPerSecond);
        Assert.Equal(new PolicySpec(1, 1), plan.Synchronous.Policy);

        // Every (k, k', pins) that fits, simulated: none decodes faster than the plan.
        var costs = GenerationCosts.Of(Model, shape);
        int n = Model.Layers.Count;
        for (int p = 0; p < n; p++)
            for (int k = 1; k <= n - p; k++)
                for (int s = 1; s <= k; s++)
                {
                    var spec = new PolicySpec(k, s, ResidentLayers: p);
                    if (Need(spec, shape) > device.CapacityBytes) continue;
                    var e = GenerationSimulator.Estimate(costs, device, spec);
                    if (e.PeakDeviceBytes > device.CapacityBytes) continue;
                    Assert.True(e.DecodeTokensPerSecond <= plan.Best.DecodeTokensPerSecond * (1 + 1e-9),
                        $"{spec} decodes at {e.DecodeTokensPerSecond:0.00} tokens/s, the plan {plan.Policy} at {plan.Best.DecodeTokensPerSecond:0.00}");
                }
    }

    [Fact]
    public void A_device_with_room_for_every_layer_and_the_caches_keeps_them_all_but_not_without_room_for_the_caches()
    {
        long all = Model.Bytes + Activations(Shape);
        var roomy = Planner.ChooseForGeneration(Model, Device(all + KvBytes(Shape), 1e9), Shape);
        Assert.Null(roomy.Policy.Window); // window = all: nothing moves after the prefill

        var noRoomForCaches = Planner.ChooseForGeneration(Model, Device(all + KvBytes(Shape) - 1, 1e9), Shape);
        Assert.NotNull(noRoomForCaches.Policy.Window);
        Assert.True(noRoomForCaches.Best.NeedBytes <= all + KvBytes(Shape) - 1);
    }

    [Fact]
    public void A_device_below_one_layer_beside_the_caches_is_refused_naming_the_device_memory()
    {
        long oneLayer = Need(new PolicySpec(1, 1), Shape);
        var e = Assert.Throws<FieldException>(() => Planner.ChooseForGeneration(Model, Device(oneLayer - 1, 1e9), Shape));
        Assert.Equal(FieldException.DeviceMemory, e.Field);
        Assert.Contains($"{KvBytes(Shape):N0} for the KV caches", e.Message);
        Assert.Equal(new PolicySpec(1, 1), Planner.ChooseForGeneration(Model, Device(oneLayer, 1e9), Shape).Policy);
    }

    [Fact]
    public void Given_pins_only_the_window_is_chosen_beside_them()
    {
        var device = Device(Model.Bytes / 2, 1e9);
        var plan = Planner.ChooseForGeneration(Model, device, Shape, pins: 2);
        Assert.Equal(2, plan.Policy.ResidentLayers);
        Assert.True(Need(plan.Policy, Shape) <= device.CapacityBytes);
        var e = Assert.Throws<FieldException>(() => Planner.ChooseForGeneration(Model, device, Shape, pins: Model.Layers.Count - 1));
        Assert.Equal(FieldException.ResidentLayers, e.Field);
    }
}
