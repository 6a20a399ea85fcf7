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
        if (layer is ITiedLayer tied) weights = Tie(weights, tied);
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

    /// <summary>Replaces each tied parameter with the value its owner layer is seeded with.</summary>
    IReadOnlyDictionary<string, Tensor> Tie(IReadOnlyDictionary<string, Tensor> weights, ITiedLayer tied)
    {
        var result = new Dictionary<string, Tensor>(weights);
        foreach (var name in weights.Keys)
        {
            if (tied.TiedTo(name) is not Layer owner) continue;
            var owned = Load(owner);
            result[name].Dispose();
            result[name] = owned[name];
            foreach (var (other, t) in owned) if (other != name) t.Dispose();
        }
        return result;
    }
}

/// <summary>A layer that reads another layer's parameter under the same name (a tied LM head reads the token embedding).
/// A checkpoint stores such a tensor once; <see cref="SeededWeights"/> gives the layer the owner's seeded values, so a seeded
/// model is tied as its checkpoint is.</summary>
public interface ITiedLayer
{
    /// <summary>The layer that owns <paramref name="parameter"/>, or null when this layer owns it.</summary>
    Layer? TiedTo(string parameter);
}
