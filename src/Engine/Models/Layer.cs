using System.Collections.Immutable;
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
