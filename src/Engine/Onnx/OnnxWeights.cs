using Superpipeline.Engine.Models;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Onnx;

/// <summary>Where one of a layer's parameters comes from in an ONNX graph: the constant <paramref name="Value"/> (an initializer
/// or a Constant node's output), transposed when the graph multiplies by it as [in, out] (MatMul) and the layer keeps
/// Linear's [out, in], and/or rows [RowStart, RowStart + Rows) of it (a shard of an embedding table); Rows -1 is every row.</summary>
public sealed record OnnxParam(string Value, bool Transpose = false, long RowStart = 0, long Rows = -1)
{
    /// <summary>The shape the parameter has once read from a constant of <paramref name="stored"/> shape.</summary>
    public long[] ShapeFrom(long[] stored)
    {
        long[] shape = Transpose
            ? stored.Length == 2 ? [stored[1], stored[0]] : throw new ArgumentException($"'{Value}' is {stored.Length}-D; only a matrix transposes")
            : [.. stored];
        if (Rows >= 0) shape[0] = Rows;
        return shape;
    }
}

/// <summary>Weights read from an ONNX graph's constants by a family's table (from each <see cref="ParamSpec"/> name to its
/// <see cref="OnnxParam"/>), as contiguous float32 host tensors of the layer's shapes. A missing entry or a shape that does not
/// match the layer is a one-line error naming the file and the constant. Thread-safe (the graph is read-only).</summary>
public sealed class OnnxWeights(OnnxGraph graph, IReadOnlyDictionary<string, OnnxParam> table) : IWeightSource, IDisposable
{
    public OnnxGraph Graph { get; } = graph;

    public IReadOnlyDictionary<string, Tensor> Load(Layer layer)
    {
        var result = new Dictionary<string, Tensor>(layer.Parameters.Count);
        try
        {
            foreach (var spec in layer.Parameters) result[spec.Name] = Read(layer, spec);
            return result;
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
    }

    /// <summary>Checks every layer's parameters against the table and the constants' shapes without reading their data.</summary>
    public void Check(LayeredModel model)
    {
        foreach (var layer in model.Layers)
            foreach (var spec in layer.Parameters) Source(layer, spec);
    }

    OnnxParam Source(Layer layer, ParamSpec spec)
    {
        if (!table.TryGetValue(spec.Name, out var param))
            throw new OnnxException($"{Graph.File}: layer {layer.Name}'s '{spec.Name}' has no constant in the import table");
        if (!Graph.IsConstant(param.Value))
            throw new OnnxException($"{Graph.File}: '{param.Value}' (layer {layer.Name}'s '{spec.Name}') is not a constant of the graph");
        long[] stored = Graph.ConstantShape(param.Value);
        if (param.Rows >= 0 && (stored.Length == 0 || param.RowStart < 0 || param.RowStart + param.Rows > (param.Transpose ? stored[^1] : stored[0])))
            throw new OnnxException($"{Graph.File}: rows [{param.RowStart}, {param.RowStart + param.Rows}) of '{param.Value}' are outside its "
                + $"[{string.Join(", ", stored)}]");
        var shape = param.ShapeFrom(stored);
        if (!shape.SequenceEqual(spec.Shape))
            throw new OnnxException($"{Graph.File}: '{param.Value}' gives [{string.Join(", ", shape)}] for layer {layer.Name}'s '{spec.Name}', "
                + $"which is [{string.Join(", ", spec.Shape)}]");
        return param;
    }

    Tensor Read(Layer layer, ParamSpec spec)
    {
        var param = Source(layer, spec);
        using var scope = NewDisposeScope();
        var t = Graph.ReadConstant(param.Value);
        if (t.dtype != ScalarType.Float32) t = t.to(ScalarType.Float32);
        if (param.Transpose) t = t.t();
        if (param.Rows >= 0) t = t.narrow(0, param.RowStart, param.Rows);
        return t.contiguous().clone().MoveToOuterDisposeScope();
    }

    /// <summary>Nothing to free: the graph's bytes are shared with the importer's cache.</summary>
    public void Dispose() { }
}
