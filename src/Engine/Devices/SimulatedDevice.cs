using Superpipeline.Contracts;
using Superpipeline.Engine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Devices;

/// <summary>The default accelerator where there is no CUDA: its tensors are CPU tensors in an arena of its own
/// (counted by <see cref="DeviceMemory"/>), transfers are real copies made on a thread of their own, and an
/// optional link bandwidth stretches each copy to the time PCIe would take. Compute is real.</summary>
public sealed class SimulatedDevice(string name, long capacityBytes, double? linkGBps = null) : Accelerator(name, capacityBytes, linkGBps)
{
    public override DeviceKind Kind => DeviceKind.Sim;
    public override bool WantsPinnedHost => false;

    protected override Tensor Place(Tensor host) => host.clone();

    /// <summary>In place when widening to float32 and the tensor is addressable as one span (under 2 GiB).</summary>
    protected override bool WidensInPlace(Tensor host) =>
        ComputeDType == ScalarType.Float32 && TensorBytes.Of([.. host.shape], ScalarType.Float32) <= Array.MaxLength;

    /// <summary>Copies the stored bytes into the first half of the float32 tensor's own memory, then widens them in place from
    /// the last element back (element i is written to bytes [4i, 4i + 4) after stored element i at [2i, 2i + 2) was read, and
    /// no unread element lies there), so the device never holds more than the float32 bytes. Widening F16 and BF16 to float32
    /// is exact: the values are torch's to_type(Float32) bit for bit (a BF16 is the high half of its float32).</summary>
    protected override Tensor PlaceWidened(Tensor host)
    {
        if (!WidensInPlace(host)) return base.PlaceWidened(host);
        var wide = empty(host.shape, ScalarType.Float32);
        try
        {
            using var source = host.contiguous();
            var bytes = wide.bytes;
            source.bytes.CopyTo(bytes);
            var halves = MemoryMarshal.Cast<byte, ushort>(bytes);
            var floats = MemoryMarshal.Cast<byte, uint>(bytes);
            bool bf16 = host.dtype == ScalarType.BFloat16;
            for (int i = floats.Length - 1; i >= 0; i--)
            {
                ushort h = halves[i];
                floats[i] = bf16 ? (uint)h << 16 : BitConverter.SingleToUInt32Bits((float)BitConverter.UInt16BitsToHalf(h));
            }
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
