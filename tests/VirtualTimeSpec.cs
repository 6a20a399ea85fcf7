using CsCheck;
using Superpipeline.Engine.Simulation;
using Superpipeline.Messages;
using Superpipeline.Workers;

namespace Superpipeline.Tests;

/// <summary>Policy simulation in virtual time: the real loader stream over a virtual-time device, driven by
/// TestKit's TestScheduler, gives exactly the makespan and peak bytes of the analytic simulator.</summary>
public sealed class VirtualTimeSpec() : VirtualTimeKit
{
    static ModelCost Uniform(int layers, long bytes, double flops, long act) =>
        new("uniform", act, [.. Enumerable.Range(0, layers).Select(i => new LayerCost($"l{i}", bytes, flops, act))]);

    [Fact]
    public void Synchronous_mode_makespan_is_the_sum_of_every_transfer_and_compute()
    {
        var model = Uniform(10, 1_000_000, 2e9, 1000); // 1 ms per load, 2 ms per compute
        var pass = RunVirtual(model, Gpu, () => new WindowGate(OffloadPolicy.For(new PolicySpec(1, 1), 10), Bytes(model)));
        double expected = 1000 / 1e9 + 10 * (1e-3 + 2e-3) + 1000 / 1e9;
        Assert.Equal(expected, pass.MakespanSeconds, 12);
        Assert.Equal(1_000_000 + 2000, pass.PeakDeviceBytes);
    }

    [Fact]
    public void Streamed_mode_hides_transfers_behind_compute()
    {
        var model = Uniform(10, 1_000_000, 2e9, 1000);
        var pass = RunVirtual(model, Gpu, () => new WindowGate(OffloadPolicy.For(new PolicySpec(3, 1), 10), Bytes(model)));
        // First load (1 ms) then ten computes back to back (2 ms each), plus input and output copies.
        Assert.Equal(1000 / 1e9 + 1e-3 + 10 * 2e-3 + 1000 / 1e9, pass.MakespanSeconds, 12);
        Assert.Equal(3 * 1_000_000 + 2000, pass.PeakDeviceBytes);
    }

    /// <summary>The real loader stream over a virtual-time device, not only the simulator that shares its gate,
    /// against the schedules worked out by hand: load starts against group evictions, the groups as the timeline
    /// records them, and the peak with distinct layer sizes.</summary>
    [Theory]
    [MemberData(nameof(HandSchedules.Knobs), MemberType = typeof(HandSchedules))]
    public void Actor_path_follows_the_hand_schedule_and_peaks_at_the_hand_derived_bytes(int k, int s)
    {
        var expected = HandSchedules.For(k, s);
        var pass = RunVirtual(HandSchedules.FastLoads, HandSchedules.FastLoadsDevice,
            () => new WindowGate(OffloadPolicy.For(new PolicySpec(k, s), HandSchedules.Sizes.Length), HandSchedules.Sizes));
        HandSchedules.CheckAgainstHand(pass, expected.Order, expected.Groups, expected.PeakWeights);
    }

    [Fact]
    public void Actor_path_equals_the_analytic_simulator_across_random_models_and_policies()
    {
        var gen =
            from n in Gen.Int[1, 12]
            from bytes in Gen.Long[1, 50_000_000].Array[n]
            from flops in Gen.Double[1e6, 5e10].Array[n]
            from acts in Gen.Long[1, 5_000_000].Array[n + 1]
            from workspace in Gen.Long[0, 5_000_000].Array[n]
            from bw in Gen.Double[1e8, 3e10]
            from rate in Gen.Double[1e11, 1e14]
            from latency in Gen.Double[0, 1e-4]
            from k in Gen.Int[1, n]
            from s in Gen.Int[1, k]
            from budgets in Gen.Bool
            from live in Gen.Double[1, 4]
            from prefetch in Gen.Double[0, 3]
            select (n, bytes, flops, acts, workspace, bw, rate, latency, k, s, budgets, live, prefetch);
        gen.Sample(c =>
        {
            var model = new ModelCost("random", c.acts[0],
                [.. Enumerable.Range(0, c.n).Select(i => new LayerCost($"l{i}", c.bytes[i], c.flops[i], c.acts[i + 1], c.workspace[i]))]);
            var device = new DeviceCost("gpu", 1L << 40, c.bw, c.rate, c.latency);
            long largest = c.bytes.Max();
            Func<LoadGate> gate = c.budgets
                ? () => new ByteBudgetGate((long)(largest * c.live), (long)(largest * c.prefetch), c.bytes)
                : () => new WindowGate(OffloadPolicy.For(new PolicySpec(c.k, c.s), c.n), c.bytes);
            var actor = RunVirtual(model, device, gate);
            var analytic = PassSimulator.Run(model, device, gate());
            return actor.MakespanSeconds == analytic.MakespanSeconds
                && actor.PeakDeviceBytes == analytic.PeakDeviceBytes
                && actor.BytesTransferred == analytic.BytesTransferred
                && actor.Timeline.SequenceEqual(analytic.Timeline);
        }, iter: 150, threads: 1);
    }
}
