using System.Collections.Immutable;
using System.Globalization;

namespace Superpipeline.Engine.Simulation;

/// <summary>The two decoder families the built-in specs cover.
/// <list type="bullet">
/// <item><see cref="Llama"/>: RMSNorm (weight only), no biases, rotary positions (no parameters), SwiGLU MLP
/// (gate, up and down projections), grouped-query attention when KV heads &lt; heads, untied LM head.</item>
/// <item><see cref="Opt"/>: LayerNorm (weight and bias), biases on every projection, learned positions
/// (max positions + 2 rows, OPT's offset), ReLU MLP (fc1, fc2), LM head tied to the token embedding.</item>
/// </list></summary>
public enum DecoderFamily { Llama, Opt }

/// <summary>How weights are stored (and so streamed): bytes per parameter of the weight matrices. Norm weights
/// and biases always stay fp16. Quantized formats carry one fp16 scale and one fp16 zero point per group of
/// <see cref="GroupSize"/> weights (asymmetric group-wise quantization, as ZeRO-Inference and FlexGen use with
/// group size 64): int4 = 0.5 + 4/64 = 0.5625 bytes per weight, int8 = 1.0625. Compute always runs in fp16
/// (quantized weights are dequantized on the device; the cost of dequantizing is not modelled).</summary>
public sealed record WeightFormat(string Name, double MatrixBytesPerParam, int GroupSize)
{
    public const int DefaultGroupSize = 64;

    public static WeightFormat Fp32 { get; } = new("fp32", 4, 0);
    public static WeightFormat Fp16 { get; } = new("fp16", 2, 0);
    public static WeightFormat Bf16 { get; } = new("bf16", 2, 0);
    public static WeightFormat Int8 { get; } = Quantized("int8", 8, DefaultGroupSize);
    public static WeightFormat Int4 { get; } = Quantized("int4", 4, DefaultGroupSize);

    /// <summary>Bytes per parameter of norm weights and biases (fp16).</summary>
    public const double VectorBytesPerParam = 2;

    static WeightFormat Quantized(string name, int bits, int group) => new(name, bits / 8.0 + 4.0 / group, group);

    public static IReadOnlyList<WeightFormat> All { get; } = [Fp32, Fp16, Bf16, Int8, Int4];

    /// <summary>Parses fp32, fp16, bf16, int8, int4; throws naming <paramref name="what"/>.</summary>
    public static WeightFormat Parse(string text, string what = "dtype") =>
        All.FirstOrDefault(f => string.Equals(f.Name, text.Trim(), StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"{what} must be one of {string.Join(", ", All.Select(f => f.Name))}; got '{text}'");

    public override string ToString() => GroupSize > 0
        ? $"{Name} ({MatrixBytesPerParam.ToString("0.####", CultureInfo.InvariantCulture)} B/weight incl. fp16 scale+zero per {GroupSize})"
        : $"{Name} ({MatrixBytesPerParam.ToString("0.##", CultureInfo.InvariantCulture)} B/weight)";
}

/// <summary>The shape of a decoder-only transformer, enough to derive every layer's parameters, bytes and FLOPs.</summary>
/// <param name="Layers">Transformer blocks. The streamed model has Layers + 2 layers: embedding, blocks, head.</param>
/// <param name="KvHeads">Key/value heads (grouped-query attention when fewer than <paramref name="Heads"/>).</param>
/// <param name="Ffn">MLP inner width.</param>
/// <param name="MaxPositions">Longest sequence; OPT's learned position table has MaxPositions + 2 rows.</param>
public sealed record TransformerShape(string Name, DecoderFamily Family, int Layers, int Hidden, int Heads, int KvHeads, int Ffn, int Vocab, int MaxPositions)
{
    public int HeadDim => Hidden / Heads;
    /// <summary>Width of the K (and of the V) projection: KV heads × head dim.</summary>
    public long KvDim => (long)KvHeads * HeadDim;

    /// <summary>Checks the shape; throws naming the first bad field.</summary>
    public TransformerShape Validated()
    {
        void Positive(long v, string field)
        {
            if (v < 1) throw new ArgumentException($"model {Name}: {field} must be at least 1; got {v}");
        }
        Positive(Layers, "layers"); Positive(Hidden, "hidden"); Positive(Heads, "heads"); Positive(KvHeads, "kvHeads");
        Positive(Ffn, "ffn"); Positive(Vocab, "vocab"); Positive(MaxPositions, "maxPositions");
        if (Hidden % Heads != 0) throw new ArgumentException($"model {Name}: hidden ({Hidden}) must be a multiple of heads ({Heads})");
        if (Heads % KvHeads != 0) throw new ArgumentException($"model {Name}: heads ({Heads}) must be a multiple of kvHeads ({KvHeads})");
        return this;
    }

    // ------------------------------------------------------------------ parameters

    /// <summary>Weight-matrix parameters of one block: attention projections and MLP.</summary>
    public long BlockMatrixParams => AttentionMatrixParams + MlpMatrixParams;
    long AttentionMatrixParams => 2L * Hidden * Hidden + 2L * Hidden * KvDim;                         // q, o; k, v
    long MlpMatrixParams => (Family == DecoderFamily.Llama ? 3L : 2L) * Hidden * Ffn;                  // gate, up, down | fc1, fc2

    /// <summary>Vector parameters of one block: norms (and biases for OPT).</summary>
    public long BlockVectorParams => Family == DecoderFamily.Llama
        ? 2L * Hidden                                                                                  // two RMSNorm weights
        : 2L * 2 * Hidden + (2L * Hidden + 2 * KvDim) + Ffn + Hidden;                                  // two LayerNorms; q,k,v,o, fc1, fc2 biases

    public long BlockParams => BlockMatrixParams + BlockVectorParams;

    long TokenEmbeddingParams => (long)Vocab * Hidden;
    long PositionParams => Family == DecoderFamily.Opt ? (long)(MaxPositions + 2) * Hidden : 0;
    long FinalNormParams => Family == DecoderFamily.Opt ? 2L * Hidden : Hidden;
    bool TiedHead => Family == DecoderFamily.Opt;

    /// <summary>Distinct parameters of the model (a tied LM head counts once), as model cards count them.</summary>
    public long ParameterCount => TokenEmbeddingParams + PositionParams + Layers * BlockParams + FinalNormParams + (TiedHead ? 0 : TokenEmbeddingParams);

    /// <summary>Bytes of one block's weights in <paramref name="format"/>.</summary>
    public long BlockBytes(WeightFormat format) => Bytes(BlockMatrixParams, BlockVectorParams, format);

    /// <summary>Bytes of the embedding layer: token embedding (a matrix, quantized like the others) and OPT's
    /// learned positions (kept at the weight format too: they are an embedding table).</summary>
    public long EmbeddingBytes(WeightFormat format) => Bytes(TokenEmbeddingParams + PositionParams, 0, format);

    /// <summary>Bytes of the head layer: final norm and LM head. A tied head is streamed again (the device needs
    /// the matrix a second time), so its bytes count here although its parameters count once.</summary>
    public long HeadBytes(WeightFormat format) => Bytes(TokenEmbeddingParams, FinalNormParams, format);

    /// <summary>Bytes of the whole streamed model (the tied matrix once per layer that uses it).</summary>
    public long StreamedBytes(WeightFormat format) => EmbeddingBytes(format) + Layers * BlockBytes(format) + HeadBytes(format);

    static long Bytes(long matrixParams, long vectorParams, WeightFormat f) =>
        (long)Math.Ceiling(matrixParams * f.MatrixBytesPerParam + vectorParams * WeightFormat.VectorBytesPerParam);

    // ------------------------------------------------------------------ per-layer work

    /// <summary>Bytes of fp16 K and V for <paramref name="tokens"/> tokens of <paramref name="batch"/> sequences in one block.</summary>
    public long KvBytesPerBlock(long batch, long tokens) => 2L * batch * tokens * KvDim * ActivationBytes;

    /// <summary>Activations and KV cache are fp16.</summary>
    public const int ActivationBytes = 2;
    /// <summary>Token ids are int64, logits fp32 (as Hugging Face returns them).</summary>
    public const int TokenIdBytes = 8, LogitBytes = 4;

    /// <summary>The work of every streamed layer for one micro-batch in one pass.
    /// FLOPs count a multiply-add as 2. Prefill (<paramref name="past"/> = 0, <paramref name="tokens"/> = prompt):
    /// every projection and the MLP cost 2·b·s per weight; attention scores and the weighted sum cost 2·b·s²·d
    /// each (4·b·s²·d, computed in full as eager attention and FlexGen do, not halved for the causal mask).
    /// Decode (<paramref name="tokens"/> = 1 with <paramref name="past"/> cached tokens): 2·b per weight, and
    /// 4·b·(past+1)·d for attention over the cache. GQA changes K/V sizes, not attention FLOPs. The LM head
    /// computes logits for the last position only (all that generation needs). Norms, softmax and activations
    /// are elementwise and not counted as FLOPs.
    /// Device memory traffic (for the memory-bound time of a layer): its weights as stored, the KV cache it reads
    /// and writes when the cache is on the device, and its input and output activations.</summary>
    /// <param name="kvOnDevice">False when the cache lives on the host and attention over it runs there
    /// (FlexGen's --cpu-cache-compute): decode attention FLOPs and KV reads move to the host.</param>
    public ImmutableArray<LayerWork> Work(WeightFormat format, long batch, long tokens, long past, bool kvOnDevice)
    {
        if (batch < 1 || tokens < 1 || past < 0) throw new ArgumentException($"model {Name}: batch and tokens must be positive and past tokens not negative");
        long bsh = batch * tokens * Hidden * ActivationBytes;
        bool decode = past > 0;
        var list = ImmutableArray.CreateBuilder<LayerWork>(Layers + 2);

        long embBytes = EmbeddingBytes(format);
        list.Add(new LayerWork("embed", embBytes, 0, 0, 0, batch * tokens * TokenIdBytes + bsh + bsh, bsh));

        long blockBytes = BlockBytes(format);
        double linear = 2.0 * batch * tokens * BlockMatrixParams;
        long context = past + tokens;
        double attention = 4.0 * batch * tokens * context * Hidden;
        long kvRead = KvBytesPerBlock(batch, past), kvWrite = KvBytesPerBlock(batch, tokens);
        bool hostAttention = decode && !kvOnDevice;
        double deviceFlops = linear + (hostAttention ? 0 : attention);
        double hostFlops = hostAttention ? attention : 0;
        long traffic = blockBytes + 2 * bsh + (kvOnDevice ? kvRead + kvWrite : 0);
        for (int b = 0; b < Layers; b++)
            list.Add(new LayerWork($"block.{b}", blockBytes, deviceFlops, hostFlops, hostAttention ? kvRead + kvWrite : 0, traffic, bsh));

        long headBytes = HeadBytes(format);
        long logits = batch * (long)Vocab * LogitBytes;
        list.Add(new LayerWork("head", headBytes, 2.0 * batch * Hidden * Vocab, 0, 0, headBytes + bsh + logits, logits));
        return list.MoveToImmutable();
    }

    /// <summary>Input of the first layer: the token ids of one micro-batch.</summary>
    public static long InputBytes(long batch, long tokens) => batch * tokens * TokenIdBytes;

    public override string ToString() =>
        $"{Name}: {Family.ToString().ToLowerInvariant()}, {Layers} blocks, hidden {Hidden}, {Heads} heads ({KvHeads} KV), FFN {Ffn}, vocab {Vocab}";
}

/// <summary>The work of one streamed layer in one pass for one micro-batch, derived from the model shape.</summary>
/// <param name="Bytes">Weight bytes as stored and streamed.</param>
/// <param name="DeviceFlops">Arithmetic FLOPs on the device.</param>
/// <param name="HostFlops">Attention FLOPs run on the host (KV cache on the host); 0 otherwise.</param>
/// <param name="HostKvBytes">KV cache bytes the host reads and writes for that attention.</param>
/// <param name="DeviceTrafficBytes">Bytes the device reads and writes from its own memory (weights, KV, activations).</param>
/// <param name="OutputBytes">The activation it produces.</param>
public sealed record LayerWork(string Name, long Bytes, double DeviceFlops, double HostFlops, long HostKvBytes, long DeviceTrafficBytes, long OutputBytes);
