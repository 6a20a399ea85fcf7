using Superpipeline.Engine.Simulation;

namespace Superpipeline.Tests;

/// <summary>The gate with pinned layers, the pinned count the planner chooses for a budget, and the refusal of pins that do
/// not fit, against figures worked out by hand.</summary>
public sealed class ResidentPlanSpec
{
    [Fact]
    public void Pinned_layers_take_no_window_slot_and_join_no_eviction_group()
    {
        var gate = new WindowGate(OffloadPolicy.For(new PolicySpec(1, 1), 3), [10, 20, 30], pinned: new HashSet<int> { 1 });
        gate.Admit(0);
        Assert.True(gate.CanAdmit(1)); // the window's one slot is taken by layer 0, but layer 1 is pinned
        gate.Admit(1);
        Assert.False(gate.CanAdmit(2));
        Assert.Equal(1, gate.ResidentCount);
        Assert.Equal(20, gate.PinnedBytes);
        Assert.Equal([0], gate.GroupClosedBy(0));
        gate.Computed(0, [0]);
        Assert.True(gate.CanAdmit(2));
        gate.Admit(2);
        Assert.Empty(gate.GroupClosedBy(1));
        gate.Computed(1, []);
        Assert.Equal([2], gate.GroupClosedBy(2));
        Assert.Equal(2, gate.MaxResidentLayers); // the loader buffers the window and the pinned layer
    }

    [Fact]
    public void A_pinned_last_layer_still_closes_the_open_group()
    {
        var gate = new WindowGate(OffloadPolicy.For(new PolicySpec(2, 2), 3), [10, 20, 30], pinned: new HashSet<int> { 1, 2 });
        Assert.Empty(gate.GroupClosedBy(0));
        Assert.Empty(gate.GroupClosedBy(1));
        Assert.Equal([0], gate.GroupClosedBy(2));
    }

    /// <summary>Ten layers of 1 MB; each layer's input and output are 1 kB and it holds 2 kB of workspace, so 4 kB of
    /// activations at most. Window 1 with N pinned needs (N + 1) MB + 4 kB; window 2, (N + 2) MB + 4 kB.</summary>
    static ModelCost Uniform() => new("uniform", 1000, [.. Enumerable.Range(0, 10).Select(i => new LayerCost($"l{i}", 1_000_000, 2e9, 1000, 2000))]);

    [Theory]
    [InlineData(1, 4_004_000, 3)]
    [InlineData(1, 4_003_999, 2)]
    [InlineData(2, 4_004_000, 2)]
    [InlineData(1, 11_004_000, 10)]
    [InlineData(1, 1_004_000, 0)]
    public void The_planner_pins_the_most_layers_the_budget_holds_beside_the_window(int window, long budget, int expected)
    {
        var model = Uniform();
        Assert.Equal(4000, model.ActivationBoundBytes());
        var planned = Planner.PinFor(model, new PolicySpec(window, 1, ResidentAuto: true), budget);
        Assert.Equal(new PolicySpec(window, 1, ResidentLayers: expected), planned);
    }

    [Fact]
    public void Pins_that_do_not_fit_beside_the_window_are_refused_with_every_figure()
    {
        var model = Uniform();
        Planner.CheckPinsFit(model, OffloadPolicy.For(new PolicySpec(2, 1, ResidentLayers: 2), 10), 4_004_000);
        var e = Assert.Throws<FieldException>(() => Planner.CheckPinsFit(model, OffloadPolicy.For(new PolicySpec(2, 1, ResidentLayers: 3), 10), 4_004_000));
        Assert.Equal(FieldException.ResidentLayers, e.Field);
        Assert.Equal("resident layers 3 with window 2 need 5,004,000 bytes on the device (3,000,000 pinned + 2,000,000 for the window's largest "
            + "streamed layers + 4,000 of activations and workspace); the device has 4,004,000", e.Message);
        Assert.StartsWith("--resident-layers 3 with window 2 need 5,004,000 bytes", e.MessageFor("--resident-layers"));
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(11)]
    public void A_pinned_count_outside_the_layers_is_refused(int pins)
    {
        var e = Assert.Throws<FieldException>(() => OffloadPolicy.For(new PolicySpec(2, 1, ResidentLayers: pins), 10));
        Assert.Equal($"resident layers must be from 0 to 10 (the model's layers) or 'auto'; got {pins}", e.Message);
    }

    /// <summary>Window and pins chosen together: checked against every (pins, k, k') that fits, simulated as a later pass
    /// (pinned layers already resident): none is faster. Loads (2 ms) outweigh computes (1 ms), so pins pay.</summary>
    [Fact]
    public void Window_and_pins_chosen_together_are_the_fastest_decode_pass_that_fits()
    {
        var model = new ModelCost("uniform", 1000, [.. Enumerable.Range(0, 8).Select(i => new LayerCost($"l{i}", 2_000_000, 1e9, 1000, 2000))]);
        var device = new DeviceCost("gpu", 1L << 40, LinkBytesPerSecond: 1e9, FlopsPerSecond: 1e12, TransferLatencySeconds: 0);
        long budget = 10_004_000; // five layers of weights
        var chosen = Planner.ChooseWithPins(model, device, budget);
        double Seconds(PolicySpec spec)
        {
            var policy = OffloadPolicy.For(spec, 8);
            var pinned = policy.PinnedSet(8);
            return PassSimulator.Run(model, device, policy.CreateGate([.. model.Layers.Select(l => l.Bytes)], pinned), pinned).MakespanSeconds;
        }
        var fitting = (from pins in Enumerable.Range(0, 9)
                       from k in Enumerable.Range(1, 8)
                       from s in Enumerable.Range(1, k)
                       let spec = new PolicySpec(k, s, ResidentLayers: pins)
                       where Planner.PinnedNeedBytes(model, OffloadPolicy.For(spec, 8)) <= budget
                       select spec).ToList();
        Assert.Contains(fitting, p => p == chosen);
        Assert.All(fitting, p => Assert.True(Seconds(chosen) <= Seconds(p), $"{p} is faster than the chosen {chosen}"));
        Assert.True(chosen.ResidentLayers > 0);

        // A pinned count given beside --window auto: only the window is chosen, the fastest that fits beside them.
        var beside = Planner.ChooseWithPins(model, device, budget, pins: 1);
        Assert.Equal(1, beside.ResidentLayers);
        Assert.All(fitting.Where(p => p.ResidentLayers == 1), p => Assert.True(Seconds(beside) <= Seconds(p), $"{p} is faster than {beside}"));
        // Five pinned layers fill the budget: no streamed layer fits beside them (5 × 2 MB + 2 MB + 4 kB by hand).
        var e = Assert.Throws<FieldException>(() => Planner.ChooseWithPins(model, device, budget, pins: 5));
        Assert.Equal("resident layers 5 leave no room for a window in 10,004,000 bytes: they need 12,004,000 with one streamed layer and the "
            + "activations", e.Message);
    }
}
