using System.Globalization;
using System.Text.Json;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Generation;
using Superpipeline.Engine.Policy;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Engine.Models;

/// <summary>The shape of a GPT-2 checkpoint (transformers' GPT2Config, model_type "gpt2"), as read from config.json.
/// Only what modeling_gpt2.py computes by default: gelu_new, scaled attention, no per-layer scaling, no upcast reorder.</summary>
public sealed record Gpt2Config(int Hidden, int Layers, int Heads, int MaxPositions, int Vocab, double LayerNormEps = 1e-5,
    int? Inner = null, bool TieWordEmbeddings = true, string TorchDtype = "float32")
{
    public const string ModelType = "gpt2";
    public int HeadDim => Hidden / Heads;

    /// <summary>n_inner, or 4 · n_embd when it is null (as GPT2MLP takes it).</summary>
    public int Ffn => Inner ?? 4 * Hidden;

    /// <summary>Throws a <see cref="CheckpointConfigException"/> naming the first bad key (config.json's name for it).</summary>
    public void Validate(string file = "config.json")
    {
        void Positive(int value, string key)
        {
            if (value < 1) throw new CheckpointConfigException(file, key, $"must be at least 1 (got {value})");
        }
        Positive(Hidden, "n_embd"); Positive(Layers, "n_layer"); Positive(Heads, "n_head"); Positive(MaxPositions, "n_positions");
        Positive(Vocab, "vocab_size");
        if (Inner is int inner) Positive(inner, "n_inner");
        if (Hidden % Heads != 0)
            throw new CheckpointConfigException(file, "n_embd", $"({Hidden}) must be a multiple of n_head ({Heads})");
        if (!(LayerNormEps > 0)) throw new CheckpointConfigException(file, "layer_norm_epsilon", $"must be positive (got {LayerNormEps})");
    }

    /// <summary>Reads <c>DIR/config.json</c> (or the file itself). Missing, mistyped or unsupported keys are one-line errors
    /// naming the file and the key.</summary>
    public static Gpt2Config Read(string path)
    {
        using var c = ConfigJson.Open(path);
        string file = c.File;
        c.ModelType([ModelType]);
        string? act = c.String("activation_function");
        if (act is not null and not "gelu_new")
            throw new CheckpointConfigException(file, "activation_function", $"is \"{act}\"; only \"gelu_new\" is supported");
        if (!c.Bool("scale_attn_weights", true))
            throw new CheckpointConfigException(file, "scale_attn_weights", "is false; only scaled attention is supported");
        foreach (var flag in new[] { "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn" })
            if (c.Bool(flag, false)) throw new CheckpointConfigException(file, flag, "is true; only false is supported");
        var config = new Gpt2Config(
            Hidden: c.Int("n_embd"),
            Layers: c.Int("n_layer"),
            Heads: c.Int("n_head"),
            MaxPositions: c.Int("n_positions"),
            Vocab: c.Int("vocab_size"),
            LayerNormEps: c.Double("layer_norm_epsilon", 1e-5),
            Inner: c.Has("n_inner") ? c.Int("n_inner") : null,
            TieWordEmbeddings: c.Bool("tie_word_embeddings", true),
            TorchDtype: c.String("torch_dtype") ?? c.String("dtype") ?? "float32");
        config.Validate(file);
        return config;
    }

    /// <summary>config.json as transformers' save_pretrained writes it for GPT2LMHeadModel (keys sorted, indented by 2).</summary>
    public string ToJson()
    {
        var keys = new SortedDictionary<string, object?>(StringComparer.Ordinal)
        {
            ["activation_function"] = "gelu_new", ["architectures"] = new[] { "GPT2LMHeadModel" }, ["attn_pdrop"] = 0.1,
            ["bos_token_id"] = Vocab - 1, ["embd_pdrop"] = 0.1, ["eos_token_id"] = Vocab - 1, ["initializer_range"] = 0.02,
            ["layer_norm_epsilon"] = LayerNormEps, ["model_type"] = ModelType, ["n_embd"] = Hidden, ["n_head"] = Heads,
            ["n_inner"] = Inner, ["n_layer"] = Layers, ["n_positions"] = MaxPositions, ["reorder_and_upcast_attn"] = false,
            ["resid_pdrop"] = 0.1, ["scale_attn_by_inverse_layer_idx"] = false, ["scale_attn_weights"] = true,
            ["tie_word_embeddings"] = TieWordEmbeddings, ["torch_dtype"] = TorchDtype, ["use_cache"] = true, ["vocab_size"] = Vocab,
        };
        return JsonSerializer.Serialize(keys, new JsonSerializerOptions { WriteIndented = true, IndentSize = 2 }) + "\n";
    }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"gpt2(layers {Layers}, hidden {Hidden}, heads {Heads}, ffn {Ffn}, vocab {Vocab}, positions {MaxPositions}, eps {LayerNormEps})");
}

/// <summary>The GPT-2 family (transformers' GPT2LMHeadModel): layers are the embedding (token + position), one per block and
/// the head (ln_f + LM head). Parameter names are the checkpoint's own tensor names, all in <see cref="Gpt2Names"/>: with the
/// "transformer." prefix (GPT2LMHeadModel's state dict) or without it (the gpt2 files on the hub, saved from GPT2Model).</summary>
public static class Gpt2
{
    /// <summary>Seeded weights: matrices and biases N(0, <see cref="InitStd"/>), norm weights 1 + N(0, <see cref="NormStd"/>),
    /// norm biases N(0, <see cref="NormStd"/>): large enough that a wrong transpose, activation or epsilon shows in the logits.</summary>
    public const double InitStd = 0.2, NormStd = 0.3;

    /// <summary>The model over <paramref name="batch"/> rows of <paramref name="sequence"/> token ids (seeded random ids), its
    /// tensors named with <paramref name="prefix"/> ("transformer." or ""; <see cref="PrefixIn"/> finds a checkpoint's).</summary>
    public static LayeredModel Create(string name, Gpt2Config config, int batch, int sequence, string prefix = Gpt2Names.Transformer)
    {
        config.Validate();
        if (batch < 1) throw new FieldException(FieldException.Batch, $"must be at least 1 (got {batch})");
        if (sequence < 1 || sequence > config.MaxPositions)
            throw new FieldException(FieldException.Sequence, $"({sequence}) must be in [1, {config.MaxPositions}] (n_positions)");
        var names = new Gpt2Names(prefix);
        var layers = new List<Layer> { new Gpt2Embedding(0, config, names) };
        for (int b = 0; b < config.Layers; b++) layers.Add(new Gpt2Block(b + 1, b, config, names));
        layers.Add(new Gpt2Head(config.Layers + 1, config, names));
        return new LayeredModel(name, layers, [batch, sequence], ScalarType.Int64, seed =>
        {
            using var g = new Generator(unchecked((ulong)seed ^ 0x6e72_5eedUL));
            return randint(config.Vocab, [batch, sequence], dtype: ScalarType.Int64, generator: g);
        });
    }

    /// <summary>"transformer." when the checkpoint in <paramref name="directory"/> holds transformer.wte.weight, "" when it holds
    /// wte.weight; a one-line error naming the directory otherwise.</summary>
    public static string PrefixIn(string directory)
    {
        using var ckpt = SafetensorsCheckpoint.Open(directory);
        var names = ckpt.Names.ToHashSet(StringComparer.Ordinal);
        if (names.Contains(Gpt2Names.Transformer + "wte.weight")) return Gpt2Names.Transformer;
        if (names.Contains("wte.weight")) return "";
        throw new ArgumentException($"{directory}: neither transformer.wte.weight nor wte.weight is in the checkpoint; not a GPT-2 checkpoint");
    }

    internal static Tensor Normal(Generator g, params long[] shape) => randn(shape, generator: g).mul_(InitStd);
    internal static Tensor NormWeight(Generator g, long size) => randn([size], generator: g).mul_(NormStd).add_(1.0);
    internal static Tensor NormBias(Generator g, long size) => randn([size], generator: g).mul_(NormStd);

    internal static void CheckActivations(long[] input, Gpt2Config c, string layer)
    {
        if (input.Length != 3 || input[2] != c.Hidden || input[1] > c.MaxPositions)
            throw new ArgumentException($"{layer}: expected activations [batch, ≤{c.MaxPositions}, {c.Hidden}], got [{string.Join(", ", input)}]");
    }

    /// <summary>transformers' Conv1D: addmm(bias, x.view(-1, in), weight) with the weight stored [in, out], viewed back to
    /// [B, T, out].</summary>
    internal static Tensor Conv1D(Tensor x, Tensor weight, Tensor bias)
    {
        long b = x.shape[0], t = x.shape[1];
        return addmm(bias, x.reshape(-1, x.shape[^1]), weight, 1, 1).view(b, t, weight.shape[1]);
    }
}

/// <summary>The one table from layers to a GPT-2 checkpoint's tensor names, under a prefix ("transformer." or "").</summary>
public sealed class Gpt2Names(string prefix)
{
    public const string Transformer = "transformer.";
    public const string LmHead = "lm_head.weight";
    public string Prefix { get; } = prefix is Transformer or "" ? prefix
        : throw new ArgumentException($"tensor prefix \"{prefix}\": only \"{Transformer}\" or none");
    public string Wte => $"{Prefix}wte.weight";
    public string Wpe => $"{Prefix}wpe.weight";
    public string LnFWeight => $"{Prefix}ln_f.weight";
    public string LnFBias => $"{Prefix}ln_f.bias";
    public string Block(int i, string tensor) => $"{Prefix}h.{i}.{tensor}";

    /// <summary>The head's LM matrix: the token embedding when tied, lm_head.weight (never prefixed) otherwise.</summary>
    public string Head(Gpt2Config c) => c.TieWordEmbeddings ? Wte : LmHead;

    /// <summary>A block's tensors in checkpoint order, with their shapes (Conv1D weights [in, out]).</summary>
    public IReadOnlyList<ParamSpec> BlockParameters(int i, Gpt2Config c)
    {
        long h = c.Hidden, f = c.Ffn;
        return
        [
            new(Block(i, "ln_1.weight"), h), new(Block(i, "ln_1.bias"), h),
            new(Block(i, "attn.c_attn.weight"), h, 3 * h), new(Block(i, "attn.c_attn.bias"), 3 * h),
            new(Block(i, "attn.c_proj.weight"), h, h), new(Block(i, "attn.c_proj.bias"), h),
            new(Block(i, "ln_2.weight"), h), new(Block(i, "ln_2.bias"), h),
            new(Block(i, "mlp.c_fc.weight"), h, f), new(Block(i, "mlp.c_fc.bias"), f),
            new(Block(i, "mlp.c_proj.weight"), f, h), new(Block(i, "mlp.c_proj.bias"), h),
        ];
    }
}

/// <summary>Token plus position embedding: int64 [B, T] → float32 [B, T, H] (wte[ids] + wpe[0..T-1]).</summary>
public sealed class Gpt2Embedding(int index, Gpt2Config c, Gpt2Names names) : Layer(index, "embed")
{
    public override IReadOnlyList<ParamSpec> Parameters { get; } = [new(names.Wte, c.Vocab, c.Hidden), new(names.Wpe, c.MaxPositions, c.Hidden)];

    public override long[] OutputShape(long[] input)
    {
        if (input.Length != 2 || input[1] > c.MaxPositions)
            throw new ArgumentException($"{Name}: expected token ids [batch, ≤{c.MaxPositions}], got [{string.Join(", ", input)}]");
        return [input[0], input[1], c.Hidden];
    }

    public override long? MaxPositions => c.MaxPositions;

    public override double Flops(long[] input) => (double)input[0] * input[1] * c.Hidden;

    /// <summary>The token embeddings (N·H floats for N = B·T tokens); the position rows are a view of wpe and the sum is the output.</summary>
    public override long WorkspaceBytes(long[] input) => input[0] * input[1] * c.Hidden * sizeof(float);

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor ids)
    {
        long b = ids.shape[0], t = ids.shape[1];
        var tokens = w[names.Wte].index_select(0, ids.reshape(-1)).view(b, t, c.Hidden);
        return tokens + w[names.Wpe].narrow(0, 0, t);
    }

    /// <summary>The token embeddings and the position rows gathered at the step's positions (2·N·H floats).</summary>
    public override long WorkspaceBytes(long[] input, StepContext step) => 2 * WorkspaceBytes(input);

    /// <summary>wte[ids] + wpe[positions]: learned positions at the step's positions (position_ids in transformers).</summary>
    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor ids, StepContext step, KvCache? cache)
    {
        long b = ids.shape[0], t = ids.shape[1];
        var positions = step.Positions.to(ids.device);
        if (positions.shape[0] != b || positions.shape[1] != t)
            throw new ArgumentException($"{Name}: positions [{string.Join(", ", positions.shape)}] do not match token ids [{b}, {t}]");
        var tokens = w[names.Wte].index_select(0, ids.reshape(-1)).view(b, t, c.Hidden);
        return tokens + w[names.Wpe].index_select(0, positions.reshape(-1)).view(b, t, c.Hidden);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => new Dictionary<string, Tensor>
    {
        [names.Wte] = Gpt2.Normal(g, c.Vocab, c.Hidden), [names.Wpe] = Gpt2.Normal(g, c.MaxPositions, c.Hidden),
    };
}

/// <summary>One GPT2Block: x + c_proj(attn(split(c_attn(ln_1(x))))) with a causal mask and 1/√d scaling, then
/// x + mlp.c_proj(gelu_new(mlp.c_fc(ln_2(x)))).</summary>
public sealed class Gpt2Block(int index, int block, Gpt2Config c, Gpt2Names names) : Layer(index, $"block.{block}")
{
    public int Block { get; } = block;

    public override IReadOnlyList<ParamSpec> Parameters { get; } = names.BlockParameters(block, c);

    public override long[] OutputShape(long[] input)
    {
        Gpt2.CheckActivations(input, c, Name);
        return input;
    }

    public override double Flops(long[] input)
    {
        double tokens = input[0] * input[1], h = c.Hidden, t = input[1];
        return 2 * tokens * (4 * h * h + 2 * h * c.Ffn) + 2 * 2 * tokens * t * h; // projections + scores and weighted sum
    }

    /// <summary>Counted from <see cref="Forward"/> as it runs inside the pass's dispose scope. N = B·T tokens, H hidden, F = ffn:
    /// ln_1 (N·H), c_attn (3·N·H; q, k, v are views of it), the attention output (N·H; laid out [B, T, heads, d] so the merge
    /// is a view), c_proj (N·H), the first residual (N·H), ln_2 (N·H), c_fc and gelu_new (2·N·F), mlp.c_proj (N·H); the second
    /// residual is the output. Inside the attention call: scores [B, heads, T, T] and their softmax, an upper bound as for the
    /// GPT block. tests/Gpt2Spec.cs checks the rest against the storages the forward's scope holds.</summary>
    public override long WorkspaceBytes(long[] input)
    {
        long n = input[0] * input[1], h = c.Hidden, f = c.Ffn;
        return (9 * n * h + 2 * n * f + 2L * input[0] * c.Heads * input[1] * input[1]) * sizeof(float);
    }

    string N(string tensor) => names.Block(Block, tensor);

    public override KvLayout? Kv { get; } = new(c.Heads, c.HeadDim);

    /// <summary>An upper bound for a generation pass over T tokens with P cached (L = P + T): the plain figure, plus the cached K
    /// and V read back contiguous (2·B·L·H), the additive mask (B·T·L floats, its boolean steps and aranges) and the scores over
    /// L keys (2·B·heads·T·L).</summary>
    public override long WorkspaceBytes(long[] input, StepContext step)
    {
        long b = input[0], t = input[1], l = step.TotalLength;
        long floats = 2 * b * l * c.Hidden + b * t * l + 2L * b * c.Heads * t * l;
        return WorkspaceBytes(input) + floats * sizeof(float) + 2 * l * sizeof(long) + 3 * b * t * l + t * l + b * l;
    }

    /// <summary>The block in a generation pass: this pass's K and V appended to the cache, attention over every cached entry under
    /// the step's mask (1/√d scaling as in the plain forward).</summary>
    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x, StepContext step, KvCache? cache)
    {
        var kv = Llama.Require(cache, Name);
        return Forward(w, x, (q, k, v) =>
        {
            var (keys, values) = kv.Append(k, v);
            return Llama.CachedAttention(q, keys, values, c.Heads, step);
        });
    }

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x) =>
        Forward(w, x, (q, k, v) => F.scaled_dot_product_attention(q, k, v, null, 0.0, true));

    /// <summary>The block, whichever pass: LayerNorm, c_attn, <paramref name="attention"/> over q, k, v ([B, heads, T, d]),
    /// c_proj, LayerNorm, gelu_new MLP.</summary>
    Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x, Func<Tensor, Tensor, Tensor, Tensor> attention)
    {
        long b = x.shape[0], t = x.shape[1];
        int heads = c.Heads, d = c.HeadDim, hidden = c.Hidden;
        var h = F.layer_norm(x, [hidden], w[N("ln_1.weight")], w[N("ln_1.bias")], c.LayerNormEps);
        var qkv = Gpt2.Conv1D(h, w[N("attn.c_attn.weight")], w[N("attn.c_attn.bias")]);
        var q = qkv.narrow(-1, 0, hidden).view(b, t, heads, d).transpose(1, 2);
        var k = qkv.narrow(-1, hidden, hidden).view(b, t, heads, d).transpose(1, 2);
        var v = qkv.narrow(-1, 2 * hidden, hidden).view(b, t, heads, d).transpose(1, 2);
        var attn = attention(q, k, v);
        var merged = attn.transpose(1, 2).reshape(b, t, hidden);
        x = x + Gpt2.Conv1D(merged, w[N("attn.c_proj.weight")], w[N("attn.c_proj.bias")]);
        h = F.layer_norm(x, [hidden], w[N("ln_2.weight")], w[N("ln_2.bias")], c.LayerNormEps);
        var m = F.gelu(Gpt2.Conv1D(h, w[N("mlp.c_fc.weight")], w[N("mlp.c_fc.bias")]), TorchSharp.Modules.GELU.Approximate.tanh);
        return x + Gpt2.Conv1D(m, w[N("mlp.c_proj.weight")], w[N("mlp.c_proj.bias")]);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => Parameters.ToDictionary(p => p.Name,
        p => p.Name.Contains(".ln_", StringComparison.Ordinal)
            ? (p.Name.EndsWith(".weight", StringComparison.Ordinal) ? Gpt2.NormWeight(g, c.Hidden) : Gpt2.NormBias(g, c.Hidden))
            : Gpt2.Normal(g, [.. p.Shape]));
}

/// <summary>ln_f and the LM head: [B, T, H] → logits [B, T, V]. With tie_word_embeddings (GPT-2's default) the head's matrix is
/// wte (read again by this layer: each layer owns its weights; seeded, it gets the embedding's values through
/// <see cref="ITiedLayer"/>).</summary>
public sealed class Gpt2Head(int index, Gpt2Config c, Gpt2Names names) : Layer(index, "head"), ITiedLayer
{
    /// <summary>Tied, the head's matrix is the embedding's wte (layer 0).</summary>
    public Layer? TiedTo(string parameter) => c.TieWordEmbeddings && parameter == names.Wte ? new Gpt2Embedding(0, c, names) : null;

    public override IReadOnlyList<ParamSpec> Parameters { get; } =
        [new(names.LnFWeight, c.Hidden), new(names.LnFBias, c.Hidden), new(names.Head(c), c.Vocab, c.Hidden)];

    public override long[] OutputShape(long[] input)
    {
        Gpt2.CheckActivations(input, c, Name);
        return [input[0], input[1], c.Vocab];
    }

    public override double Flops(long[] input) => 2.0 * input[0] * input[1] * c.Hidden * c.Vocab;

    /// <summary>ln_f's output (N·H); the logits are the output.</summary>
    public override long WorkspaceBytes(long[] input) => input[0] * input[1] * c.Hidden * sizeof(float);

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x) =>
        F.linear(F.layer_norm(x, [c.Hidden], w[names.LnFWeight], w[names.LnFBias], c.LayerNormEps), w[names.Head(c)]);

    /// <summary>[B, 1, V] when the step asks for the last position only (generate's logits_to_keep = 1).</summary>
    public override long[] OutputShape(long[] input, StepContext step) =>
        step.LastPositionOnly ? OutputShape([input[0], 1, .. input[2..]]) : OutputShape(input);

    public override long WorkspaceBytes(long[] input, StepContext step) =>
        step.LastPositionOnly ? WorkspaceBytes([input[0], 1, .. input[2..]]) : WorkspaceBytes(input);

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x, StepContext step, KvCache? cache) =>
        Forward(w, step.LastPositionOnly ? x.narrow(1, x.shape[1] - 1, 1) : x);

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => new Dictionary<string, Tensor>
    {
        [names.LnFWeight] = Gpt2.NormWeight(g, c.Hidden), [names.LnFBias] = Gpt2.NormBias(g, c.Hidden),
        [names.Head(c)] = Gpt2.Normal(g, c.Vocab, c.Hidden),
    };
}
