using System.Globalization;
using System.Text.Json;
using Superpipeline.Engine.Generation;
using Superpipeline.Engine.Policy;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Engine.Models;

/// <summary>The shape of a Llama checkpoint (transformers' LlamaConfig, model_type "llama"), as read from config.json.</summary>
public sealed record LlamaConfig(int Hidden, int Ffn, int Layers, int Heads, int KvHeads, double RmsNormEps, double RopeTheta,
    int Vocab, int MaxPositions, bool TieWordEmbeddings, string TorchDtype = "float32")
{
    public const string ModelType = "llama";
    public int HeadDim => Hidden / Heads;
    public int KvDim => KvHeads * HeadDim;

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first bad key (config.json's name for it).</summary>
    public void Validate(string file = "config.json")
    {
        void Positive(int value, string key)
        {
            if (value < 1) throw new CheckpointConfigException(file, key, $"must be at least 1 (got {value})");
        }
        Positive(Hidden, "hidden_size"); Positive(Ffn, "intermediate_size"); Positive(Layers, "num_hidden_layers");
        Positive(Heads, "num_attention_heads"); Positive(KvHeads, "num_key_value_heads"); Positive(Vocab, "vocab_size");
        Positive(MaxPositions, "max_position_embeddings");
        if (Hidden % Heads != 0)
            throw new CheckpointConfigException(file, "hidden_size", $"({Hidden}) must be a multiple of num_attention_heads ({Heads})");
        if (Heads % KvHeads != 0)
            throw new CheckpointConfigException(file, "num_attention_heads", $"({Heads}) must be a multiple of num_key_value_heads ({KvHeads})");
        if (HeadDim % 2 != 0)
            throw new CheckpointConfigException(file, "hidden_size", $"gives an odd head dimension ({HeadDim}); rotary positions need an even one");
        if (!(RmsNormEps > 0)) throw new CheckpointConfigException(file, "rms_norm_eps", $"must be positive (got {RmsNormEps})");
        if (!(RopeTheta > 0)) throw new CheckpointConfigException(file, "rope_theta", $"must be positive (got {RopeTheta})");
    }

    /// <summary>Reads <c>DIR/config.json</c> (or the file itself). Missing, mistyped or unsupported keys are one-line errors
    /// naming the file and the key.</summary>
    public static LlamaConfig Read(string path)
    {
        using var c = ConfigJson.Open(path);
        return Read(c);
    }

    /// <summary>Reads an open config (a file's, or LLaVA's text_config as <see cref="ConfigJson.FromText"/> holds it).</summary>
    public static LlamaConfig Read(ConfigJson c)
    {
        string file = c.File;
        c.ModelType([ModelType]);
        int heads = c.Int("num_attention_heads");
        string? act = c.String("hidden_act");
        if (act is not null and not "silu") throw new CheckpointConfigException(file, "hidden_act", $"is \"{act}\"; only \"silu\" is supported");
        foreach (var flag in new[] { "attention_bias", "mlp_bias" })
            if (c.Root.TryGetProperty(flag, out var b) && b.ValueKind == JsonValueKind.True)
                throw new CheckpointConfigException(file, flag, "is true; biases are not supported");
        if (c.Has("rope_scaling"))
            throw new CheckpointConfigException(file, "rope_scaling", "is set; only the default rotary embedding is supported");
        int hidden = c.Int("hidden_size");
        if (c.Root.TryGetProperty("head_dim", out var hd) && hd.ValueKind != JsonValueKind.Null && heads > 0
            && (!hd.TryGetInt32(out int headDim) || headDim != hidden / heads))
            throw new CheckpointConfigException(file, "head_dim", $"is {hd.GetRawText()}; only hidden_size / num_attention_heads is supported");
        var config = new LlamaConfig(
            Hidden: hidden,
            Ffn: c.Int("intermediate_size"),
            Layers: c.Int("num_hidden_layers"),
            Heads: heads,
            KvHeads: c.Int("num_key_value_heads", heads),
            RmsNormEps: c.Double("rms_norm_eps"),
            RopeTheta: c.Double("rope_theta", 10000.0),
            Vocab: c.Int("vocab_size"),
            MaxPositions: c.Int("max_position_embeddings"),
            TieWordEmbeddings: c.Bool("tie_word_embeddings", false),
            TorchDtype: c.String("torch_dtype") ?? c.String("dtype") ?? "float32");
        config.Validate(file);
        return config;
    }

    /// <summary>config.json as transformers' save_pretrained writes it for LlamaForCausalLM (keys sorted, indented by 2).</summary>
    public string ToJson()
    {
        var keys = new SortedDictionary<string, object?>(StringComparer.Ordinal)
        {
            ["architectures"] = new[] { "LlamaForCausalLM" }, ["attention_bias"] = false, ["attention_dropout"] = 0.0,
            ["head_dim"] = HeadDim, ["hidden_act"] = "silu", ["hidden_size"] = Hidden, ["initializer_range"] = 0.02,
            ["intermediate_size"] = Ffn, ["max_position_embeddings"] = MaxPositions, ["mlp_bias"] = false, ["model_type"] = ModelType,
            ["num_attention_heads"] = Heads, ["num_hidden_layers"] = Layers, ["num_key_value_heads"] = KvHeads, ["pretraining_tp"] = 1,
            ["rms_norm_eps"] = RmsNormEps, ["rope_scaling"] = null, ["rope_theta"] = RopeTheta, ["tie_word_embeddings"] = TieWordEmbeddings,
            ["torch_dtype"] = TorchDtype, ["use_cache"] = true, ["vocab_size"] = Vocab,
        };
        return JsonSerializer.Serialize(keys, new JsonSerializerOptions { WriteIndented = true, IndentSize = 2 }) + "\n";
    }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"llama(layers {Layers}, hidden {Hidden}, heads {Heads}/{KvHeads}, ffn {Ffn}, vocab {Vocab}, theta {RopeTheta}, eps {RmsNormEps})");
}

/// <summary>The Llama family (transformers' LlamaForCausalLM): layers are the token embedding, one per decoder block and the
/// head (final RMSNorm + LM head). Parameter names are the checkpoint's own tensor names, all in <see cref="Names"/>.</summary>
public static class Llama
{
    /// <summary>The one table from layers to the tensor names of a Llama checkpoint (LlamaForCausalLM's: "model." and
    /// "lm_head.weight").</summary>
    public static LlamaNames Names { get; } = new();

    /// <summary>Seeded weights: matrices N(0, <see cref="InitStd"/>), norm weights 1 + N(0, <see cref="NormStd"/>): large enough
    /// that a wrong transpose, rotation or norm shows in the logits.</summary>
    public const double InitStd = 0.2, NormStd = 0.3;

    /// <summary>The model over <paramref name="batch"/> rows of <paramref name="sequence"/> token ids (seeded random ids).</summary>
    /// <paramref name="names"/>: the tensor names (<see cref="Names"/> by default; a LLaVA checkpoint's decoder has its own).
    public static LayeredModel Create(string name, LlamaConfig config, int batch, int sequence, LlamaNames? names = null)
    {
        names ??= Names;
        config.Validate();
        if (batch < 1) throw new FieldException(FieldException.Batch, $"must be at least 1 (got {batch})");
        if (sequence < 1 || sequence > config.MaxPositions)
            throw new FieldException(FieldException.Sequence, $"({sequence}) must be in [1, {config.MaxPositions}] (max_position_embeddings)");
        var layers = new List<Layer> { new LlamaEmbedding(0, config, names) };
        for (int b = 0; b < config.Layers; b++) layers.Add(new LlamaBlock(b + 1, b, config, names));
        layers.Add(new LlamaHead(config.Layers + 1, config, names));
        return new LayeredModel(name, layers, [batch, sequence], ScalarType.Int64, seed =>
        {
            using var g = new Generator(unchecked((ulong)seed ^ 0x11a_3a5eedUL));
            return randint(config.Vocab, [batch, sequence], dtype: ScalarType.Int64, generator: g);
        });
    }

    internal static Tensor Normal(Generator g, params long[] shape) => randn(shape, generator: g).mul_(InitStd);
    internal static Tensor NormWeight(Generator g, long size) => randn([size], generator: g).mul_(NormStd).add_(1.0);

    internal static void CheckActivations(long[] input, LlamaConfig c, string layer)
    {
        if (input.Length != 3 || input[2] != c.Hidden || input[1] > c.MaxPositions)
            throw new ArgumentException($"{layer}: expected activations [batch, ≤{c.MaxPositions}, {c.Hidden}], got [{string.Join(", ", input)}]");
    }

    /// <summary>LlamaRMSNorm: in float32, x * rsqrt(mean(x²) + eps), cast back to the input's dtype, then weight *.
    /// Temporaries for N tokens of H: x² (N·H), its mean, + eps and rsqrt (3·N), the normalised x (N·H); the product is the output.</summary>
    internal static Tensor RmsNorm(Tensor x, Tensor weight, double eps)
    {
        var input = x.dtype;
        var h = x.to_type(ScalarType.Float32);
        var variance = h.pow(2).mean([-1], keepdim: true);
        h = h * (variance + eps).rsqrt();
        return weight * h.to_type(input);
    }

    /// <summary>rotate_half: cat(-x2, x1) over the last dimension's halves.</summary>
    internal static Tensor RotateHalf(Tensor x)
    {
        long half = x.shape[^1] / 2;
        return cat([-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
    }

    /// <summary>LlamaRotaryEmbedding (default rope): inv_freq = 1 / theta^(arange(0, d, 2) / d), freqs = positions ⊗ inv_freq,
    /// emb = cat(freqs, freqs); returns (cos, sin) [T, d] in float32 for positions 0..T-1.</summary>
    internal static (Tensor Cos, Tensor Sin) Rotary(LlamaConfig c, long t, Device device)
    {
        int d = c.HeadDim;
        var exponent = arange(0, d, 2, ScalarType.Int64, device).to_type(ScalarType.Float32) / d;
        var invFreq = pow(c.RopeTheta, exponent).reciprocal();
        var positions = arange(0, t, 1, ScalarType.Int64, device).to_type(ScalarType.Float32);
        var freqs = outer(positions, invFreq);
        var emb = cat([freqs, freqs], -1);
        return (emb.cos(), emb.sin());
    }

    /// <summary>The same tables at given <paramref name="positions"/> (int64 [B, T]): (cos, sin) [B, 1, T, d] in float32, to
    /// broadcast over heads (transformers computes inv_freq ⊗ position_ids the same way for each row).</summary>
    internal static (Tensor Cos, Tensor Sin) Rotary(LlamaConfig c, Tensor positions, Device device)
    {
        int d = c.HeadDim;
        var exponent = arange(0, d, 2, ScalarType.Int64, device).to_type(ScalarType.Float32) / d;
        var invFreq = pow(c.RopeTheta, exponent).reciprocal();
        var freqs = positions.to(device).to_type(ScalarType.Float32).unsqueeze(-1) * invFreq;
        var emb = cat([freqs, freqs], -1).unsqueeze(1);
        return (emb.cos(), emb.sin());
    }

    /// <summary>Attention of queries [B, heads, T, d] over all cached keys and values [B, kv heads, L, d] under the step's mask:
    /// grouped heads repeat K and V, as repeat_kv does.</summary>
    internal static Tensor CachedAttention(Tensor q, Tensor keys, Tensor values, int heads, StepContext step)
    {
        long b = keys.shape[0], kvHeads = keys.shape[1], total = keys.shape[2], d = keys.shape[3];
        if (total != step.TotalLength)
            throw new InvalidOperationException($"the KV cache holds {total} entries, but the step covers {step.TotalLength} (past + tokens)");
        if (kvHeads != heads)
        {
            long groups = heads / kvHeads;
            keys = keys.unsqueeze(2).expand(b, kvHeads, groups, total, d).reshape(b, heads, total, d);
            values = values.unsqueeze(2).expand(b, kvHeads, groups, total, d).reshape(b, heads, total, d);
        }
        return F.scaled_dot_product_attention(q, keys, values, step.AttentionBias(q.dtype, q.device), 0.0, false);
    }

    internal static KvCache Require(KvCache? cache, string layer) =>
        cache ?? throw new InvalidOperationException($"{layer}: a generation pass needs the layer's KV cache");
}

/// <summary>The one table from Llama layers to a checkpoint's tensor names: the decoder's under <paramref name="model"/>
/// ("model." for LlamaForCausalLM; a LLaVA checkpoint's "model.language_model." or "language_model.model.") and the LM head's
/// matrix, <paramref name="lmHead"/> ("lm_head.weight", or "language_model.lm_head.weight").</summary>
public sealed class LlamaNames(string model = "model.", string lmHead = "lm_head.weight")
{
    public string Model { get; } = model;
    public string Embedding => $"{Model}embed_tokens.weight";
    public string FinalNorm => $"{Model}norm.weight";
    public string LmHead { get; } = lmHead;
    public string InputNorm(int i) => $"{Model}layers.{i}.input_layernorm.weight";
    public string Q(int i) => $"{Model}layers.{i}.self_attn.q_proj.weight";
    public string K(int i) => $"{Model}layers.{i}.self_attn.k_proj.weight";
    public string V(int i) => $"{Model}layers.{i}.self_attn.v_proj.weight";
    public string O(int i) => $"{Model}layers.{i}.self_attn.o_proj.weight";
    public string PostNorm(int i) => $"{Model}layers.{i}.post_attention_layernorm.weight";
    public string Gate(int i) => $"{Model}layers.{i}.mlp.gate_proj.weight";
    public string Up(int i) => $"{Model}layers.{i}.mlp.up_proj.weight";
    public string Down(int i) => $"{Model}layers.{i}.mlp.down_proj.weight";

    /// <summary>The head's LM matrix: <see cref="LmHead"/>, or the embedding matrix when the head is tied.</summary>
    public string Head(LlamaConfig c) => c.TieWordEmbeddings ? Embedding : LmHead;
}

/// <summary>Token embedding: int64 [B, T] → float32 [B, T, H].</summary>
public sealed class LlamaEmbedding(int index, LlamaConfig c, LlamaNames names) : Layer(index, "embed")
{
    /// <summary>With LlamaForCausalLM's tensor names (<see cref="Llama.Names"/>).</summary>
    public LlamaEmbedding(int index, LlamaConfig c) : this(index, c, Llama.Names) { }

    public override IReadOnlyList<ParamSpec> Parameters { get; } = [new(names.Embedding, c.Vocab, c.Hidden)];

    public override long[] OutputShape(long[] input)
    {
        if (input.Length != 2 || input[1] > c.MaxPositions)
            throw new ArgumentException($"{Name}: expected token ids [batch, ≤{c.MaxPositions}], got [{string.Join(", ", input)}]");
        return [input[0], input[1], c.Hidden];
    }

    public override long? MaxPositions => c.MaxPositions;

    public override double Flops(long[] input) => 0;

    /// <summary>None: index_select writes the output and the view of it is the output. (The flattened ids are a view.)</summary>
    public override long WorkspaceBytes(long[] input) => 0;

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor ids)
    {
        long b = ids.shape[0], t = ids.shape[1];
        return w[names.Embedding].index_select(0, ids.reshape(-1)).view(b, t, c.Hidden);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => new Dictionary<string, Tensor>
    {
        [names.Embedding] = Llama.Normal(g, c.Vocab, c.Hidden),
    };
}

/// <summary>One LlamaDecoderLayer: x + o(attn(rope(q), rope(k), v)) over input_layernorm(x) with grouped heads and a causal mask,
/// then x + down(silu(gate(h)) * up(h)) over post_attention_layernorm(x).</summary>
public sealed class LlamaBlock(int index, int block, LlamaConfig c, LlamaNames names) : Layer(index, $"block.{block}")
{
    /// <summary>With LlamaForCausalLM's tensor names (<see cref="Llama.Names"/>).</summary>
    public LlamaBlock(int index, int block, LlamaConfig c) : this(index, block, c, Llama.Names) { }

    public int Block { get; } = block;

    public override IReadOnlyList<ParamSpec> Parameters { get; } =
    [
        new(names.InputNorm(block), c.Hidden),
        new(names.Q(block), c.Hidden, c.Hidden), new(names.K(block), c.KvDim, c.Hidden),
        new(names.V(block), c.KvDim, c.Hidden), new(names.O(block), c.Hidden, c.Hidden),
        new(names.PostNorm(block), c.Hidden),
        new(names.Gate(block), c.Ffn, c.Hidden), new(names.Up(block), c.Ffn, c.Hidden), new(names.Down(block), c.Hidden, c.Ffn),
    ];

    public override long[] OutputShape(long[] input)
    {
        Llama.CheckActivations(input, c, Name);
        return input;
    }

    public override double Flops(long[] input)
    {
        double tokens = input[0] * input[1], h = c.Hidden, t = input[1];
        double projections = 2 * h * h + 2 * h * c.KvDim + 3 * h * c.Ffn;
        return 2 * tokens * projections + 2 * 2 * tokens * t * h; // projections + scores and weighted sum
    }

    /// <summary>Counted from <see cref="Forward"/> as it runs inside the pass's dispose scope (every tensor it makes stays
    /// alive until the layer is done, so the workspace is their sum). N = B·T tokens, H hidden, K = kv heads · head dim,
    /// F = ffn, d = head dim. Each RMSNorm: x² (N·H), its mean, + eps, rsqrt (3·N), the normalised x and its weighted product
    /// (2·N·H). q, k, v projections: N·H + 2·N·K. Rotary tables (per block): the exponent as float, / d, the base as a scalar
    /// tensor, its power and reciprocal (2·d + 1; the int64 arange d/2 int64s), positions (T; the int64 arange T int64s),
    /// freqs (T·d/2), emb, cos, sin (3·T·d). Rotating q: q·cos, -x2 (half), cat, ·sin, the sum: 4.5·N·H; k: 4.5·N·K. Grouped
    /// heads repeat k and v (2·N·H; none when kv heads = heads). The attention output (N·H; libtorch's CPU kernel lays it out
    /// [B, T, heads, d], so the transpose and reshape to [B, T, H] are views, as for the GPT block), o_proj (N·H), the first
    /// residual (N·H); gate, silu, up, their product (4·N·F), down (N·H). The second residual is the output. Inside the
    /// attention call: scores [B, heads, T, T] and their softmax (2·B·heads·T²), an upper bound as for the GPT block.
    /// tests/LlamaSpec.cs checks the rest against the storages the forward's scope holds.</summary>
    public override long WorkspaceBytes(long[] input) => FloatsHeld(input) * sizeof(float) + IntsHeld(input) * sizeof(long)
        + 2L * input[0] * c.Heads * input[1] * input[1] * sizeof(float);

    internal long FloatsHeld(long[] input)
    {
        long n = input[0] * input[1], t = input[1], h = c.Hidden, k = c.KvDim, d = c.HeadDim, f = c.Ffn;
        long norms = 2 * (3 * n * h + 3 * n);
        long rotary = 2 * d + 1 + t + t * d / 2 + 3 * t * d;
        long rotate = 9 * n * h / 2 + 9 * n * k / 2;
        long repeat = c.KvHeads == c.Heads ? 0 : 2 * n * h;
        return norms + n * h + 2 * n * k + rotary + rotate + repeat + n * h + n * h + n * h + 4 * n * f + n * h;
    }

    internal long IntsHeld(long[] input) => c.HeadDim / 2 + input[1];

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x) =>
        Forward(w, x, t => Llama.Rotary(c, t, x.device), (q, k, v) =>
        {
            if (c.KvHeads != c.Heads)
            {
                long b = k.shape[0], t = k.shape[2];
                int groups = c.Heads / c.KvHeads;
                k = k.unsqueeze(2).expand(b, c.KvHeads, groups, t, c.HeadDim).reshape(b, c.Heads, t, c.HeadDim);
                v = v.unsqueeze(2).expand(b, c.KvHeads, groups, t, c.HeadDim).reshape(b, c.Heads, t, c.HeadDim);
            }
            return F.scaled_dot_product_attention(q, k, v, null, 0.0, true);
        });

    /// <summary>The decoder layer, whichever pass: RMSNorm, projections, rotary positions from <paramref name="rotary"/> (given the
    /// tokens), <paramref name="attention"/> over q, k, v ([B, heads or KV heads, T, d]), output projection, SwiGLU MLP.</summary>
    Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x, Func<long, (Tensor Cos, Tensor Sin)> rotary,
        Func<Tensor, Tensor, Tensor, Tensor> attention)
    {
        long b = x.shape[0], t = x.shape[1];
        int heads = c.Heads, kvHeads = c.KvHeads, d = c.HeadDim;
        var h = Llama.RmsNorm(x, w[names.InputNorm(Block)], c.RmsNormEps);
        var q = F.linear(h, w[names.Q(Block)]).view(b, t, heads, d).transpose(1, 2);
        var k = F.linear(h, w[names.K(Block)]).view(b, t, kvHeads, d).transpose(1, 2);
        var v = F.linear(h, w[names.V(Block)]).view(b, t, kvHeads, d).transpose(1, 2);
        var (cos, sin) = rotary(t);
        q = q * cos + Llama.RotateHalf(q) * sin;
        k = k * cos + Llama.RotateHalf(k) * sin;
        var attn = attention(q, k, v);
        var merged = attn.transpose(1, 2).reshape(b, t, c.Hidden);
        x = x + F.linear(merged, w[names.O(Block)]);
        h = Llama.RmsNorm(x, w[names.PostNorm(Block)], c.RmsNormEps);
        var m = F.silu(F.linear(h, w[names.Gate(Block)])) * F.linear(h, w[names.Up(Block)]);
        return x + F.linear(m, w[names.Down(Block)]);
    }

    public override KvLayout? Kv { get; } = new(c.KvHeads, c.HeadDim);

    /// <summary>An upper bound for a generation pass over T tokens with P cached (L = P + T): the plain figure for T tokens
    /// (whose repeat and scores terms cover T keys), plus the cached K and V read back contiguous (2·B·L·K), their repeat to
    /// every head (2·B·L·H when grouped), the additive mask (B·T·L floats, its boolean steps and aranges), the rotary tables at
    /// the given positions ([B, T, d]: 4·B·T·d) and the scores over L keys (2·B·heads·T·L).</summary>
    public override long WorkspaceBytes(long[] input, StepContext step)
    {
        long b = input[0], t = input[1], l = step.TotalLength, h = c.Hidden;
        long floats = FloatsHeld(input) + 2 * b * l * c.KvDim + (c.KvHeads == c.Heads ? 0 : 2 * b * l * h) + b * t * l + 4 * b * t * c.HeadDim
            + 2L * b * c.Heads * t * l;
        long bools = 3 * b * t * l + t * l + b * l;
        return floats * sizeof(float) + (IntsHeld(input) + 2 * l + b * t) * sizeof(long) + bools;
    }

    /// <summary>The decoder layer in a generation pass: rotary positions at the step's positions, this pass's K and V appended to
    /// the cache, attention over every cached entry under the step's mask (grouped heads against the cached K/V).</summary>
    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x, StepContext step, KvCache? cache)
    {
        var kv = Llama.Require(cache, Name);
        return Forward(w, x, _ => Llama.Rotary(c, step.Positions, x.device), (q, k, v) =>
        {
            var (keys, values) = kv.Append(k, v);
            return Llama.CachedAttention(q, keys, values, c.Heads, step);
        });
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => new Dictionary<string, Tensor>
    {
        [names.InputNorm(Block)] = Llama.NormWeight(g, c.Hidden),
        [names.Q(Block)] = Llama.Normal(g, c.Hidden, c.Hidden), [names.K(Block)] = Llama.Normal(g, c.KvDim, c.Hidden),
        [names.V(Block)] = Llama.Normal(g, c.KvDim, c.Hidden), [names.O(Block)] = Llama.Normal(g, c.Hidden, c.Hidden),
        [names.PostNorm(Block)] = Llama.NormWeight(g, c.Hidden),
        [names.Gate(Block)] = Llama.Normal(g, c.Ffn, c.Hidden), [names.Up(Block)] = Llama.Normal(g, c.Ffn, c.Hidden),
        [names.Down(Block)] = Llama.Normal(g, c.Hidden, c.Ffn),
    };
}

/// <summary>Final RMSNorm (model.norm) and the LM head: [B, T, H] → logits [B, T, V]. With tie_word_embeddings the head's matrix
/// is the embedding's (read again by this layer: each layer owns its weights).</summary>
public sealed class LlamaHead(int index, LlamaConfig c, LlamaNames names) : Layer(index, "head"), ITiedLayer
{
    /// <summary>With LlamaForCausalLM's tensor names (<see cref="Llama.Names"/>).</summary>
    public LlamaHead(int index, LlamaConfig c) : this(index, c, Llama.Names) { }

    /// <summary>With <c>tie_word_embeddings</c>, the LM matrix is the embedding's: seeded weights give it the embedding's values.</summary>
    public Layer? TiedTo(string parameter) => c.TieWordEmbeddings && parameter == names.Embedding ? new LlamaEmbedding(0, c, names) : null;

    public override IReadOnlyList<ParamSpec> Parameters { get; } =
        [new(names.FinalNorm, c.Hidden), new(names.Head(c), c.Vocab, c.Hidden)];

    public override long[] OutputShape(long[] input)
    {
        Llama.CheckActivations(input, c, Name);
        return [input[0], input[1], c.Vocab];
    }

    public override double Flops(long[] input) => 2.0 * input[0] * input[1] * c.Hidden * c.Vocab;

    /// <summary>The norm's x² and normalised x (2·N·H) and its mean, + eps, rsqrt (3·N), and the weighted norm (N·H); the logits are
    /// the output.</summary>
    public override long WorkspaceBytes(long[] input)
    {
        long n = input[0] * input[1];
        return (3 * n * c.Hidden + 3 * n) * sizeof(float);
    }

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x) =>
        F.linear(Llama.RmsNorm(x, w[names.FinalNorm], c.RmsNormEps), w[names.Head(c)]);

    /// <summary>[B, 1, V] when the step asks for the last position only (generate's logits_to_keep = 1).</summary>
    public override long[] OutputShape(long[] input, StepContext step) =>
        step.LastPositionOnly ? OutputShape([input[0], 1, .. input[2..]]) : OutputShape(input);

    public override long WorkspaceBytes(long[] input, StepContext step) =>
        step.LastPositionOnly ? WorkspaceBytes([input[0], 1, .. input[2..]]) : WorkspaceBytes(input);

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x, StepContext step, KvCache? cache) =>
        Forward(w, step.LastPositionOnly ? x.narrow(1, x.shape[1] - 1, 1) : x);

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => new Dictionary<string, Tensor>
    {
        [names.FinalNorm] = Llama.NormWeight(g, c.Hidden),
        [names.Head(c)] = Llama.Normal(g, c.Vocab, c.Hidden),
    };
}
