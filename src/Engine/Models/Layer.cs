using System.Collections.Immutable;
using Superpipeline.Engine.Generation;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Models;

/// <summary>One parameter tensor of a layer: its name within the layer, shape and dtype.</summary>
public sealed record ParamSpec(string Name, ImmutableArray<long> Shape, ScalarType DType)
{
    public ParamSpec(string name, params long[] shape) : this(name, [.. shape], ScalarType.Float32) { }
    public long Bytes => TensorBytes.Of([.. Shape], DType);
}

/// <summary>A layer of a model: the unit that is streamed onto a device. It is a definition only (parameter
/// specs, shapes, cost and a functional forward); the weights live with the layer's owner (a LayerActor on the
/// host) and are passed to <see cref="Forward"/> as device tensors, so building a layer on a device never
/// re-initialises it. The same forward serves training later: give it weights that require grad.</summary>
public abstract class Layer(int index, string name)
{
    public int Index { get; } = index;
    public string Name { get; } = name;
    public abstract IReadOnlyList<ParamSpec> Parameters { get; }
    public long Bytes => Parameters.Sum(p => p.Bytes);

    /// <summary>Shape of the output for an input of <paramref name="input"/> shape; throws a clear error on a shape the layer cannot take.</summary>
    public abstract long[] OutputShape(long[] input);
    public virtual ScalarType OutputDType(ScalarType input) => ScalarType.Float32;

    /// <summary>Floating-point operations of one forward pass (multiply-add = 2).</summary>
    public abstract double Flops(long[] input);

    /// <summary>Device bytes of the temporaries the forward holds at its fullest for an input of <paramref name="input"/>
    /// shape, beyond its input, its output and its weights (normalised inputs, projections, attention, MLP
    /// intermediates, residual sums). The pass reserves them while the layer computes and the cost model adds the
    /// same figure, so predicted and measured peaks include them.</summary>
    public abstract long WorkspaceBytes(long[] input);

    /// <summary>The forward function. Runs on the device's compute thread inside the caller's dispose scope.</summary>
    public abstract Tensor Forward(IReadOnlyDictionary<string, Tensor> weights, Tensor input);

    /// <summary>Fresh weights for this layer, drawn from <paramref name="generator"/> (host tensors).</summary>
    public abstract IReadOnlyDictionary<string, Tensor> Initialize(Generator generator);

    // Generation (a prefill or decode pass with a KV cache). Layers without positions, attention or a head take the defaults.

    /// <summary>The layout of this layer's KV cache; null when it keeps none (embeddings, heads, the demo's layers).</summary>
    public virtual KvLayout? Kv => null;

    /// <summary>The positions the layer can place (an embedding's table or rotary limit); null when it does not care.</summary>
    public virtual long? MaxPositions => null;

    /// <summary><see cref="OutputShape(long[])"/> in a generation pass (a head gives the last position only when asked).</summary>
    public virtual long[] OutputShape(long[] input, StepContext step) => OutputShape(input);

    /// <summary><see cref="WorkspaceBytes(long[])"/> in a generation pass, where attention also reads the step's past.</summary>
    public virtual long WorkspaceBytes(long[] input, StepContext step) => WorkspaceBytes(input);

    /// <summary>The forward of a generation pass: tokens at <see cref="StepContext.Positions"/>, attention over
    /// <paramref name="cache"/>'s past entries and this pass's (appended to it) under the step's mask. <paramref name="cache"/>
    /// is null exactly when <see cref="Kv"/> is. The default is the plain forward.</summary>
    public virtual Tensor Forward(IReadOnlyDictionary<string, Tensor> weights, Tensor input, StepContext step, KvCache? cache) =>
        Forward(weights, input);
}

/// <summary>A model is an ordered list of layers applied one after another to an input.</summary>
public sealed class LayeredModel(string name, IReadOnlyList<Layer> layers, long[] inputShape, ScalarType inputDType, Func<long, Tensor> makeInput)
{
    public string Name { get; } = name;
    public IReadOnlyList<Layer> Layers { get; } = layers;
    public long[] InputShape { get; } = inputShape;
    public ScalarType InputDType { get; } = inputDType;
    public long Bytes => Layers.Sum(l => l.Bytes);

    /// <summary>The model's input for <paramref name="seed"/>, deterministic (a host tensor).</summary>
    public Tensor MakeInput(long seed) => makeInput(seed);

    /// <summary>Shapes of the activations: [0] is the input, [i+1] is layer i's output.</summary>
    public IReadOnlyList<(long[] Shape, ScalarType DType)> ActivationShapes()
    {
        var list = new List<(long[], ScalarType)> { (InputShape, InputDType) };
        foreach (var layer in Layers)
        {
            var (shape, dtype) = list[^1];
            list.Add((layer.OutputShape(shape), layer.OutputDType(dtype)));
        }
        return list;
    }

    /// <summary>Layers [<paramref name="first"/>, first + <paramref name="count"/>) as a model of their own (a pipeline
    /// stage): its input is the activation entering layer <paramref name="first"/>. Layers keep their indices, so
    /// their weights are the same wherever they run.</summary>
    public LayeredModel Slice(int first, int count)
    {
        if (first < 0 || count < 1 || first + count > Layers.Count)
            throw new ArgumentOutOfRangeException(nameof(first), $"layers [{first}, {first + count}) are outside the model's {Layers.Count}");
        if (first == 0 && count == Layers.Count) return this;
        var (shape, dtype) = ActivationShapes()[first];
        return new LayeredModel($"{Name}[{first}..{first + count - 1}]", Layers.Skip(first).Take(count).ToArray(), shape, dtype,
            _ => throw new InvalidOperationException($"a stage starting at layer {first} takes its input from the previous stage"));
    }
}
