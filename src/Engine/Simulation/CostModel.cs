using System.Collections.Immutable;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;

namespace Superpipeline.Engine.Simulation;

/// <summary>What one layer costs: bytes of weights to move, floating-point operations to compute, the bytes of the
/// activation it produces, and the bytes of the temporaries it holds while it computes (<see cref="Layer.WorkspaceBytes"/>).
/// Derived from the model definition, never guessed.</summary>
public sealed record LayerCost(string Name, long Bytes, double Flops, long OutputBytes, long WorkspaceBytes = 0);

/// <summary>A model as the cost model sees it: its input activation and its layers in order.</summary>
public sealed record ModelCost(string Name, long InputBytes, ImmutableArray<LayerCost> Layers)
{
    public long Bytes => Layers.Sum(l => l.Bytes);
    public double Flops => Layers.Sum(l => l.Flops);

    /// <summary>Costs of a layered model at its configured input shape.</summary>
    public static ModelCost From(LayeredModel model)
    {
        var acts = model.ActivationShapes();
        var layers = model.Layers.Select((l, i) =>
            new LayerCost(l.Name, l.Bytes, l.Flops(acts[i].Shape), TensorBytes.Of(acts[i + 1].Shape, acts[i + 1].DType), l.WorkspaceBytes(acts[i].Shape)));
        return new ModelCost(model.Name, TensorBytes.Of(acts[0].Shape, acts[0].DType), [.. layers]);
    }

    /// <summary>Bytes of the input of layer <paramref name="i"/>: the model's input or the previous layer's output.</summary>
    public long InputBytesOf(int i) => i == 0 ? InputBytes : Layers[i - 1].OutputBytes;

    /// <summary>Most bytes besides weights live at once: a layer's input, its output and its workspace while it computes.</summary>
    public long ActivationBoundBytes() =>
        Enumerable.Range(0, Layers.Length).Max(i => InputBytesOf(i) + Layers[i].OutputBytes + Layers[i].WorkspaceBytes);

    /// <summary>Why a device of <paramref name="capacityBytes"/> cannot run the model at all (its largest layer with the
    /// activations does not fit), naming <see cref="FieldException.DeviceMemory"/>; null when it can.</summary>
    public FieldException? DeviceMemoryRefusal(long capacityBytes)
    {
        int largest = Enumerable.Range(0, Layers.Length).MaxBy(i => Layers[i].Bytes);
        long need = Layers[largest].Bytes + ActivationBoundBytes();
        return need > capacityBytes
            ? new FieldException(FieldException.DeviceMemory, $"{capacityBytes:N0} bytes is below the largest layer, {largest} ({Layers[largest].Name}) of "
                + $"{Layers[largest].Bytes:N0} bytes (with activations it needs {need:N0})")
            : null;
    }

    /// <summary>Sum of the <paramref name="k"/> largest layers' weight bytes.</summary>
    public long LargestLayersBytes(int k) => Layers.Select(l => l.Bytes).OrderDescending().Take(k).Sum();
}

