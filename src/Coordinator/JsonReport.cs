using System.Text.Json;
using System.Text.Json.Serialization;
using Superpipeline.Contracts;
using Superpipeline.Messages;

namespace Superpipeline.Coordinator;

/// <summary>The JSON report of a run: what a script reads to compare runs.</summary>
public static class JsonReport
{
    static readonly JsonSerializerOptions Options = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public static object Build(ModelSpec model, PassReport r, TensorPayload output, string outputSha256) => new
    {
        outputSha256,
        outputShape = output.Shape,
        outputDType = output.DType,
        model = new { name = model.Name, blocks = model.Blocks, hidden = model.Hidden, heads = model.Heads, vocab = model.Vocab, sequence = model.Sequence, batch = model.Batch, seed = model.Seed },
        device = r.Device,
        deviceCapacityBytes = r.DeviceCapacityBytes,
        layers = r.Layers,
        window = r.Window,
        swap = r.Swap,
        prefetchDepth = r.Window - r.Swap,
        modelBytes = r.ModelBytes,
        peakDeviceBytes = r.PeakDeviceBytes,
        bytesTransferred = r.BytesTransferred,
        wallSeconds = r.WallSeconds,
        lowerBoundSeconds = r.LowerBoundSeconds,
        overlapEfficiency = r.OverlapEfficiency,
        microBatches = r.MicroBatches,
        stages = r.Stages.Select(s => new { stage = s.Stage, node = s.Node, device = s.Device, firstLayer = s.FirstLayer, layerCount = s.LayerCount, window = s.Window, swap = s.Swap, bytes = s.Bytes, flops = s.Flops, peakDeviceBytes = s.PeakDeviceBytes, wallSeconds = s.WallSeconds }),
        perLayer = r.LayerTimings.Select(l => new
        {
            index = l.Index,
            name = l.Name,
            bytes = l.Bytes,
            loadStart = l.LoadStart,
            loadSeconds = l.LoadSeconds,
            computeStart = l.ComputeStart,
            computeSeconds = l.ComputeSeconds,
            evictAt = l.EvictAt,
        }),
    };

    public static void Write(string path, object report) => File.WriteAllText(path, JsonSerializer.Serialize(report, Options));

    public static string Serialize(object value) => JsonSerializer.Serialize(value, Options);
}
