using Superpipeline.Contracts;
using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Devices;

/// <summary>An accelerator as the loader sees it (owned by the engine; made by <see cref="DeviceFactory"/>): a name, exact
/// byte accounting, a transfer thread that copies host tensors onto the device and a compute thread where all of the
/// device's TorchSharp work runs, and an upload that reserves the bytes first and leaves nothing reserved when a copy
/// fails. A device kind (<see cref="SimulatedDevice"/>, <see cref="CudaDevice"/>) supplies how one tensor is placed,
/// what happens once a group of copies is issued, and how a result comes back.</summary>
public abstract class Accelerator : IDisposable
{
    readonly DeviceThread _transfer;
    readonly DeviceThread _compute;

    protected Accelerator(string name, long capacityBytes, double? linkGBps)
    {
        if (linkGBps is <= 0 or double.NaN)
            throw new ArgumentOutOfRangeException(nameof(linkGBps), linkGBps, "link bandwidth must be a positive number of GB/s");
        Name = name;
        Memory = new DeviceMemory(name, capacityBytes);
        LinkBytesPerSecond = linkGBps * 1e9;
        _transfer = new DeviceThread($"{name}-transfer");
        _compute = new DeviceThread($"{name}-compute");
    }

    /// <summary>Runtime name, e.g. "sim:0" or "cuda:1".</summary>
    public string Name { get; }
    public abstract DeviceKind Kind { get; }
    public DeviceMemory Memory { get; }
    /// <summary>Emulated or nominal host→device bandwidth in bytes per second; null when unbounded/unknown.</summary>
    public double? LinkBytesPerSecond { get; }
    /// <summary>Whether host tensors should be pinned before transfer (CUDA only).</summary>
    public abstract bool WantsPinnedHost { get; }

    /// <summary>Runs <paramref name="work"/> on the device's copy thread.</summary>
    public Task<T> OnTransferThread<T>(Func<T> work) => _transfer.Run(work);
    /// <summary>Runs <paramref name="work"/> on the device's compute thread.</summary>
    public Task<T> OnComputeThread<T>(Func<T> work) => _compute.Run(work);

    /// <summary>The dtype layers compute in on this device. Weights stored narrower (F16, BF16) cross the link as stored and are
    /// widened to it on the device.</summary>
    public virtual ScalarType ComputeDType => ScalarType.Float32;

    /// <summary>Copies host tensors onto the device in their stored dtype, reserving their bytes first, and widens a tensor stored
    /// as F16 or BF16 to <see cref="ComputeDType"/> on the device. The link carries (and the emulated link times) the stored
    /// bytes. A device that widens in place (<see cref="WidensInPlace"/>: it widens as it copies, holding no stored
    /// copy) reserves only the widened bytes; otherwise the stored copy's bytes are reserved, then the widened copy's, and the
    /// stored copy and its bytes are freed, one tensor at a time (the layer holds at most its widened bytes plus one stored
    /// tensor while it is placed). Call on the transfer thread. On failure nothing stays reserved.</summary>
    public DeviceTensors Upload(IReadOnlyList<(string Name, Tensor Host)> tensors, string what)
    {
        long moved = tensors.Sum(t => TensorBytes.Of(t.Host));
        var placed = new Dictionary<string, Tensor>(tensors.Count);
        var held = new List<DeviceMemory.Reservation>(tensors.Count);
        try
        {
            long start = Stopwatch.GetTimestamp();
            foreach (var (name, host) in tensors)
            {
                using var detached = host.detach();
                if (!Widens(host.dtype))
                {
                    held.Add(Memory.Reserve(TensorBytes.Of(host), what));
                    placed[name] = Place(detached);
                    continue;
                }
                var stored = WidensInPlace(host) ? null : Memory.Reserve(TensorBytes.Of(host), what);
                if (stored is not null) held.Add(stored);
                held.Add(Memory.Reserve(TensorBytes.Of([.. host.shape], ComputeDType), $"{what} (widened to {ComputeDType})"));
                placed[name] = PlaceWidened(detached);
                if (stored is null) continue;
                held.Remove(stored);
                stored.Dispose();
            }
            Copied(start, moved);
            return new DeviceTensors(placed, held, moved);
        }
        catch
        {
            foreach (var t in placed.Values) t.Dispose();
            foreach (var r in held) r.Dispose();
            throw;
        }
    }

    /// <summary>Whether a tensor placed as <paramref name="dtype"/> is widened to <see cref="ComputeDType"/>.</summary>
    bool Widens(ScalarType dtype) => dtype is ScalarType.Float16 or ScalarType.BFloat16 && dtype != ComputeDType;

    /// <summary>True when <see cref="PlaceWidened"/> holds no memory beyond the widened tensor for <paramref name="host"/>.</summary>
    protected virtual bool WidensInPlace(Tensor host) => false;

    /// <summary>A copy of the F16/BF16 <paramref name="host"/> on this device, widened to <see cref="ComputeDType"/>: by default
    /// the stored copy is placed, widened and dropped.</summary>
    protected virtual Tensor PlaceWidened(Tensor host)
    {
        using var stored = Place(host);
        return stored.to_type(ComputeDType);
    }

    /// <summary>A copy of <paramref name="host"/> on this device.</summary>
    protected abstract Tensor Place(Tensor host);

    /// <summary>Called once the copies of one upload (<paramref name="bytes"/> in all, begun at <paramref name="start"/>) are issued.</summary>
    protected virtual void Copied(long start, long bytes) { }

    /// <summary>Reserves the bytes of a tensor about to be produced on the device (e.g. a layer's output).</summary>
    public DeviceMemory.Reservation ReserveFor(long[] shape, ScalarType dtype, string what) =>
        Memory.Reserve(TensorBytes.Of(shape, dtype), what);

    /// <summary>Copies a device tensor back to a new host tensor.</summary>
    public abstract Tensor ToHost(Tensor deviceTensor);

    public void Dispose()
    {
        _transfer.Dispose();
        _compute.Dispose();
        GC.SuppressFinalize(this);
    }
}
