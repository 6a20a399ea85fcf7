using Akka.Actor;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;
using Superpipeline.Contracts;
using Superpipeline.Messages;

namespace Superpipeline.Coordinator.Cluster;

/// <summary>Placement's view of a registered device (owned by the coordinator's placement, built from each worker's
/// registration): the worker's agent to send a stage to, its node, and the device as registered.</summary>
public sealed record DeviceSlot(IActorRef Agent, string Node, DeviceInfo Device);

/// <summary>One stage as placed: contiguous layers on one device with its own knobs.</summary>
public sealed record StagePlacement(int Stage, DeviceSlot Slot, int FirstLayer, int LayerCount, PolicySpec Policy, long Bytes, double Flops);

/// <summary>Splits a model into contiguous pipeline stages across devices, balanced by bytes and FLOPs.</summary>
public static class Placement
{
    /// <summary>Places <paramref name="model"/> on up to all of <paramref name="devices"/> (kept in node order so that
    /// consecutive stages share a node where they can, and their activations move in memory). The split minimises
    /// the largest stage share, where a stage's share is the mean of its fraction of the model's bytes and of its
    /// FLOPs; every stage's device must hold its largest layer and the activations. Each stage gets the job's
    /// knobs clipped to its own layers (window all stays all). Throws <see cref="ArgumentException"/> when no split fits.</summary>
    public static IReadOnlyList<StagePlacement> Place(ModelCost model, IReadOnlyList<DeviceSlot> devices, PolicySpec policy)
    {
        if (devices.Count == 0) throw new ArgumentException("no worker devices are registered");
        var ordered = devices.OrderBy(d => d.Node, StringComparer.Ordinal).ThenBy(d => d.Device.Name, StringComparer.Ordinal).ToArray();
        int n = model.Layers.Length;
        long act = model.ActivationBoundBytes();
        double totalBytes = Math.Max(1, model.Bytes), totalFlops = Math.Max(1, model.Flops);
        double Share(int first, int count)
        {
            double b = 0, f = 0;
            for (int i = first; i < first + count; i++) { b += model.Layers[i].Bytes; f += model.Layers[i].Flops; }
            return 0.5 * b / totalBytes + 0.5 * f / totalFlops;
        }
        bool Fits(int first, int count, DeviceSlot slot)
        {
            long largest = 0;
            for (int i = first; i < first + count; i++) largest = Math.Max(largest, model.Layers[i].Bytes);
            return largest + act <= slot.Device.CapacityBytes;
        }

        // Try the most stages first (more devices share the work); fall back to fewer if no split fits.
        for (int stages = Math.Min(ordered.Length, n); stages >= 1; stages--)
        {
            var split = BestSplit(n, stages, (first, count, s) => Fits(first, count, ordered[s]) ? Share(first, count) : double.PositiveInfinity);
            if (split is null) continue;
            var result = new List<StagePlacement>(stages);
            for (int s = 0; s < stages; s++)
            {
                var (first, count) = split[s];
                long bytes = 0; double flops = 0;
                for (int i = first; i < first + count; i++) { bytes += model.Layers[i].Bytes; flops += model.Layers[i].Flops; }
                result.Add(new StagePlacement(s, ordered[s], first, count, Clip(policy, count), bytes, flops));
            }
            return result;
        }
        var largestLayer = model.Layers.Select((l, i) => (l, i)).MaxBy(x => x.l.Bytes);
        throw new ArgumentException($"the job cannot be placed: layer {largestLayer.i} ({largestLayer.l.Name}) needs {largestLayer.l.Bytes + act:N0} bytes "
            + $"with its activations; the largest device has {devices.Max(d => d.Device.CapacityBytes):N0}");
    }

    static PolicySpec Clip(PolicySpec policy, int layers)
    {
        policy = policy with { ResidentLayers = Math.Min(policy.ResidentLayers, layers) }; // pins are per stage
        return policy.Window is null || policy.Auto
            ? policy
            : policy with
            {
                Window = Math.Min(policy.Window.Value, layers), Swap = policy.Swap is { } s ? Math.Min(s, Math.Min(policy.Window.Value, layers)) : null,
            };
    }

    /// <summary>Contiguous split of n layers into exactly <paramref name="stages"/> non-empty parts minimising the
    /// largest cost (dynamic programming, O(stages·n²)); null when every split has an infinite cost.</summary>
    static (int First, int Count)[]? BestSplit(int n, int stages, Func<int, int, int, double> cost)
    {
        var best = new double[stages + 1, n + 1];
        var cut = new int[stages + 1, n + 1];
        for (int s = 0; s <= stages; s++) for (int i = 0; i <= n; i++) best[s, i] = double.PositiveInfinity;
        best[0, 0] = 0;
        for (int s = 1; s <= stages; s++)
            for (int end = s; end <= n; end++)
                for (int start = s - 1; start < end; start++)
                {
                    if (double.IsPositiveInfinity(best[s - 1, start])) continue;
                    double c = Math.Max(best[s - 1, start], cost(start, end - start, s - 1));
                    if (c < best[s, end]) { best[s, end] = c; cut[s, end] = start; }
                }
        if (double.IsPositiveInfinity(best[stages, n])) return null;
        var parts = new (int, int)[stages];
        for (int s = stages, end = n; s >= 1; s--)
        {
            int start = cut[s, end];
            parts[s - 1] = (start, end - start);
            end = start;
        }
        return parts;
    }
}
