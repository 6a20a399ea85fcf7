using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Models;

/// <summary>Where a layer's host weights come from: a seed today, checkpoints (safetensors, ONNX) later.
/// Each layer is read independently, so a worker can load only the layers placed on it.</summary>
public interface IWeightSource
{
    /// <summary>The host tensors of <paramref name="layer"/>, keyed by parameter name, matching its specs.</summary>
    IReadOnlyDictionary<string, Tensor> Load(Layer layer);
}

/// <summary>Weights generated from a seed: layer i always gets the same values, whichever process makes them.</summary>
public sealed class SeededWeights(long seed) : IWeightSource
{
    public long Seed { get; } = seed;

    public IReadOnlyDictionary<string, Tensor> Load(Layer layer)
    {
        using var generator = new Generator(unchecked((ulong)(Seed * 1_000_003L + layer.Index * 7919L + 17)));
        var weights = layer.Initialize(generator);
        foreach (var spec in layer.Parameters)
        {
            if (!weights.TryGetValue(spec.Name, out var t))
                throw new InvalidOperationException($"layer {layer.Name}: initializer did not produce '{spec.Name}'");
            if (!t.shape.SequenceEqual(spec.Shape) || t.dtype != spec.DType)
                throw new InvalidOperationException(
                    $"layer {layer.Name}: '{spec.Name}' is {t.dtype}[{string.Join(",", t.shape)}], expected {spec.DType}[{string.Join(",", spec.Shape)}]");
        }
        return weights;
    }
}
