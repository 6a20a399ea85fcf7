using Superpipeline.Contracts;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Simulation;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>Measures a device for the cost model: its compute rate from a matrix-multiply probe on its compute
/// thread, and its link bandwidth (the emulated one when set, otherwise a measured host→device copy).</summary>
public static class DeviceCalibration
{
    static readonly ConditionalWeakTable<Accelerator, Task<DeviceCost>> Measured = new();

    /// <summary>The device measured once: the first call starts <see cref="MeasureAsync"/>, later calls share its result.
    /// A worker calls it before it registers, so the probe never competes with a pass.</summary>
    public static Task<DeviceCost> MeasureOnceAsync(Accelerator device) => Measured.GetValue(device, d => MeasureAsync(d));

    public static async Task<DeviceCost> MeasureAsync(Accelerator device, int probeSize = 768)
    {
        double flopsPerSecond = await device.OnComputeThread(() =>
        {
            using var scope = NewDisposeScope();
            using var noGrad = inference_mode();
            var a = randn(probeSize, probeSize);
            var b = randn(probeSize, probeSize);
            matmul(a, b); // warm-up
            double best = double.MaxValue;
            for (int i = 0; i < 5; i++)
            {
                long t0 = Stopwatch.GetTimestamp();
                matmul(a, b);
                best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
            }
            return 2.0 * probeSize * probeSize * probeSize / best;
        });
        double bytesPerSecond = device.LinkBytesPerSecond ?? await device.OnTransferThread(() =>
        {
            using var scope = NewDisposeScope();
            var host = ones(8L << 20); // 32 MiB
            double best = double.MaxValue;
            for (int i = 0; i < 3; i++)
            {
                long t0 = Stopwatch.GetTimestamp();
                using var copy = host.clone();
                best = Math.Min(best, Stopwatch.GetElapsedTime(t0).TotalSeconds);
            }
            return (8L << 20) * 4 / best;
        });
        return new DeviceCost(device.Name, device.Memory.Capacity, bytesPerSecond, flopsPerSecond);
    }
}
