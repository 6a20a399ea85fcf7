using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Devices;

/// <summary>The default accelerator where there is no CUDA: its tensors are CPU tensors in an arena of its
/// own (counted by <see cref="DeviceMemory"/>), transfers are real copies made on a thread of their own, and
/// an optional link bandwidth stretches each copy to the time PCIe would take. Compute is real.</summary>
public sealed class SimulatedDevice : IDevice
{
    readonly DeviceThread _transfer;
    readonly DeviceThread _compute;

    public SimulatedDevice(string name, long capacityBytes, double? linkGBps = null)
    {
        if (linkGBps is <= 0 or double.NaN) throw new ArgumentOutOfRangeException(nameof(linkGBps), linkGBps, "link bandwidth must be a positive number of GB/s");
        Name = name;
        Memory = new DeviceMemory(name, capacityBytes);
        LinkBytesPerSecond = linkGBps * 1e9;
        _transfer = new DeviceThread($"{name}-transfer");
        _compute = new DeviceThread($"{name}-compute");
    }

    public string Name { get; }
    public string Kind => "sim";
    public DeviceMemory Memory { get; }
    public double? LinkBytesPerSecond { get; }
    public bool WantsPinnedHost => false;

    public Task<T> OnTransferThread<T>(Func<T> work) => _transfer.Run(work);
    public Task<T> OnComputeThread<T>(Func<T> work) => _compute.Run(work);

    public DeviceTensors Upload(IReadOnlyList<(string Name, Tensor Host)> tensors, string what)
    {
        long bytes = tensors.Sum(t => TensorBytes.Of(t.Host));
        var reservation = Memory.Reserve(bytes, what);
        var placed = new Dictionary<string, Tensor>(tensors.Count);
        try
        {
            long start = Stopwatch.GetTimestamp();
            foreach (var (name, host) in tensors)
            {
                using var detached = host.detach();
                placed[name] = detached.clone();
            }
            if (LinkBytesPerSecond is { } bw) WaitUntil(start, bytes / bw);
            return new DeviceTensors(placed, reservation);
        }
        catch
        {
            foreach (var t in placed.Values) t.Dispose();
            reservation.Dispose();
            throw;
        }
    }

    public DeviceMemory.Reservation ReserveFor(long[] shape, ScalarType dtype, string what) =>
        Memory.Reserve(TensorBytes.Of(shape, dtype), what);

    public Tensor ToHost(Tensor deviceTensor) => deviceTensor.clone();

    /// <summary>Holds the transfer thread until <paramref name="seconds"/> have passed since <paramref name="start"/>:
    /// sleeps for the bulk and spins only for the last fraction of a millisecond.</summary>
    static void WaitUntil(long start, double seconds)
    {
        long end = start + (long)(seconds * Stopwatch.Frequency);
        while (true)
        {
            long left = end - Stopwatch.GetTimestamp();
            if (left <= 0) return;
            double ms = left * 1000.0 / Stopwatch.Frequency;
            if (ms > 1.5) Thread.Sleep(TimeSpan.FromMilliseconds(ms - 1.0));
            else Thread.SpinWait(50);
        }
    }

    public void Dispose()
    {
        _transfer.Dispose();
        _compute.Dispose();
    }
}
