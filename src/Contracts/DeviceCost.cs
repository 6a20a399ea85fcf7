namespace Superpipeline.Contracts;

/// <summary>A device as the cost model sees it (the planner's and the simulators' input; a plain record in Contracts so
/// that a worker can register it as measured): capacity, host↔device link bandwidth and per-transfer latency, and
/// sustained compute rate. A worker's comes from DeviceCalibration; a catalog GPU's from <c>GpuSpec.ToDeviceCost</c>.</summary>
public sealed record DeviceCost(string Name, long CapacityBytes, double LinkBytesPerSecond, double FlopsPerSecond, double TransferLatencySeconds = 0)
{
    public double TransferSeconds(long bytes) => TransferLatencySeconds + bytes / LinkBytesPerSecond;
    public double ComputeSeconds(double flops) => flops / FlopsPerSecond;

    /// <summary>Checks the figures; throws naming the field.</summary>
    public DeviceCost Validated()
    {
        if (CapacityBytes <= 0) throw new ArgumentException($"device {Name}: capacity must be positive");
        if (!(LinkBytesPerSecond > 0)) throw new ArgumentException($"device {Name}: link bandwidth must be positive");
        if (!(FlopsPerSecond > 0)) throw new ArgumentException($"device {Name}: compute rate must be positive");
        if (TransferLatencySeconds < 0) throw new ArgumentException($"device {Name}: transfer latency cannot be negative");
        return this;
    }
}
