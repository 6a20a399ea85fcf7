using static TorchSharp.torch;

namespace Superpipeline.Engine.Devices;

/// <summary>Tensors resident on a device with their reservations; disposing frees both. <see cref="Bytes"/> is what they hold
/// on the device (after any widening); <see cref="TransferredBytes"/> is what crossed the link to put them there (their stored
/// dtype), the same figure unless narrow weights were widened on the device.</summary>
public sealed class DeviceTensors : IDisposable
{
    readonly IReadOnlyList<DeviceMemory.Reservation> _reservations;
    int _disposed;

    public DeviceTensors(IReadOnlyDictionary<string, Tensor> tensors, DeviceMemory.Reservation reservation)
        : this(tensors, [reservation], reservation.Bytes) { }

    /// <param name="transferredBytes">The bytes copied over the link to place <paramref name="tensors"/>.</param>
    public DeviceTensors(IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyList<DeviceMemory.Reservation> reservations, long transferredBytes)
    {
        Tensors = tensors;
        _reservations = reservations;
        TransferredBytes = transferredBytes;
    }

    public IReadOnlyDictionary<string, Tensor> Tensors { get; }
    /// <summary>Device bytes held (reserved) by these tensors.</summary>
    public long Bytes => _reservations.Sum(r => r.Bytes);
    /// <summary>Bytes that crossed the link to place them: the stored dtype's bytes.</summary>
    public long TransferredBytes { get; }
    /// <summary>The version of the host weights these were copied from (a LayerActor's, which training steps bump); 0 otherwise.</summary>
    public long WeightsVersion { get; set; }
    public Tensor this[string name] => Tensors[name];

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        foreach (var t in Tensors.Values) t.Dispose();
        foreach (var r in _reservations) r.Dispose();
    }
}
