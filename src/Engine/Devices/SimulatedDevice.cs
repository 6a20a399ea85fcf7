using Superpipeline.Contracts;
using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Devices;

/// <summary>The default accelerator where there is no CUDA: its tensors are CPU tensors counted by <see cref="DeviceMemory"/>,
/// and compute is real. Without a link bandwidth, transfers are real copies made on a thread of their own. With one (an
/// emulated link), the link is a copy engine as PCIe's DMA is: a transfer takes bytes ÷ bandwidth on the transfer thread and
/// no CPU core or memory bandwidth away from compute, so the device's tensors share the host tensors' storage (weights are
/// never written in place) instead of being copied by the CPU that computes. F16/BF16 tensors are still widened into new
/// float32 storage as they arrive.</summary>
public sealed class SimulatedDevice(string name, long capacityBytes, double? linkGBps = null) : Accelerator(name, capacityBytes, linkGBps)
{
    public override DeviceKind Kind => DeviceKind.Sim;
    public override bool WantsPinnedHost => false;

    protected override Tensor Place(Tensor host) => LinkBytesPerSecond is null ? host.clone() : host.alias();

    /// <summary>Always in place: see <see cref="PlaceWidened"/>.</summary>
    protected override bool WidensInPlace(Tensor host) => true;

    /// <summary>Widens while copying: the stored host tensor is copied straight into a new tensor of the compute dtype in the
    /// device's arena (torch's copy_ converts element by element as it reads), so the link reads the stored bytes and the device
    /// never holds a stored copy beside the widened one. Widening F16 and BF16 to float32 is exact.</summary>
    protected override Tensor PlaceWidened(Tensor host)
    {
        var wide = empty(host.shape, ComputeDType);
        try
        {
            wide.copy_(host);
            return wide;
        }
        catch
        {
            wide.Dispose();
            throw;
        }
    }

    protected override void Copied(long start, long bytes)
    {
        if (LinkBytesPerSecond is { } bw) WaitUntil(start, bytes / bw);
    }

    public override Tensor ToHost(Tensor deviceTensor) => deviceTensor.clone();

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
}
