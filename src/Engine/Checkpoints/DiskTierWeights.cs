using System.Collections.Concurrent;
using Superpipeline.Contracts;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Checkpoints;

/// <summary>A layer's tensors read from disk for one device copy, and the host bytes they hold under a
/// <see cref="HostWeightBudget"/>. The holder owns the tensors: disposing frees them and gives the bytes back.</summary>
public sealed class LayerRead(IReadOnlyDictionary<string, Tensor> tensors, IDisposable lease) : IDisposable
{
    int _disposed;

    public IReadOnlyDictionary<string, Tensor> Tensors { get; } = tensors;

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        foreach (var t in Tensors.Values) t.Dispose();
        lease.Dispose();
    }
}

/// <summary>The disk tier: a checkpoint's weights stay in its safetensors files, and a layer's tensors (only its own, in their
/// stored dtype, by positioned reads) are read each time they are asked for, once <see cref="Budget"/> has room for them.
/// Nothing stays open between reads (the files are opened for each read, headers included), so there is nothing to close.
/// Thread-safe.</summary>
public sealed class DiskTierWeights(string directory, HostWeightBudget budget) : IWeightSource
{
    readonly ConcurrentDictionary<int, long> _storedBytes = new();

    public string Directory { get; } = directory;
    public HostWeightBudget Budget { get; } = budget;

    /// <summary>Reads <paramref name="layer"/>'s tensors outside the budget (the caller owns them): for callers that are not
    /// the disk tier's passes.</summary>
    public IReadOnlyDictionary<string, Tensor> Load(Layer layer)
    {
        using var checkpoint = new CheckpointWeights(Directory);
        return checkpoint.Load(layer);
    }

    /// <summary>The bytes <paramref name="layer"/>'s tensors hold as stored (read from the headers once).</summary>
    public long StoredBytes(Layer layer) => _storedBytes.GetOrAdd(layer.Index, _ =>
    {
        using var checkpoint = new CheckpointWeights(Directory);
        return checkpoint.StoredBytes(layer);
    });

    /// <summary>Waits for the layer's stored bytes in the budget, then reads its tensors on a thread of their own (never a
    /// pool thread an actor dispatcher uses). A failed read gives the bytes back.</summary>
    public async Task<LayerRead> ReadAsync(Layer layer, CancellationToken cancel = default)
    {
        long bytes = StoredBytes(layer);
        var lease = await Budget.AcquireAsync(bytes, $"layer {layer.Index} ({layer.Name})", cancel).ConfigureAwait(false);
        try
        {
            var tensors = await Task.Factory.StartNew(() => Load(layer), cancel, TaskCreationOptions.LongRunning, TaskScheduler.Default)
                .ConfigureAwait(false);
            return new LayerRead(tensors, lease);
        }
        catch
        {
            lease.Dispose();
            throw;
        }
    }
}

/// <summary>When a stage's weights stay on disk, and the refusals of a host memory that cannot serve it.</summary>
public static class DiskTier
{
    /// <summary>The host bytes each layer of <paramref name="stage"/> holds while resident in its LayerActor: a checkpoint's
    /// stored bytes (half of float32 for F16/BF16; float32's when the spec loads them upcast), a seeded model's float32 bytes.</summary>
    public static IReadOnlyList<long> StoredLayerBytes(ModelSpec spec, LayeredModel stage)
    {
        if (spec.Checkpoint is null || Onnx.OnnxImport.IsOnnx(spec.Checkpoint)) return [.. stage.Layers.Select(l => l.Bytes)];
        using var checkpoint = CheckpointWeights.For(spec);
        return [.. stage.Layers.Select(checkpoint.StoredBytes)];
    }

    /// <summary>Whether <paramref name="stage"/> runs from disk under <paramref name="hostMemory"/> bytes (null: no limit): a
    /// checkpoint whose stored weights exceed it. A seeded model always stays resident, or, with
    /// <paramref name="refuseSeeded"/>, is refused when its weights exceed the host memory. A host memory below the largest
    /// layer is refused: a layer is read whole. Refusals are <see cref="FieldException"/>s naming the host memory.</summary>
    public static bool Applies(ModelSpec spec, LayeredModel stage, long? hostMemory, bool refuseSeeded = false)
    {
        if (hostMemory is not { } limit) return false;
        var bytes = StoredLayerBytes(spec, stage);
        if (bytes.Sum() <= limit) return false;
        if (Onnx.OnnxImport.IsOnnx(spec.Checkpoint))
            throw new FieldException(FieldException.HostMemory,
                $"{limit:N0} bytes is below the {bytes.Sum():N0} bytes of the ONNX model's weights: only a safetensors checkpoint's weights can stay on disk");
        if (spec.Checkpoint is null)
        {
            if (!refuseSeeded) return false;
            throw new FieldException(FieldException.HostMemory,
                $"{limit:N0} bytes is below the {bytes.Sum():N0} bytes of the seeded model's weights: only a checkpoint's weights can stay on disk");
        }
        int largest = Enumerable.Range(0, bytes.Count).MaxBy(i => bytes[i]);
        if (bytes[largest] > limit)
        {
            var layer = stage.Layers[largest];
            throw new FieldException(FieldException.HostMemory,
                $"{limit:N0} bytes is below the {bytes[largest]:N0} bytes of layer {layer.Index} ({layer.Name}): the disk tier reads a layer whole");
        }
        return true;
    }
}
