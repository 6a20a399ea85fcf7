using System.Collections.Immutable;

namespace Superpipeline.Contracts;

/// <summary>What happened to one layer during a pass; times are seconds since the pass started.</summary>
/// <param name="EvictAt">When its device bytes were freed (-1 if they were still resident when the pass ended).</param>
public sealed record LayerTiming(
    int Index,
    string Name,
    long Bytes,
    double LoadStart,
    double LoadSeconds,
    double ComputeStart,
    double ComputeSeconds,
    double EvictAt);

/// <summary>The measured record of one forward pass on one device.</summary>
/// <param name="LowerBoundSeconds">max(sum of transfer times, sum of compute times): no schedule can beat it.</param>
public sealed record PassReport(
    string Device,
    int Layers,
    int Window,
    int Swap,
    long ModelBytes,
    long DeviceCapacityBytes,
    long PeakDeviceBytes,
    long BytesTransferred,
    double WallSeconds,
    double LowerBoundSeconds,
    ImmutableArray<LayerTiming> LayerTimings)
{
    /// <summary>The placement, when the job ran as pipeline stages across devices.</summary>
    public ImmutableArray<StagePlan> Stages { get; init; } = [];

    /// <summary>Jobs that shared this pass as micro-batches (each layer loaded once for all of them).</summary>
    public int MicroBatches { get; init; } = 1;

    /// <summary>The most host bytes held by model weights while the pass ran: the LayerActors' stored weights when they are
    /// resident; with the disk tier (<c>--host-memory</c>), the most that the node's disk reads held at once (within the host
    /// memory). For a job of several stages, the largest stage's figure. 0 when not measured (a pass run without a node agent).</summary>
    public long PeakHostWeightBytes { get; init; }

    /// <summary>Layers pinned on the device for the whole job (never evicted), by index in the pass's model.</summary>
    public ImmutableArray<int> Pinned { get; init; } = [];

    /// <summary>Pinned layers that were already on the device when the pass began (kept from an earlier pass of the same
    /// model): nothing crossed the link for them, and <see cref="BytesTransferred"/> leaves them out.</summary>
    public int PinnedReused { get; init; }

    /// <summary>max(sum of transfer times, sum of compute times) of the layers: no schedule of them can be faster.</summary>
    public static double LowerBound(IReadOnlyCollection<LayerTiming> layers) =>
        Math.Max(layers.Sum(l => l.LoadSeconds), layers.Sum(l => l.ComputeSeconds));

    /// <summary>Lower bound ÷ wall time: 1.0 means transfers were completely hidden behind compute (or vice versa).</summary>
    public double OverlapEfficiency => WallSeconds > 0 ? LowerBoundSeconds / WallSeconds : 0;
}

/// <summary>Progress of a pass, one record per layer event, in the order they happened.</summary>
public sealed record LayerProgress(int Layer, int Layers, LayerPhase Phase, double AtSeconds);

public enum LayerPhase { Loaded, Computed, Evicted }

/// <summary>One pipeline stage as placed: where it ran, which layers, with which knobs.</summary>
public sealed record StagePlan(int Stage, string Node, string Device, int FirstLayer, int LayerCount, int Window, int Swap, long Bytes, double Flops,
    long PeakDeviceBytes, double WallSeconds);
