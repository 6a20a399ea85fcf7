using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Generation;

/// <summary>The shape of one attention layer's KV cache: K and V are each [batch, <see cref="KvHeads"/>, length,
/// <see cref="HeadDim"/>].</summary>
public sealed record KvLayout(int KvHeads, int HeadDim)
{
    public long[] Shape(long batch, long length) => [batch, KvHeads, length, HeadDim];

    /// <summary>Bytes of K and V together for <paramref name="batch"/> rows of <paramref name="length"/> tokens.</summary>
    public long Bytes(long batch, long length, ScalarType dtype = ScalarType.Float32) => 2 * TensorBytes.Of(Shape(batch, length), dtype);
}

/// <summary>The keys and values one attention layer has computed so far in a generation session. A layer's step forward
/// hands it this pass's new K and V ([B, kv heads, T, d]) and attends over what it returns: every filled entry, past then
/// new, contiguous. Two kinds: <see cref="KvBuffer"/> (one buffer of full capacity written in place: the cache that stays on
/// the device, or the host copy) and <see cref="KvPast"/> (the filled part brought to the device for one pass, with this
/// pass's entries kept aside for writing back).</summary>
public abstract class KvCache : IDisposable
{
    /// <summary>Entries filled before this pass's <see cref="Append"/>.</summary>
    public abstract long Filled { get; }

    /// <summary>Adds this pass's <paramref name="keys"/> and <paramref name="values"/>; returns all filled K and V, contiguous.</summary>
    public abstract (Tensor Keys, Tensor Values) Append(Tensor keys, Tensor values);

    public abstract void Dispose();

    internal static void CheckEntries(Tensor keys, Tensor values, Tensor like, string what)
    {
        if (keys.dim() != 4 || !keys.shape.SequenceEqual(values.shape) || keys.shape[0] != like.shape[0] || keys.shape[1] != like.shape[1]
            || keys.shape[3] != like.shape[3])
            throw new ArgumentException($"{what}: new entries [{string.Join(", ", keys.shape)}] do not fit a cache of [{string.Join(", ", like.shape)}]");
    }
}

/// <summary>A cache of fixed capacity: K and V [B, kv heads, capacity, d] allocated once; appends write in place.</summary>
public sealed class KvBuffer : KvCache
{
    readonly Tensor _keys, _values;
    long _filled;

    KvBuffer(Tensor keys, Tensor values)
    {
        _keys = keys;
        _values = values;
    }

    /// <summary>A zeroed cache of <paramref name="capacity"/> entries on <paramref name="device"/>, outside any dispose scope
    /// (it lives for the session; dispose it).</summary>
    public static KvBuffer Allocate(KvLayout layout, long batch, long capacity, ScalarType dtype, Device device)
    {
        var shape = layout.Shape(batch, capacity);
        var keys = zeros(shape, dtype, device).DetachFromDisposeScope();
        var values = zeros(shape, dtype, device).DetachFromDisposeScope();
        return new KvBuffer(keys, values);
    }

    public long Capacity => _keys.shape[2];
    public override long Filled => Interlocked.Read(ref _filled);
    public long Bytes => TensorBytes.Of(_keys) + TensorBytes.Of(_values);

    /// <summary>Views of the first <paramref name="length"/> entries of K and V (not copies).</summary>
    public (Tensor Keys, Tensor Values) Prefix(long length) => (_keys.narrow(2, 0, length), _values.narrow(2, 0, length));

    /// <summary>Writes <paramref name="keys"/> and <paramref name="values"/> (any device) at the filled end and counts them.</summary>
    public void Write(Tensor keys, Tensor values)
    {
        CheckEntries(keys, values, _keys, "KV cache");
        long t = keys.shape[2], at = Filled;
        if (at + t > Capacity) throw new InvalidOperationException($"KV cache full: {at} + {t} entries exceed its capacity of {Capacity}");
        using (var k = _keys.narrow(2, at, t)) k.copy_(keys);
        using (var v = _values.narrow(2, at, t)) v.copy_(values);
        Interlocked.Add(ref _filled, t);
    }

    public override (Tensor Keys, Tensor Values) Append(Tensor keys, Tensor values)
    {
        Write(keys, values);
        var (k, v) = Prefix(Filled);
        return (k.contiguous(), v.contiguous());
    }

    public override void Dispose()
    {
        _keys.Dispose();
        _values.Dispose();
    }
}

/// <summary>For one pass: the filled entries brought to the device (<paramref name="keys"/>, <paramref name="values"/>,
/// owned by the caller) and this pass's new entries, kept in <see cref="NewKeys"/>/<see cref="NewValues"/> for writing back.</summary>
public sealed class KvPast(Tensor keys, Tensor values) : KvCache
{
    public override long Filled => keys.shape[2];
    public Tensor? NewKeys { get; private set; }
    public Tensor? NewValues { get; private set; }

    public override (Tensor Keys, Tensor Values) Append(Tensor newKeys, Tensor newValues)
    {
        CheckEntries(newKeys, newValues, keys, "KV cache");
        (NewKeys, NewValues) = (newKeys, newValues);
        if (Filled == 0) return (newKeys.contiguous(), newValues.contiguous());
        return (cat([keys, newKeys], 2), cat([values, newValues], 2));
    }

    /// <summary>Nothing: the past tensors belong to the caller, the new ones to the forward's scope.</summary>
    public override void Dispose() { }
}
