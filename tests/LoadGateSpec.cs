using Superpipeline.Engine.Simulation;

namespace Superpipeline.Tests;

/// <summary>Schedules of six layers worked out by hand from the paper's rule, not by any gate: there are k slots;
/// layer j may start loading once a slot is free; after every k' computed layers those k' leave together and give
/// their k' slots back (the last layer closes its group whatever its size). When loads are much faster than
/// computes, every load starts as early as that rule allows, so the order of load starts (L) against group
/// evictions (E) is fixed. The engine, the virtual-time backend and PassSimulator all share one gate, so their
/// agreement cannot catch a gate bug: these literals can.</summary>
public static class HandSchedules
{
    /// <summary>Distinct layer sizes, so that which layers are resident together shows in the peak.</summary>
    public static readonly long[] Sizes = [5000, 1000, 3000, 8000, 2000, 7000];

    /// <summary>(k, k', loads against evictions, eviction groups, most weight bytes resident at once).
    /// The peak is the largest sum of Sizes over a resident set [e, e + k), e a group boundary (0, k', 2k', ...):
    /// e.g. (3, 2): [0..2] = 9000, [2..4] = 13000, [4..5] = 9000, so 13000; with k' ignored (evicting one at a time)
    /// [3..5] = 17000 would be reachable.</summary>
    public static readonly (int K, int S, string Order, string Groups, long PeakWeights)[] Six =
    [
        (1, 1, "L0 E0 L1 E1 L2 E2 L3 E3 L4 E4 L5 E5", "0|1|2|3|4|5", 8000),
        (2, 1, "L0 L1 E0 L2 E1 L3 E2 L4 E3 L5 E4 E5", "0|1|2|3|4|5", 11000),
        (2, 2, "L0 L1 E0,1 L2 L3 E2,3 L4 L5 E4,5", "0,1|2,3|4,5", 11000),
        (3, 1, "L0 L1 L2 E0 L3 E1 L4 E2 L5 E3 E4 E5", "0|1|2|3|4|5", 17000),
        (3, 2, "L0 L1 L2 E0,1 L3 L4 E2,3 L5 E4,5", "0,1|2,3|4,5", 13000),
        (3, 3, "L0 L1 L2 E0,1,2 L3 L4 L5 E3,4,5", "0,1,2|3,4,5", 17000),
        (4, 2, "L0 L1 L2 L3 E0,1 L4 L5 E2,3 E4,5", "0,1|2,3|4,5", 20000),
        (4, 3, "L0 L1 L2 L3 E0,1,2 L4 L5 E3,4,5", "0,1,2|3,4,5", 17000),
        (5, 4, "L0 L1 L2 L3 L4 E0,1,2,3 L5 E4,5", "0,1,2,3|4,5", 19000),
        (6, 6, "L0 L1 L2 L3 L4 L5 E0,1,2,3,4,5", "0,1,2,3,4,5", 26000),
    ];

    public static TheoryData<int, int> Knobs()
    {
        var data = new TheoryData<int, int>();
        foreach (var c in Six) data.Add(c.K, c.S);
        return data;
    }

    public static (int K, int S, string Order, string Groups, long PeakWeights) For(int k, int s) => Six.Single(c => c.K == k && c.S == s);

    /// <summary>Six layers of <see cref="Sizes"/>, one-byte activations, a millisecond of compute each.</summary>
    public static readonly ModelCost FastLoads = new("distinct", 1,
        [.. HandSchedules.Sizes.Select((b, i) => new LayerCost($"l{i}", b, 1e9, 1))]);

    /// <summary>8000 bytes load in 8 µs; a layer computes in 1 ms.</summary>
    public static readonly DeviceCost FastLoadsDevice = new("gpu", 1L << 40, LinkBytesPerSecond: 1e9, FlopsPerSecond: 1e12);

    /// <summary>A pass over <see cref="FastLoads"/> follows the hand schedule exactly.</summary>
    public static void CheckAgainstHand(SimulatedPass pass, string order, string groups, long peakWeights)
    {
        Assert.Equal(order, HandSchedules.Order(pass.Timeline));
        Assert.Equal(groups, HandSchedules.Groups(pass.Timeline));
        // A group leaves when the compute of its last layer ends.
        foreach (var g in HandSchedules.ParseGroups(groups))
        {
            var closer = pass.Timeline[g[^1]];
            Assert.All(g, i => Assert.Equal(closer.ComputeStart + closer.ComputeSeconds, pass.Timeline[i].EvictAt, 12));
        }
        Assert.Equal(peakWeights + 2, pass.PeakDeviceBytes);
    }

    /// <summary>The groups of a hand schedule, each in eviction order.</summary>
    public static int[][] ParseGroups(string groups) => [.. groups.Split('|').Select(g => g.Split(',').Select(int.Parse).ToArray())];

    /// <summary>The load starts and group evictions of a timeline as "L0 L1 E0,1 ...": in time order, an eviction
    /// before a load at the same instant (the slot is returned, then taken). Groups are the layers with the same
    /// eviction time, as the report records them.</summary>
    public static string Order(IReadOnlyList<LayerTiming> timeline)
    {
        var loads = timeline.Select(t => (At: t.LoadStart, First: 1, Text: $"L{t.Index}"));
        var evictions = timeline.Where(t => t.EvictAt >= 0).GroupBy(t => t.EvictAt)
            .Select(g => (At: g.Key, First: 0, Text: "E" + string.Join(",", g.Select(t => t.Index).Order())));
        return string.Join(" ", loads.Concat(evictions).OrderBy(e => e.At).ThenBy(e => e.First).Select(e => e.Text));
    }

    /// <summary>Eviction groups as a timeline records them: layers sharing an eviction time, in time order.</summary>
    public static string Groups(IReadOnlyList<LayerTiming> timeline) =>
        string.Join("|", timeline.Where(t => t.EvictAt >= 0).GroupBy(t => t.EvictAt).OrderBy(g => g.Key)
            .Select(g => string.Join(",", g.Select(t => t.Index).Order())));
}

/// <summary>The load gate against schedules worked out by hand (<see cref="HandSchedules"/>): the gate alone, stepped
/// as loads that take no time and computes that take long; and the analytic simulator over a model with distinct
/// layer sizes, where loads are fast, so the order, the groups and the peak all follow from the rule.</summary>
public sealed class LoadGateSpec
{
    /// <summary>Admits every layer the gate allows, then computes the next one (trying again to admit while it computes)
    /// and evicts what it closes; repeats.
    /// Records "Lj" per admission and "Ea,b" per group, and the most weight bytes the gate counted resident.</summary>
    static (string Order, long PeakBytes) Step(LoadGate gate, int layers)
    {
        var log = new List<string>();
        long peak = 0;
        int next = 0;
        void AdmitAll()
        {
            while (next < layers && gate.CanAdmit(next))
            {
                gate.Admit(next);
                log.Add($"L{next++}");
                peak = Math.Max(peak, gate.ResidentBytes);
            }
        }
        for (int c = 0; c < layers; c++)
        {
            AdmitAll();
            Assert.True(c < next, $"layer {c} was never admitted: the gate stalled ({gate.Describe()}, {gate.ResidentCount} resident)");
            var group = gate.GroupClosedBy(c);
            AdmitAll(); // while layer c computes: nothing it will evict is free yet
            gate.Computed(c, group);
            if (group.Count > 0) log.Add("E" + string.Join(",", group));
        }
        Assert.Equal(0, gate.ResidentCount);
        Assert.Equal(0, gate.ResidentBytes);
        return (string.Join(" ", log), peak);
    }

    static WindowGate Window(int k, int s, long[] sizes) => new(OffloadPolicy.For(new PolicySpec(k, s), sizes.Length), sizes);

    [Theory]
    [MemberData(nameof(HandSchedules.Knobs), MemberType = typeof(HandSchedules))]
    public void The_gate_admits_and_evicts_in_the_order_worked_out_by_hand(int k, int s)
    {
        var expected = HandSchedules.For(k, s);
        var (order, peak) = Step(Window(k, s, HandSchedules.Sizes), HandSchedules.Sizes.Length);
        Assert.Equal(expected.Order, order);
        Assert.Equal(expected.PeakWeights, peak);
    }

    [Fact]
    public void The_gate_never_counts_more_than_k_layers_and_frees_exactly_the_closed_group()
    {
        // Every (k, k') of seven layers: resident counts step up by one per admission and down by k' per group.
        for (int k = 1; k <= 7; k++)
            for (int s = 1; s <= k; s++)
            {
                var gate = Window(k, s, [1, 2, 4, 8, 16, 32, 64]);
                int next = 0, evicted = 0;
                for (int c = 0; c < 7; c++)
                {
                    while (next < 7 && gate.CanAdmit(next)) gate.Admit(next++);
                    // By hand: the first `evicted` layers are gone, so layers [evicted, next) are resident, and a
                    // full window means no slot is free: next = min(evicted + k, 7).
                    Assert.Equal(Math.Min(evicted + k, 7), next);
                    Assert.Equal(next - evicted, gate.ResidentCount);
                    Assert.Equal(Enumerable.Range(evicted, next - evicted).Sum(i => 1L << i), gate.ResidentBytes);
                    var group = gate.GroupClosedBy(c);
                    bool closes = (c + 1) % s == 0 || c == 6;
                    Assert.Equal(closes ? Enumerable.Range(evicted, c + 1 - evicted).ToArray() : Array.Empty<int>(), group.ToArray());
                    gate.Computed(c, group);
                    if (closes) evicted = c + 1;
                }
            }
    }

    /// <summary>Loads take microseconds, computes a millisecond: the analytic simulator must follow the hand schedule
    /// exactly. Activations are one byte, so the peak is the weights plus a layer's input and output.</summary>
    [Theory]
    [MemberData(nameof(HandSchedules.Knobs), MemberType = typeof(HandSchedules))]
    public void The_simulator_follows_the_hand_schedule_and_peaks_at_the_hand_derived_bytes(int k, int s)
    {
        var expected = HandSchedules.For(k, s);
        var pass = PassSimulator.Run(HandSchedules.FastLoads, HandSchedules.FastLoadsDevice, Window(k, s, HandSchedules.Sizes));
        HandSchedules.CheckAgainstHand(pass, expected.Order, expected.Groups, expected.PeakWeights);
    }

    [Fact]
    public void Knob_pairs_whose_schedules_must_differ_differ_in_order_and_peak()
    {
        // Sanity of the table itself: pairs the rule tells apart are told apart by the hand schedules.
        Assert.NotEqual(HandSchedules.For(3, 2).Order, HandSchedules.For(3, 1).Order);
        Assert.NotEqual(HandSchedules.For(3, 2).PeakWeights, HandSchedules.For(3, 1).PeakWeights);
        Assert.NotEqual(HandSchedules.For(4, 3).PeakWeights, HandSchedules.For(4, 2).PeakWeights);
        Assert.NotEqual(HandSchedules.For(2, 2).Order, HandSchedules.For(2, 1).Order);
        Assert.Equal(HandSchedules.Six.Length, HandSchedules.Six.Select(c => c.Order).Distinct().Count());
    }
}
