using System.Collections.Immutable;
using Superpipeline.Contracts;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.IO;

/// <summary>Converts between TorchSharp tensors and the wire's <see cref="TensorPayload"/> (dtype, shape, raw bytes).</summary>
public static class TensorPayloads
{
    public static TensorPayload From(Tensor t) =>
        new(t.dtype.ToString(), [.. t.shape], ImmutableArray.Create(TensorBytes.Raw(t)));

    public static Tensor ToTensor(TensorPayload p)
    {
        if (!Enum.TryParse<ScalarType>(p.DType, out var dtype)) throw new ArgumentException($"unknown tensor dtype '{p.DType}'");
        var shape = p.Shape.ToArray();
        long expected = TensorBytes.Of(shape, dtype);
        if (expected != p.Bytes.Length) throw new ArgumentException($"tensor payload has {p.Bytes.Length} bytes; {dtype}[{string.Join(",", shape)}] needs "
            + $"{expected}");
        var t = empty(shape, dtype);
        p.Bytes.AsSpan().CopyTo(t.bytes);
        return t;
    }
}
