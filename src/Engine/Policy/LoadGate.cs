using System.Collections.Immutable;

namespace Superpipeline.Engine.Policy;

/// <summary>Decides when a layer may be loaded onto the device and which layers leave together after compute.
/// The real loader, the virtual-time loader and the analytic simulator all use these same objects, so a policy
/// means the same thing everywhere. State changes only when a layer is admitted (its load starts) and when a
/// group is evicted (at the end of a compute), so the schedule does not depend on the order in which
/// simultaneous events are processed. Not thread-safe: callers serialise access.
/// <para><see cref="Pinned"/> layers stay on the device for the whole job: they are always admissible, take no slot of the
/// policy's (they do not count in <see cref="ResidentCount"/> or <see cref="ResidentBytes"/>), never join an eviction
/// group, and are never evicted. The rest are streamed under the policy.</para></summary>
public abstract class LoadGate
{
    protected LoadGate(IReadOnlyList<long> layerBytes, IReadOnlySet<int>? pinned = null)
    {
        LayerBytes = layerBytes;
        Pinned = pinned ?? ImmutableSortedSet<int>.Empty;
        foreach (var i in Pinned)
            if (i < 0 || i >= layerBytes.Count) throw new ArgumentOutOfRangeException(nameof(pinned), i, $"pinned layer outside 0..{layerBytes.Count - 1}");
    }

    protected IReadOnlyList<long> LayerBytes { get; }
    readonly List<int> _computedNotEvicted = [];

    /// <summary>Layers on the device for the whole job: loaded once, never evicted, outside the policy's slots.</summary>
    public IReadOnlySet<int> Pinned { get; }

    /// <summary>Streamed (not pinned) layers admitted and not yet evicted: the slots in use.</summary>
    public int ResidentCount { get; private set; }
    public long ResidentBytes { get; private set; }

    /// <summary>Weight bytes of the pinned layers admitted so far (in this pass; they are never evicted).</summary>
    public long PinnedBytes { get; private set; }

    /// <summary>Short name for reports ("window 3/1", "bytes 2 GiB/200 MiB").</summary>
    public abstract string Describe();

    /// <summary>Whether <paramref name="layer"/> (the next in order) may start loading now: a pinned layer always may.</summary>
    public bool CanAdmit(int layer) => Pinned.Contains(layer) || CanAdmitStreamed(layer);

    /// <summary>Whether streamed layer <paramref name="layer"/> may start loading now, under the policy.</summary>
    protected abstract bool CanAdmitStreamed(int layer);

    public void Admit(int layer)
    {
        if (!CanAdmit(layer)) throw new InvalidOperationException($"layer {layer} is not admissible now");
        if (Pinned.Contains(layer))
        {
            PinnedBytes += LayerBytes[layer];
            return;
        }
        ResidentCount++;
        ResidentBytes += LayerBytes[layer];
        OnAdmitted(layer);
    }

    protected virtual void OnAdmitted(int layer) { }

    /// <summary>Records that <paramref name="layer"/> is about to compute; returns the layers to evict when its
    /// compute ends (empty while a group is still filling). The last layer always closes its group; pinned layers
    /// never join one.</summary>
    public IReadOnlyList<int> GroupClosedBy(int layer)
    {
        bool last = layer == LayerBytes.Count - 1;
        if (!Pinned.Contains(layer)) _computedNotEvicted.Add(layer);
        if (_computedNotEvicted.Count == 0 || (_computedNotEvicted.Count < GroupSize && !last)) return [];
        var group = _computedNotEvicted.ToArray();
        _computedNotEvicted.Clear();
        return group;
    }

    /// <summary>Most layers this gate can ever hold at once, pinned ones included: the loader buffers that many loaded
    /// layers, so the gate alone decides how far loads run ahead.</summary>
    public abstract int MaxResidentLayers { get; }

    /// <summary>Layers computed and freed together; the paper's k'.</summary>
    protected abstract int GroupSize { get; }

    /// <summary>The compute of <paramref name="layer"/> ended and <paramref name="evicted"/> left the device.</summary>
    public void Computed(int layer, IReadOnlyList<int> evicted)
    {
        foreach (var e in evicted)
        {
            ResidentCount--;
            ResidentBytes -= LayerBytes[e];
        }
        if (!Pinned.Contains(layer)) OnComputed(layer);
    }

    protected virtual void OnComputed(int layer) { }
}

/// <summary>Superpipeline's (k, k'): at most k layers resident; evicted k' at a time. k = k' = 1 is the
/// synchronous, layer-by-layer mode of Accelerate's cpu_offload.
/// <paramref name="pinned"/> layers stay outside the window (see <see cref="LoadGate"/>).</summary>
public sealed class WindowGate(OffloadPolicy policy, IReadOnlyList<long> layerBytes, IReadOnlySet<int>? pinned = null) : LoadGate(layerBytes, pinned)
{
    public OffloadPolicy Policy { get; } = policy;
    protected override int GroupSize => Policy.Swap;
    public override int MaxResidentLayers => Policy.Window + Pinned.Count;
    protected override bool CanAdmitStreamed(int layer) => ResidentCount < Policy.Window;
    public override string Describe() => Policy.IsResident ? "resident (window all)"
        : $"window {Policy.Window}, swap {Policy.Swap}" + (Pinned.Count > 0 ? $", {Pinned.Count} pinned" : "");
}

/// <summary>DeepSpeed ZeRO-Inference style: budgets in bytes rather than layers. A layer may load while the
/// parameters resident stay within <paramref name="liveBytes"/> and the parameters loaded ahead of the compute
/// frontier (admitted, compute not ended) stay within <paramref name="prefetchBytes"/>; one layer may always
/// load when none is ahead. Each layer is freed right after its compute.</summary>
public sealed class ByteBudgetGate : LoadGate
{
    readonly Queue<int> _ahead = new();
    long _aheadBytes;

    public ByteBudgetGate(long liveBytes, long prefetchBytes, IReadOnlyList<long> layerBytes) : base(layerBytes)
    {
        long largest = layerBytes.Max();
        if (liveBytes < largest) throw new ArgumentException($"live-parameter budget {liveBytes:N0} bytes is below the largest layer ({largest:N0} bytes)");
        if (prefetchBytes < 0) throw new ArgumentException("prefetch budget cannot be negative");
        LiveBytes = liveBytes;
        PrefetchBytes = prefetchBytes;
    }

    public long LiveBytes { get; }
    public long PrefetchBytes { get; }
    protected override int GroupSize => 1;
    public override int MaxResidentLayers => LayerBytes.Count;

    protected override bool CanAdmitStreamed(int layer)
    {
        long b = LayerBytes[layer];
        if (_ahead.Count == 0) return ResidentBytes + b <= LiveBytes;
        return ResidentBytes + b <= LiveBytes && _aheadBytes + b <= PrefetchBytes;
    }

    protected override void OnAdmitted(int layer)
    {
        _ahead.Enqueue(layer);
        _aheadBytes += LayerBytes[layer];
    }

    protected override void OnComputed(int layer)
    {
        var done = _ahead.Dequeue();
        if (done != layer) throw new InvalidOperationException($"compute of layer {layer} ended before layer {done}'s");
        _aheadBytes -= LayerBytes[layer];
    }

    public override string Describe() => $"byte budgets: live {ByteSize.Format(LiveBytes)}, prefetch {ByteSize.Format(PrefetchBytes)}";
}
