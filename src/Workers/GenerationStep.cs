using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Generation;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>Where each attention layer's KV cache lives during a generation session.</summary>
public enum KvPlacement
{
    /// <summary>On the device for the whole session, reserved in its memory (counted in peak bytes).</summary>
    Device,
    /// <summary>With the layer's LayerActor in host memory (FlexGen's placement): the filled part is uploaded with the layer's
    /// weights, the pass's new entries are written back, and the device copy leaves when the layer is evicted.</summary>
    Host,
}

/// <summary>What makes a pass a generation step: its <paramref name="Session"/> (whose KV caches it reads and extends), the
/// step's positions and mask (host tensors, owned by the sender), where the caches live, and their capacity in entries
/// (prompt + new tokens).</summary>
public sealed record GenerationStep(Guid Session, StepContext Context, KvPlacement Placement, long Capacity);

/// <summary>The KV caches one generation session keeps on a device (<see cref="KvPlacement.Device"/>), one per attention
/// layer, each reserved in the device's memory when it is made; and the bytes the device held before the session, from which
/// its peak is measured. Made and used on the device's compute thread; <see cref="Dispose"/> frees every cache and its bytes
/// (the loader calls it there when the session ends or one of its passes fails). After that, asking for a cache fails.</summary>
public sealed class DeviceKvSession(Guid id, long baselineBytes) : IDisposable
{
    readonly Dictionary<int, (KvBuffer Cache, DeviceMemory.Reservation Bytes)> _caches = [];
    readonly object _lock = new();
    bool _closed;

    public Guid Id { get; } = id;
    /// <summary>Device bytes reserved when the session began: its passes' peaks are measured from here.</summary>
    public long BaselineBytes { get; } = baselineBytes;

    /// <summary>Device bytes the session's caches hold now.</summary>
    public long Bytes { get { lock (_lock) return _caches.Values.Sum(c => c.Bytes.Bytes); } }

    /// <summary>Layer <paramref name="layer"/>'s cache, made (zeroed, <paramref name="capacity"/> entries, the dtype and device of
    /// <paramref name="like"/>) and reserved on first use.</summary>
    public KvBuffer For(int layer, string name, KvLayout layout, long batch, long capacity, Tensor like, DeviceMemory memory)
    {
        lock (_lock)
        {
            if (_closed) throw new InvalidOperationException($"generation session {Id} has ended; its KV caches are freed");
            if (_caches.TryGetValue(layer, out var held)) return held.Cache;
            var reservation = memory.Reserve(layout.Bytes(batch, capacity, like.dtype), $"the KV cache of layer {layer} ({name})");
            try
            {
                var cache = KvBuffer.Allocate(layout, batch, capacity, like.dtype, like.device);
                _caches[layer] = (cache, reservation);
                return cache;
            }
            catch
            {
                reservation.Dispose();
                throw;
            }
        }
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _closed = true;
            foreach (var (cache, bytes) in _caches.Values)
            {
                cache.Dispose();
                bytes.Dispose();
            }
            _caches.Clear();
        }
    }
}
