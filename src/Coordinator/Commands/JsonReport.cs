using System.Text.Json.Serialization;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Bench;
using Superpipeline.Messages;

namespace Superpipeline.Coordinator.Commands;

/// <summary>The JSON report of a run (<c>run --report</c>, <c>submit --report</c>): what a script reads to compare runs.</summary>
public static class JsonReport
{
    public static RunReport Build(ModelSpec model, PassReport r, TensorPayload output, string outputSha256) => new(
        outputSha256,
        output.Shape,
        output.DType,
        new RunModel(model.Name, model.Blocks, model.Hidden, model.Heads, model.Vocab, model.Sequence, model.Batch, model.Seed, model.Checkpoint,
            model.Input),
        r.Device,
        r.DeviceCapacityBytes,
        r.Layers,
        r.Window,
        r.Swap,
        r.Window - r.Swap,
        r.ModelBytes,
        r.PeakDeviceBytes,
        r.BytesTransferred,
        r.WallSeconds,
        r.LowerBoundSeconds,
        r.OverlapEfficiency,
        r.MicroBatches,
        [.. r.Stages.Select(s => new RunStage(s.Stage, s.Node, s.Device, s.FirstLayer, s.LayerCount, s.Window, s.Swap, s.Bytes, s.Flops,
            s.PeakDeviceBytes, s.WallSeconds))],
        [.. r.LayerTimings.Select(l => new RunLayer(l.Index, l.Name, l.Bytes, l.LoadStart, l.LoadSeconds, l.ComputeStart, l.ComputeSeconds, l.EvictAt))])
    {
        PinnedLayers = r.Pinned, PinnedReused = r.PinnedReused,
    };

    public static void Write(string path, RunReport report) => ReportWriter.WriteJson(path, report);
}

/// <summary>The run report; its JSON keys are the camelCase of these names, in this order.</summary>
/// <param name="PrefetchDepth">k − k': layers loaded ahead while a swap group is in transfer.</param>
/// <param name="Stages">The placement, when the job ran as pipeline stages across devices (submit); empty for run.</param>
/// <param name="PerLayer">Per layer, as the engine timed it (seconds from the start of the pass).</param>
public sealed record RunReport(
    string OutputSha256,
    IReadOnlyList<long> OutputShape,
    string OutputDType,
    RunModel Model,
    string Device,
    long DeviceCapacityBytes,
    int Layers,
    int Window,
    int Swap,
    int PrefetchDepth,
    long ModelBytes,
    long PeakDeviceBytes,
    long BytesTransferred,
    double WallSeconds,
    double LowerBoundSeconds,
    double OverlapEfficiency,
    int MicroBatches,
    IReadOnlyList<RunStage> Stages,
    IReadOnlyList<RunLayer> PerLayer)
{
    /// <summary>Layers pinned on the device for the whole job (never evicted; every layer under window = all).</summary>
    public IReadOnlyList<int> PinnedLayers { get; init; } = [];

    /// <summary>Pinned layers already on the device when the pass began (kept from an earlier job of the model): not moved.</summary>
    public int PinnedReused { get; init; }
}

/// <summary>The model as it was asked for; <paramref name="Blocks"/> is --layers. <paramref name="Checkpoint"/> and
/// <paramref name="Input"/> (absolute paths) appear only for a checkpoint model, and for token ids read from a file.</summary>
public sealed record RunModel(string Name, int Blocks, int Hidden, int Heads, int Vocab, int Sequence, int Batch, long Seed,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Checkpoint = null,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Input = null);

public sealed record RunStage(int Stage, string Node, string Device, int FirstLayer, int LayerCount, int Window, int Swap, long Bytes, double Flops,
    long PeakDeviceBytes, double WallSeconds);

/// <param name="EvictAt">When its device bytes were freed (−1 if still resident when the pass ended).</param>
public sealed record RunLayer(int Index, string Name, long Bytes, double LoadStart, double LoadSeconds, double ComputeStart, double ComputeSeconds,
    double EvictAt);
