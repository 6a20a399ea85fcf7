using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Devices;

/// <summary>An accelerator as the loader sees it: exact byte accounting, a transfer thread that copies host
/// tensors onto the device, and a compute thread where all of the device's TorchSharp work runs.</summary>
public interface IDevice : IDisposable
{
    /// <summary>Runtime name, e.g. "sim:0" or "cuda:1".</summary>
    string Name { get; }
    /// <summary>"sim" or "cuda".</summary>
    string Kind { get; }
    DeviceMemory Memory { get; }
    /// <summary>Emulated or nominal host→device bandwidth in bytes per second; null when unbounded/unknown.</summary>
    double? LinkBytesPerSecond { get; }
    /// <summary>Whether host tensors should be pinned before transfer (CUDA only).</summary>
    bool WantsPinnedHost { get; }

    /// <summary>Runs <paramref name="work"/> on the device's copy thread.</summary>
    Task<T> OnTransferThread<T>(Func<T> work);
    /// <summary>Runs <paramref name="work"/> on the device's compute thread.</summary>
    Task<T> OnComputeThread<T>(Func<T> work);

    /// <summary>Copies host tensors onto the device, reserving their bytes first. Call on the transfer thread.
    /// On failure nothing stays reserved.</summary>
    DeviceTensors Upload(IReadOnlyList<(string Name, Tensor Host)> tensors, string what);

    /// <summary>Reserves the bytes of a tensor about to be produced on the device (e.g. a layer's output).</summary>
    DeviceMemory.Reservation ReserveFor(long[] shape, ScalarType dtype, string what);

    /// <summary>Copies a device tensor back to a new host tensor.</summary>
    Tensor ToHost(Tensor deviceTensor);
}

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
