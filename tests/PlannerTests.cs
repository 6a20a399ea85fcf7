using CsCheck;
using Superpipeline.Engine.Simulation;

namespace Superpipeline.Tests;

public sealed class PlannerTests
{
    static readonly Gen<(ModelCost Model, DeviceCost Device, long Budget)> Cases =
        from n in Gen.Int[2, 24]
        from bytes in Gen.Long[1_000_000, 80_000_000].Array[n]
        from flops in Gen.Double[1e8, 2e11].Array[n]
        from acts in Gen.Long[10_000, 4_000_000].Array[n + 1]
        from bw in Gen.Double[2e9, 3e10]
        from rate in Gen.Double[5e11, 5e13]
        from latency in Gen.Double[0, 2e-5]
        from budgetFraction in Gen.Double[0.0, 1.0]
        let model = new ModelCost("random", acts[0], [.. Enumerable.Range(0, n).Select(i => new LayerCost($"l{i}", bytes[i], flops[i], acts[i + 1]))])
        let smallest = model.LargestLayersBytes(1) + model.ActivationBoundBytes()
        let everything = model.Bytes + model.ActivationBoundBytes()
        select (model, new DeviceCost("gpu", everything, bw, rate, latency), smallest + (long)((everything - smallest) * budgetFraction));

    [Fact]
    public void Planner_choice_fits_and_is_within_5_percent_of_the_best_point_of_the_exhaustive_grid()
    {
        Cases.Sample(c =>
        {
            var grid = Planner.Grid(c.Model, c.Device, c.Budget);
            if (grid.Count == 0) return Assert.Throws<ArgumentException>(() => Planner.Choose(c.Model, c.Device, c.Budget)).Message.Contains("no window fits");
            var best = grid.MinBy(p => p.MakespanSeconds)!;
            var plan = Planner.Choose(c.Model, c.Device, c.Budget);
            return plan.Best.PeakDeviceBytes <= c.Budget && plan.Best.MakespanSeconds <= best.MakespanSeconds * 1.05;
        }, iter: 400);
    }

    [Fact]
    public void Planner_simulates_far_fewer_points_than_the_grid_for_a_deep_model()
    {
        var model = new ModelCost("deep", 1000, [.. Enumerable.Range(0, 80).Select(i => new LayerCost($"l{i}", 10_000_000, 1e9, 1000))]);
        var device = new DeviceCost("gpu", 1L << 40, 1e10, 1e12);
        var plan = Planner.Choose(model, device, 200_000_000);
        Assert.True(plan.Simulated < 80 * 81 / 2 / 4, $"{plan.Simulated} simulations");
        Assert.True(plan.Best.PeakDeviceBytes <= 200_000_000);
    }

    [Fact]
    public void With_several_batches_the_planner_minimises_time_per_sample()
    {
        // Transfer-bound: a bigger batch reuses each weight load for more samples, so it wins when it fits.
        ModelCost ForBatch(int b) => new("m", 1000L * b, [.. Enumerable.Range(0, 8).Select(i => new LayerCost($"l{i}", 50_000_000, 1e8 * b, 100_000L * b))]);
        var device = new DeviceCost("gpu", 1L << 40, 1e9, 1e13);
        var plan = Planner.Choose(ForBatch, [1, 4, 16], device, 200_000_000);
        Assert.Equal(16, plan.Best.Batch);
    }

    [Fact]
    public void A_budget_below_one_layer_is_refused_clearly()
    {
        var model = new ModelCost("m", 10, [new LayerCost("big", 1000, 1, 10)]);
        var e = Assert.Throws<ArgumentException>(() => Planner.Choose(model, new DeviceCost("gpu", 1L << 40, 1e9, 1e12), 500));
        Assert.StartsWith("no window fits", e.Message);
    }
}
