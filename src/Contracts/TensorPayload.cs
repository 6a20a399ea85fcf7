using System.Collections.Immutable;

namespace Superpipeline.Contracts;

/// <summary>A tensor as it crosses a boundary: dtype name (e.g. "Float32", "Int64"), shape, and the raw
/// little-endian bytes in row-major order. The wire protocol depends on no tensor library.</summary>
public sealed record TensorPayload(string DType, ImmutableArray<long> Shape, ImmutableArray<byte> Bytes)
{
    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);

    public bool Equals(TensorPayload? other) =>
        other is not null && DType == other.DType && Shape.SequenceEqual(other.Shape) && Bytes.AsSpan().SequenceEqual(other.Bytes.AsSpan());

    public override int GetHashCode() => HashCode.Combine(DType, Shape.Length, Bytes.Length);
}
