using System.Collections.Immutable;

namespace Superpipeline.Contracts;

/// <summary>What a generation job asks for, beyond its model and knobs (the wire form of the engine's GenerationRequest, its
/// prompts and KV placement): a prefill pass over the left-padded prompts, then one decode pass per new token.</summary>
/// <param name="Prompts">Token ids, one list per batch row, of any lengths (left padded with the pad id).</param>
/// <param name="MaxNewTokens">Tokens to make per row (at least 1).</param>
/// <param name="Temperature">Sampling: the logits are divided by it; null (with <paramref name="TopK"/> and <paramref name="TopP"/>
/// null) is greedy.</param>
/// <param name="Seed">Seed of the sampling (each row draws from a generator of its own).</param>
/// <param name="Eos">End-of-sequence id: a row that emits it is finished; null: rows run to <paramref name="MaxNewTokens"/>.</param>
/// <param name="Pad">Fills left padding and finished rows; null: the EOS id, else 0.</param>
/// <param name="Kv">Where each stage's KV caches live: "device" (on the stage's device for the job) or "host" (with its layer actors).</param>
public sealed record GenerationParameters(
    ImmutableArray<ImmutableArray<long>> Prompts,
    int MaxNewTokens,
    double? Temperature = null,
    int? TopK = null,
    double? TopP = null,
    long Seed = 0,
    long? Eos = null,
    long? Pad = null,
    string Kv = "device")
{
    /// <summary>Rows and their ids compare by value (a resubmitted job is the same job).</summary>
    public bool Equals(GenerationParameters? other) =>
        other is not null && MaxNewTokens == other.MaxNewTokens && Temperature == other.Temperature && TopK == other.TopK && TopP == other.TopP
        && Seed == other.Seed && Eos == other.Eos && Pad == other.Pad && Kv == other.Kv
        && Prompts.Length == other.Prompts.Length && Prompts.Zip(other.Prompts).All(p => p.First.AsSpan().SequenceEqual(p.Second.AsSpan()));

    public override int GetHashCode() => HashCode.Combine(Prompts.Length, MaxNewTokens, Seed, Kv);

    /// <summary>The longest prompt's length.</summary>
    public int LongestPrompt() => Prompts.IsDefaultOrEmpty ? 0 : Prompts.Max(p => p.IsDefault ? 0 : p.Length);
}

/// <summary>One pipeline stage of a generation as placed and measured: where it ran, which layers, its knobs, the most device
/// bytes it held over its passes (its KV caches included under device placement), the KV bytes its attention layers keep on
/// its node (at full capacity, on the device or with its layer actors), the host → device bytes it moved and its passes.</summary>
public sealed record GenerationStagePlan(int Stage, string Node, string Device, int FirstLayer, int LayerCount, int Window, int Swap,
    long PeakDeviceBytes, long KvBytes, long BytesTransferred, int Passes)
{
    /// <summary>The most host bytes the stage's weights held during the session: its LayerActors' stored weights, or with the
    /// disk tier the most its node's reads held at once.</summary>
    public long PeakHostWeightBytes { get; init; }
}
