using System.Collections.Immutable;

namespace Superpipeline.Contracts;

/// <summary>The measured record of one generation (a prefill pass, then one decode pass per new token) on one device.</summary>
/// <param name="KvPlacement">"device" (each layer's cache stays on the device for the session) or "host" (kept with the layer
/// on the host and brought in with its weights).</param>
/// <param name="PromptTokens">Columns of the left-padded prompts.</param>
/// <param name="NewTokens">Tokens made per row (fewer than asked when every row reached EOS).</param>
/// <param name="TimeToFirstTokenSeconds">From the start to the first token: the prefill pass and its sampling.</param>
/// <param name="DecodeTokensPerSecond">Tokens made by the decode passes (rows × steps after the first) per second of decoding.</param>
/// <param name="PeakDeviceBytes">Most device bytes held at once over every pass, KV caches on the device included.</param>
/// <param name="KvBytes">K and V of every attention layer at full capacity (prompt + new tokens), wherever they are kept.</param>
/// <param name="BytesTransferred">Host → device bytes over every pass: weights, inputs and, with host KV, the caches.</param>
public sealed record GenerationReport(
    string Device,
    int Layers,
    int Window,
    int Swap,
    string KvPlacement,
    int Batch,
    int PromptTokens,
    int NewTokens,
    int Passes,
    long ModelBytes,
    long DeviceCapacityBytes,
    double TimeToFirstTokenSeconds,
    double DecodeTokensPerSecond,
    long PeakDeviceBytes,
    long KvBytes,
    long BytesTransferred,
    double WallSeconds)
{
    /// <summary>The placement, when the generation ran as pipeline stages through the job system: each stage's node, layers,
    /// peak and KV bytes (empty when one in-process stage ran it directly).</summary>
    public ImmutableArray<GenerationStagePlan> Stages { get; init; } = [];

    /// <summary>The most host bytes held by weights on one stage's node during the generation (the largest stage's figure; 0
    /// when not measured).</summary>
    public long PeakHostWeightBytes { get; init; }
}
