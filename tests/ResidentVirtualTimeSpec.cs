using CsCheck;
using Superpipeline.Engine.Simulation;
using Superpipeline.Workers;

namespace Superpipeline.Tests;

/// <summary>Pinned layers in virtual time: the real loader stream over a virtual-time device gives the schedule worked out by
/// hand, and exactly the makespan, peak, bytes and timeline of the analytic simulator, on a first pass (pinned layers load
/// and stay) and on a later one (pinned layers already resident).</summary>
public sealed class ResidentVirtualTimeSpec() : VirtualTimeKit
{
    /// <summary>Four layers of 1 MB (1 ms to load) and 2 ms of compute, window 1, layers 1 and 3 pinned (2 of 4). By hand:
    /// layer 0 loads in [0, 1] ms and computes in [1, 3]; layer 2 may load only when 0 is evicted at 3, in [3, 4]; pinned 1
    /// computes in [3, 5], 2 in [5, 7], pinned 3 in [7, 9]. On the first pass 1 loads in [1, 2] and 3 in [4, 5]; on a later one
    /// they are there already. Either way 9 ms plus the 1 µs input and output copies, and at most the two pinned layers, one
    /// streamed layer and one layer's input and output (the peak, from 4 ms on the first pass, from 0 on a later one).</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Pinned_layers_leave_the_window_to_the_streamed_ones(bool warm)
    {
        var model = new ModelCost("uniform", 1000, [.. Enumerable.Range(0, 4).Select(i => new LayerCost($"l{i}", 1_000_000, 2e9, 1000))]);
        var pinned = PinnedLayers.Spread(2, 4);
        Assert.Equal([1, 3], pinned);
        var warmSet = warm ? pinned : [];
        var pass = RunVirtual(model, Gpu, () => new WindowGate(OffloadPolicy.For(new PolicySpec(1, 1, ResidentLayers: 2), 4), Bytes(model), pinned),
            warmSet);
        Assert.Equal(2e-6 + 9e-3, pass.MakespanSeconds, 12);
        Assert.Equal(3 * 1_000_000 + 2000, pass.PeakDeviceBytes);
        Assert.Equal(1000 + (warm ? 2 : 4) * 1_000_000, pass.BytesTransferred);
        Assert.Equal(3e-3 + 1e-6, pass.Timeline[2].LoadStart, 12);
        Assert.Equal([-1.0, -1.0], new[] { pass.Timeline[1].EvictAt, pass.Timeline[3].EvictAt });
        var synchronous = PassSimulator.Run(model, Gpu, new WindowGate(OffloadPolicy.For(new PolicySpec(1, 1), 4), Bytes(model)));
        Assert.Equal(2e-6 + 12e-3, synchronous.MakespanSeconds, 12); // the same window without pins: every load waits
    }

    [Fact]
    public void Actor_path_equals_the_analytic_simulator_with_pinned_layers_first_and_later_passes()
    {
        var gen =
            from n in Gen.Int[1, 10]
            from bytes in Gen.Long[1, 50_000_000].Array[n]
            from flops in Gen.Double[1e6, 5e10].Array[n]
            from acts in Gen.Long[1, 5_000_000].Array[n + 1]
            from workspace in Gen.Long[0, 5_000_000].Array[n]
            from bw in Gen.Double[1e8, 3e10]
            from rate in Gen.Double[1e11, 1e14]
            from latency in Gen.Double[0, 1e-4]
            from k in Gen.Int[1, n]
            from s in Gen.Int[1, k]
            from pins in Gen.Int[0, n]
            from warm in Gen.Bool
            select (n, bytes, flops, acts, workspace, bw, rate, latency, k, s, pins, warm);
        gen.Sample(c =>
        {
            var model = new ModelCost("random", c.acts[0],
                [.. Enumerable.Range(0, c.n).Select(i => new LayerCost($"l{i}", c.bytes[i], c.flops[i], c.acts[i + 1], c.workspace[i]))]);
            var device = new DeviceCost("gpu", 1L << 40, c.bw, c.rate, c.latency);
            var policy = OffloadPolicy.For(new PolicySpec(c.k, c.s, ResidentLayers: c.pins), c.n);
            var pinned = policy.PinnedSet(c.n);
            IReadOnlySet<int> warm = c.warm ? pinned : new HashSet<int>();
            var actor = RunVirtual(model, device, () => policy.CreateGate(c.bytes, pinned), warm);
            var analytic = PassSimulator.Run(model, device, policy.CreateGate(c.bytes, pinned), warm);
            long pinnedBytes = pinned.Sum(i => c.bytes[i]);
            return actor.MakespanSeconds == analytic.MakespanSeconds
                && actor.PeakDeviceBytes == analytic.PeakDeviceBytes
                && actor.BytesTransferred == analytic.BytesTransferred
                && actor.Timeline.SequenceEqual(analytic.Timeline)
                && analytic.BytesTransferred == c.acts[0] + c.bytes.Sum() - (c.warm ? pinnedBytes : 0)
                && analytic.PeakDeviceBytes >= pinnedBytes
                && pinned.All(i => analytic.Timeline[i].EvictAt == -1);
        }, iter: 150, threads: 1);
    }
}
