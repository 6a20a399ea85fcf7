using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Generation;

/// <summary>What one generation pass (a prefill over the prompts, or a decode step of one token per row) tells every layer
/// about the sequence: where its tokens sit, which earlier tokens are real, and how many are already in the KV cache.
/// As transformers builds them for <c>generate</c>: <see cref="Positions"/> = cumsum(mask) − 1 with left-padding slots set
/// to 1, and an attention mask over past + current tokens with 0 for left padding. The tensors are owned by the context
/// (dispose it), host tensors until <see cref="To"/> copies them for a device.</summary>
public sealed class StepContext : IDisposable
{
    /// <param name="positions">int64 [B, T]: the position of each of this pass's tokens.</param>
    /// <param name="attentionMask">int64 [B, past + T]: 1 for a real token, 0 for left padding.</param>
    /// <param name="pastLength">Tokens already in every layer's KV cache (0 for the prefill).</param>
    /// <param name="lastPositionOnly">The head computes logits for the last position only ([B, 1, V]), as generate needs.</param>
    public StepContext(Tensor positions, Tensor attentionMask, long pastLength, bool lastPositionOnly)
    {
        if (positions.dtype != ScalarType.Int64 || positions.dim() != 2)
            throw new ArgumentException($"positions must be int64 [batch, tokens], got {positions.dtype}[{string.Join(", ", positions.shape)}]");
        if (attentionMask.dim() != 2 || attentionMask.shape[0] != positions.shape[0] || attentionMask.shape[1] != pastLength + positions.shape[1])
            throw new ArgumentException($"the attention mask must be [{positions.shape[0]}, {pastLength + positions.shape[1]}] (past + tokens), "
                + $"got [{string.Join(", ", attentionMask.shape)}]");
        Positions = positions;
        AttentionMask = attentionMask;
        PastLength = pastLength;
        LastPositionOnly = lastPositionOnly;
    }

    public Tensor Positions { get; }
    public Tensor AttentionMask { get; }
    public long PastLength { get; }
    public bool LastPositionOnly { get; }
    public long Batch => Positions.shape[0];
    public long Tokens => Positions.shape[1];
    /// <summary>Past plus this pass's tokens: the keys every query of this pass may look at.</summary>
    public long TotalLength => PastLength + Tokens;

    /// <summary>Bytes of the context's tensors (what moves to the device with the pass input).</summary>
    public long Bytes => TensorBytes.Of(Positions) + TensorBytes.Of(AttentionMask);

    /// <summary>The same context with its tensors made by <paramref name="place"/> (a copy onto a device); the caller owns it.</summary>
    public StepContext To(Func<Tensor, Tensor> place) => new(place(Positions), place(AttentionMask), PastLength, LastPositionOnly);

    /// <summary>The additive attention bias [B, 1, T, past + T] in <paramref name="dtype"/>: 0 where query i may look at key j
    /// (j ≤ past + i and key j is not padding), the dtype's most negative finite value elsewhere (as transformers fills
    /// its masks: never −inf, so a row that sees only padding gives a uniform softmax, not NaN).</summary>
    public Tensor AttentionBias(ScalarType dtype, Device device)
    {
        long t = Tokens, total = TotalLength;
        var queries = arange(PastLength, total, 1, ScalarType.Int64, device).view(t, 1);
        var keys = arange(0, total, 1, ScalarType.Int64, device).view(1, total);
        var causal = keys.le(queries).view(1, 1, t, total);
        var real = AttentionMask.to(device).ne(0).view(Batch, 1, 1, total);
        var allowed = causal.logical_and(real);
        return zeros([Batch, 1, t, total], dtype, device).masked_fill(allowed.logical_not(), MostNegative(dtype));
    }

    /// <summary>torch.finfo(dtype).min: the most negative finite value of a floating dtype.</summary>
    public static double MostNegative(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => float.MinValue,
        ScalarType.Float64 => double.MinValue,
        ScalarType.Float16 => -65504.0,
        ScalarType.BFloat16 => -3.3895313892515355e38,
        _ => throw new NotSupportedException($"attention in {dtype} is not supported"),
    };

    public void Dispose()
    {
        Positions.Dispose();
        AttentionMask.Dispose();
    }
}
