using static TorchSharp.torch;

namespace Superpipeline.Engine.Devices;

/// <summary>Tensors resident on a device with their reservation; disposing frees both.</summary>
public sealed class DeviceTensors : IDisposable
{
    readonly DeviceMemory.Reservation _reservation;
    int _disposed;

    public DeviceTensors(IReadOnlyDictionary<string, Tensor> tensors, DeviceMemory.Reservation reservation)
    {
        Tensors = tensors;
        _reservation = reservation;
    }

    public IReadOnlyDictionary<string, Tensor> Tensors { get; }
    public long Bytes => _reservation.Bytes;
    public Tensor this[string name] => Tensors[name];

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        foreach (var t in Tensors.Values) t.Dispose();
        _reservation.Dispose();
    }
}
