using Superpipeline.Engine.Policy;
using Superpipeline.Contracts;
using Superpipeline.Engine.Models;

namespace Superpipeline.Engine.Simulation;

/// <summary>One evaluated choice of knobs: its simulated time and peak bytes.</summary>
public sealed record PlanPoint(int Window, int Swap, int Batch, double MakespanSeconds, long PeakDeviceBytes)
{
    /// <summary>Seconds per sample: what a throughput-minded choice of batch minimises.</summary>
    public double SecondsPerSample => MakespanSeconds / Batch;
}

/// <summary>The planner's answer: the chosen point and how many simulations it took.</summary>
public sealed record Plan(PlanPoint Best, int Simulated, long BudgetBytes)
{
    public PolicySpec Policy => new(Best.Window, Best.Swap);
}

/// <summary>The generation planner's answer (<see cref="Planner.ChooseForGeneration"/>): the chosen policy with its estimate,
/// k = k' = 1 without pins estimated alike (what the choice is measured against), the costs it used and how many generations
/// it simulated.</summary>
public sealed record GenerationPlan(GenerationEstimate Best, GenerationEstimate Synchronous, GenerationCosts Costs, int Simulated)
{
    /// <summary>What to run: (k, k') and the pinned count (window = all when every layer is pinned).</summary>
    public PolicySpec Policy => Best.Policy;

    /// <summary>Predicted decode tokens/s of the plan ÷ that of k = k' = 1.</summary>
    public double SpeedupOverSynchronous => Best.DecodeTokensPerSecond / Synchronous.DecodeTokensPerSecond;
}

/// <summary>Chooses k and k' (and the batch, when several are allowed) for a memory budget so as to minimise
/// time per sample, using <see cref="PassSimulator"/>. For each k' it finds by bisection the largest window whose
/// simulated peak fits the budget (a larger window never holds fewer bytes at a time), then compares those
/// points and their neighbours: O(L log L) simulations instead of the L²/2 of the full grid.</summary>
public static class Planner
{
    public static Plan Choose(Func<int, ModelCost> modelForBatch, IReadOnlyList<int> batches, DeviceCost device, long budgetBytes)
    {
        if (batches.Count == 0) throw new ArgumentException("the planner needs at least one batch size");
        PlanPoint? best = null;
        int simulated = 0;
        foreach (var batch in batches)
        {
            var model = modelForBatch(batch);
            int n = model.Layers.Length;
            var cache = new Dictionary<(int, int), PlanPoint>();
            PlanPoint Eval(int k, int s)
            {
                if (!cache.TryGetValue((k, s), out var p))
                {
                    var pass = PassSimulator.Run(model, device, Gate(model, k, s));
                    cache[(k, s)] = p = new PlanPoint(k, s, batch, pass.MakespanSeconds, pass.PeakDeviceBytes);
                    simulated++;
                }
                return p;
            }
            for (int s = 1; s <= n; s++)
            {
                // The smallest window with this swap does not fit (a larger swap still may: layer sizes differ).
                if (Eval(s, s).PeakDeviceBytes > budgetBytes) continue;
                int lo = s, hi = n; // invariant: Eval(lo, s) fits
                while (lo < hi)
                {
                    int mid = (lo + hi + 1) / 2;
                    if (Eval(mid, s).PeakDeviceBytes <= budgetBytes) lo = mid; else hi = mid - 1;
                }
                foreach (var k in new[] { lo, lo - 1 }.Where(k => k >= s))
                {
                    var p = Eval(k, s);
                    if (p.PeakDeviceBytes <= budgetBytes && (best is null || p.SecondsPerSample < best.SecondsPerSample)) best = p;
                }
            }
        }
        return best is null
            ? throw new ArgumentException($"no window fits {ByteSize.Format(budgetBytes)}: even one layer at a time with its activations needs more")
            : new Plan(best, simulated, budgetBytes);
    }

    static WindowGate Gate(ModelCost model, int k, int s) =>
        new(OffloadPolicy.For(new PolicySpec(k, s), model.Layers.Length), [.. model.Layers.Select(l => l.Bytes)]);

    public static Plan Choose(ModelCost model, DeviceCost device, long budgetBytes) => Choose(_ => model, [1], device, budgetBytes);

    /// <summary>Most device bytes a pass under <paramref name="policy"/> can hold with its pinned layers, whatever the timing:
    /// the pinned layers' weights, the window's k largest streamed layers, and the largest input + output + workspace of a
    /// computing layer (<see cref="ModelCost.ActivationBoundBytes"/>). Window = all: the whole model with the activations.</summary>
    public static long PinnedNeedBytes(ModelCost model, OffloadPolicy policy)
    {
        var (pinned, window) = PinnedAndWindowBytes(model, policy);
        return pinned + window + model.ActivationBoundBytes();
    }

    static (long Pinned, long Window) PinnedAndWindowBytes(ModelCost model, OffloadPolicy policy)
    {
        int n = model.Layers.Length;
        if (policy.IsResident) return (model.Bytes, 0);
        var pinned = policy.PinnedSet(n);
        long window = Enumerable.Range(0, n).Where(i => !pinned.Contains(i)).Select(i => model.Layers[i].Bytes).OrderDescending().Take(policy.Window).Sum();
        return (pinned.Sum(i => model.Layers[i].Bytes), window);
    }

    /// <summary>Refuses pinned layers that do not fit <paramref name="capacityBytes"/> beside the window (see
    /// <see cref="PinnedNeedBytes"/>), with a <see cref="FieldException"/> naming the resident layers and every figure.</summary>
    public static void CheckPinsFit(ModelCost model, OffloadPolicy policy, long capacityBytes)
    {
        if (policy.Pinned == 0 || policy.IsResident) return;
        var (pinned, window) = PinnedAndWindowBytes(model, policy);
        long act = model.ActivationBoundBytes(), need = pinned + window + act;
        if (need > capacityBytes)
            throw new FieldException(FieldException.ResidentLayers, $"{policy.Pinned} with window {policy.Window} need {need:N0} bytes on the device "
                + $"({pinned:N0} pinned + {window:N0} for the window's largest streamed layers + {act:N0} of activations and workspace); "
                + $"the device has {capacityBytes:N0}");
    }

    /// <summary>The most layers that can be pinned beside <paramref name="window"/>'s streamed layers within
    /// <paramref name="budgetBytes"/> (by <see cref="PinnedNeedBytes"/>); 0 when none fit.</summary>
    public static int MostPinned(ModelCost model, OffloadPolicy window, long budgetBytes)
    {
        if (window.IsResident) return 0; // window = all pins every layer already
        for (int pins = model.Layers.Length; pins > 0; pins--)
            if (PinnedNeedBytes(model, window with { Pinned = pins }) <= budgetBytes) return pins;
        return 0;
    }

    /// <summary>Resolves <c>--resident-layers auto</c> beside a window the job gives: <paramref name="asked"/> with the most
    /// layers pinned that fit <paramref name="budgetBytes"/>.</summary>
    public static PolicySpec PinFor(ModelCost model, PolicySpec asked, long budgetBytes)
    {
        var window = OffloadPolicy.For(asked with { ResidentAuto = false, ResidentLayers = 0 }, model.Layers.Length);
        return asked with { ResidentAuto = false, ResidentLayers = MostPinned(model, window, budgetBytes) };
    }

    /// <summary><c>--window auto --resident-layers auto</c>: for every pinned count, and every k', the largest window whose
    /// pass fits <paramref name="budgetBytes"/> (by <see cref="PinnedNeedBytes"/>) is simulated with the pinned layers
    /// already resident (a decode pass); the fastest wins, more pins on a tie (fewer bytes cross the link). With
    /// <paramref name="pins"/> given (<c>--window auto --resident-layers N</c>) only the window is chosen, beside that many.</summary>
    public static PolicySpec ChooseWithPins(ModelCost model, DeviceCost device, long budgetBytes, int? pins = null)
    {
        int n = model.Layers.Length;
        long[] bytes = [.. model.Layers.Select(l => l.Bytes)];
        (double Seconds, PolicySpec Policy)? best = null;
        if (pins is < 0 || pins > n) throw new FieldException(FieldException.ResidentLayers, $"must be from 0 to {n} (the model's layers); got {pins}");
        for (int p = pins ?? n; p >= (pins ?? 0); p--)
        {
            var pinned = PinnedLayers.Spread(p, n);
            int streamed = n - p;
            for (int s = 1; s <= Math.Max(1, streamed); s++)
            {
                var spec = Enumerable.Range(s, Math.Max(1, streamed) - s + 1).Reverse().Select(k => new PolicySpec(k, s, ResidentLayers: p))
                    .FirstOrDefault(p => PinnedNeedBytes(model, OffloadPolicy.For(p, n)) <= budgetBytes);
                if (spec is null) continue;
                var policy = OffloadPolicy.For(spec, n);
                double seconds = PassSimulator.Run(model, device, policy.CreateGate(bytes, pinned), pinned).MakespanSeconds;
                if (best is null || seconds < best.Value.Seconds) best = (seconds, spec);
            }
        }
        return best?.Policy ?? (pins > 0
            ? throw new FieldException(FieldException.ResidentLayers, $"{pins} leave no room for a window in {budgetBytes:N0} bytes: they need "
                + $"{PinnedNeedBytes(model, OffloadPolicy.WindowOf(1, 1) with { Pinned = pins.Value }):N0} with one streamed layer and the activations")
            : throw new ArgumentException($"no window fits {ByteSize.Format(budgetBytes)}: even one layer at a time with its activations needs more"));
    }

    /// <summary><c>generate --window auto --resident-layers auto</c>: the (k, k') and pinned count with the most decode tokens/s
    /// (<see cref="GenerationSimulator.Estimate"/>) whose timing-independent need (<see cref="GenerationEstimate.NeedBytes"/>:
    /// pinned layers, the window's largest streamed layers, activations of either phase and, with <see cref="KvPlacement.Device"/>,
    /// every KV cache) and simulated peak fit <see cref="DeviceCost.CapacityBytes"/>. For every pinned count and every k' the
    /// largest window that fits is simulated, as <see cref="ChooseWithPins"/> does for single passes, and k = k' = 1 without pins
    /// is always a candidate, so the plan never loses to it in the simulator; on a tie the one with more pins wins (fewer bytes
    /// cross the link), then the smaller window. With <paramref name="pins"/> given (<c>--resident-layers N</c>) only the window
    /// is chosen, beside that many.</summary>
    /// <param name="device">The device's capacity, link and compute rate (see <c>DeviceCalibration</c>; a decode pass on a CPU
    /// is memory-bound, so a rate measured on decode passes predicts decode best).</param>
    /// <exception cref="FieldException">Naming <see cref="FieldException.DeviceMemory"/> when not even k = k' = 1 fits (with the
    /// device KV caches), or <see cref="FieldException.ResidentLayers"/> when the given pins leave no room for a window.</exception>
    public static GenerationPlan ChooseForGeneration(LayeredModel model, DeviceCost device, GenerationShape shape, int? pins = null)
    {
        var costs = GenerationCosts.Of(model, shape);
        int n = model.Layers.Count;
        if (pins is < 0 || pins > n) throw new FieldException(FieldException.ResidentLayers, $"must be from 0 to {n} (the model's layers); got {pins}");
        int simulated = 0;
        GenerationEstimate Simulate(PolicySpec spec)
        {
            simulated++;
            return GenerationSimulator.Estimate(costs, device, spec);
        }
        long Need(PolicySpec spec) =>
            PinnedNeedBytes(costs.Decode, OffloadPolicy.For(spec, n)) - costs.Decode.ActivationBoundBytes() + costs.ActivationBoundBytes
            + costs.FixedDeviceBytes;

        var synchronous = Simulate(new PolicySpec(1, 1));
        GenerationEstimate? best = pins is null or 0 && synchronous.FitsIn(device.CapacityBytes) ? synchronous : null;
        for (int p = pins ?? n; p >= (pins ?? 0); p--)
        {
            int streamed = n - p;
            // Every layer pinned is window = all: nothing moves after the prefill.
            if (streamed == 0)
            {
                Consider(Simulate(PolicySpec.Resident));
                continue;
            }
            for (int s = 1; s <= streamed; s++)
            {
                var spec = Enumerable.Range(s, streamed - s + 1).Reverse().Select(k => new PolicySpec(k, s, ResidentLayers: p))
                    .FirstOrDefault(x => Need(x) <= device.CapacityBytes);
                if (spec is null) continue;
                Consider(Simulate(spec));
            }
        }
        void Consider(GenerationEstimate e)
        {
            if (!e.FitsIn(device.CapacityBytes)) return;
            if (best is null || e.DecodeTokensPerSecond > best.DecodeTokensPerSecond
                || e.DecodeTokensPerSecond == best.DecodeTokensPerSecond && Rank(e.Policy).CompareTo(Rank(best.Policy)) > 0) best = e;
        }
        (int Pins, int Smaller) Rank(PolicySpec x) => (x.Window is null ? n : x.ResidentLayers, -(x.Window ?? n));
        if (best is null)
        {
            if (pins > 0)
                throw new FieldException(FieldException.ResidentLayers, $"{pins} leave no room for a window in {device.CapacityBytes:N0} bytes: they need "
                    + $"{Need(new PolicySpec(1, 1, ResidentLayers: pins.Value)):N0} with one streamed layer, the activations and the device KV caches");
            throw new FieldException(FieldException.DeviceMemory, $"{device.CapacityBytes:N0} bytes cannot generate {shape.NewTokens} tokens for {shape.Batch} "
                + $"rows of {shape.Prompt}: one layer at a time needs {synchronous.NeedBytes:N0} (of which {costs.FixedDeviceBytes:N0} for the KV caches "
                + "on the device)");
        }
        return new GenerationPlan(best, synchronous, costs, simulated);
    }

    /// <summary>Every (k, k') that fits the budget: the exhaustive grid the planner is checked against.</summary>
    public static IReadOnlyList<PlanPoint> Grid(ModelCost model, DeviceCost device, long budgetBytes, int batch = 1)
    {
        int n = model.Layers.Length;
        var points = new List<PlanPoint>();
        for (int k = 1; k <= n; k++)
            for (int s = 1; s <= k; s++)
            {
                var pass = PassSimulator.Run(model, device, Gate(model, k, s));
                if (pass.PeakDeviceBytes <= budgetBytes) points.Add(new PlanPoint(k, s, batch, pass.MakespanSeconds, pass.PeakDeviceBytes));
            }
        return points;
    }
}
