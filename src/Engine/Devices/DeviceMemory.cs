namespace Superpipeline.Engine.Devices;

/// <summary>A device refused a reservation: the message gives what was asked for, what is free and the total.</summary>
public sealed class DeviceOutOfMemoryException(string device, string what, long requested, long free, long capacity)
    : Exception($"device {device} out of memory: {what} needs {requested:N0} bytes, {free:N0} of {capacity:N0} bytes free")
{
    public string Device { get; } = device;
    public long Requested { get; } = requested;
    public long Free { get; } = free;
    public long Capacity { get; } = capacity;
}

/// <summary>Exact byte accounting for one device. Every tensor placed on the device reserves
/// numel × element size first; a reservation past capacity fails as CUDA would. Thread-safe.</summary>
public sealed class DeviceMemory(string device, long capacityBytes)
{
    readonly object _gate = new();
    long _reserved;
    long _peak;

    public string Device { get; } = device;
    public long Capacity { get; } = capacityBytes > 0
        ? capacityBytes
        : throw new ArgumentOutOfRangeException(nameof(capacityBytes), capacityBytes, "device capacity must be positive");
    public long Reserved { get { lock (_gate) return _reserved; } }
    public long Free => Capacity - Reserved;
    public long Peak { get { lock (_gate) return _peak; } }

    /// <summary>Reserves <paramref name="bytes"/> for <paramref name="what"/>; dispose the result to give them back.</summary>
    public Reservation Reserve(long bytes, string what)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        lock (_gate)
        {
            if (_reserved + bytes > Capacity)
                throw new DeviceOutOfMemoryException(Device, what, bytes, Capacity - _reserved, Capacity);
            _reserved += bytes;
            if (_reserved > _peak) _peak = _reserved;
        }
        return new Reservation(this, bytes);
    }

    /// <summary>Starts a new peak measurement from the bytes reserved now.</summary>
    public void ResetPeak() { lock (_gate) _peak = _reserved; }

    void Release(long bytes)
    {
        lock (_gate)
        {
            _reserved -= bytes;
            if (_reserved < 0) throw new InvalidOperationException($"device {Device}: released more bytes than reserved");
        }
    }

    /// <summary>Bytes held on the device; released exactly once.</summary>
    public sealed class Reservation(DeviceMemory memory, long bytes) : IDisposable
    {
        int _released;
        public long Bytes { get; } = bytes;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0) memory.Release(Bytes);
        }
    }
}
