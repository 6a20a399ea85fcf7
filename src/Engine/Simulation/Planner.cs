using Superpipeline.Engine.Policy;
using Superpipeline.Contracts;

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
