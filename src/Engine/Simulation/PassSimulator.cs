using System.Collections.Immutable;
using Superpipeline.Engine.Policy;
using Superpipeline.Contracts;

namespace Superpipeline.Engine.Simulation;

/// <summary>The outcome of a simulated pass: makespan, peak device bytes and the per-layer timeline.</summary>
public sealed record SimulatedPass(
    string Policy,
    double MakespanSeconds,
    long PeakDeviceBytes,
    long BytesTransferred,
    double LowerBoundSeconds,
    ImmutableArray<LayerTiming> Timeline)
{
    /// <summary>Set when the schedule needs more bytes than the device has.</summary>
    public string? OutOfMemory { get; init; }
    public bool Fits => OutOfMemory is null;

    /// <summary>A pass from its per-layer start and end times (seconds), as the simulator and the virtual-time device record them.</summary>
    public static SimulatedPass From(string policy, ModelCost model, DeviceCost device, double end, long transferred, MemoryLog memory,
        double[] loadStart, double[] loadEnd, double[] computeStart, double[] computeEnd, double[] evictAt)
    {
        var timeline = Enumerable.Range(0, model.Layers.Length).Select(i => new LayerTiming(i, model.Layers[i].Name, model.Layers[i].Bytes,
            loadStart[i], loadEnd[i] - loadStart[i], computeStart[i], computeEnd[i] - computeStart[i], evictAt[i])).ToImmutableArray();
        return new SimulatedPass(policy, end, memory.Peak().Peak, transferred, PassReport.LowerBound(timeline), timeline)
        {
            OutOfMemory = CheckFits(memory, device),
        };
    }

    /// <summary>The out-of-memory text for a peak read from <paramref name="memory"/>, or null if it fits.</summary>
    public static string? CheckFits(MemoryLog memory, DeviceCost device)
    {
        var (peak, at, what) = memory.Peak();
        return peak > device.CapacityBytes
            ? $"device {device.Name} out of memory: {ByteSize.Format(peak)} needed at t={at:0.###} s ({what}), "
              + $"{ByteSize.Format(device.CapacityBytes)} available"
            : null;
    }
}

/// <summary>An analytic, event-driven simulator of one pass (no actors, no threads). It follows the loader's
/// rules exactly: the input goes up first; layers load one at a time over the link, in order, each when the
/// <see cref="LoadGate"/> admits it; layer i computes when it is loaded and layer i−1 has computed; a group
/// closed by a compute is evicted when that compute ends; the output comes back over the link last. Weights
/// are reserved when their load starts, a layer's output and workspace when its compute starts, and its
/// workspace and input are freed when its compute ends.
/// <para>Pinned layers (<see cref="LoadGate.Pinned"/>) are never evicted. Those in <paramref name="warm"/> are already on the
/// device when the pass begins (a later pass of the job): their bytes count from the start, nothing crosses the link for
/// them, and their "load" takes no time once the load before it has ended (the loader takes layers in order).</para></summary>
public static class PassSimulator
{
    public static SimulatedPass Run(ModelCost model, DeviceCost device, LoadGate gate, IReadOnlySet<int>? warm = null)
    {
        int n = model.Layers.Length;
        var memory = new MemoryLog();
        warm ??= ImmutableSortedSet<int>.Empty;
        foreach (var w in warm)
        {
            if (!gate.Pinned.Contains(w)) throw new ArgumentException($"layer {w} is already resident but not pinned", nameof(warm));
            memory.Reserve(0, model.Layers[w].Bytes, $"pinned layer {w} ({model.Layers[w].Name}) weights");
        }
        double[] loadStart = new double[n], loadEnd = new double[n], computeStart = new double[n], computeEnd = new double[n], evictAt = new double[n];
        Array.Fill(evictAt, -1);
        var groups = new IReadOnlyList<int>[n];

        memory.Reserve(0, model.InputBytes, "the pass input");
        double linkFree = device.TransferSeconds(model.InputBytes);
        double computeFree = linkFree;
        long transferred = model.InputBytes;

        // Events in time order: a load ends (link frees) or a compute ends (evictions, gate frees).
        // Between events, start whatever may start: the next compute, then the next load.
        int nextLoad = 0, nextCompute = 0;
        var pending = new PriorityQueue<(bool IsCompute, int Layer), (double, int)>();
        int seq = 0;
        double now = linkFree;
        bool linkBusy = false, computeBusy = false;
        var loaded = new bool[n];
        while (true)
        {
            if (!computeBusy && nextCompute < n && loaded[nextCompute])
            {
                int i = nextCompute++;
                computeStart[i] = Math.Max(now, computeFree);
                memory.Reserve(computeStart[i], model.Layers[i].OutputBytes, $"the output of layer {i} ({model.Layers[i].Name})");
                memory.Reserve(computeStart[i], model.Layers[i].WorkspaceBytes, $"the workspace of layer {i} ({model.Layers[i].Name})");
                groups[i] = gate.GroupClosedBy(i);
                computeEnd[i] = computeStart[i] + device.ComputeSeconds(model.Layers[i].Flops);
                computeBusy = true;
                pending.Enqueue((true, i), (computeEnd[i], seq++));
                continue;
            }
            if (!linkBusy && nextLoad < n && gate.CanAdmit(nextLoad))
            {
                int i = nextLoad++;
                gate.Admit(i);
                if (warm.Contains(i))
                {
                    loadStart[i] = loadEnd[i] = Math.Max(now, linkFree);
                    loaded[i] = true;
                    continue;
                }
                loadStart[i] = Math.Max(now, linkFree);
                memory.Reserve(loadStart[i], model.Layers[i].Bytes, $"layer {i} ({model.Layers[i].Name}) weights");
                transferred += model.Layers[i].Bytes;
                loadEnd[i] = loadStart[i] + device.TransferSeconds(model.Layers[i].Bytes);
                linkBusy = true;
                pending.Enqueue((false, i), (loadEnd[i], seq++));
                continue;
            }
            if (!pending.TryDequeue(out var e, out var key)) break;
            now = key.Item1;
            if (e.IsCompute)
            {
                int i = e.Layer;
                computeBusy = false;
                computeFree = now;
                memory.Free(now, model.Layers[i].WorkspaceBytes, $"the workspace of layer {i}");
                memory.Free(now, model.InputBytesOf(i), $"the input of layer {i}");
                foreach (var g in groups[i])
                {
                    memory.Free(now, model.Layers[g].Bytes, $"layer {g} weights");
                    evictAt[g] = now;
                }
                gate.Computed(i, groups[i]);
            }
            else
            {
                loaded[e.Layer] = true;
                linkBusy = false;
                linkFree = now;
            }
        }
        if (nextCompute < n) throw new InvalidOperationException($"the policy stalled at layer {nextCompute}: {gate.Describe()}");

        long outBytes = model.Layers[^1].OutputBytes;
        double end = computeEnd[^1] + device.TransferSeconds(outBytes);
        memory.Free(end, outBytes, "the pass output");

        return SimulatedPass.From(gate.Describe(), model, device, end, transferred, memory, loadStart, loadEnd, computeStart, computeEnd, evictAt);
    }
}
