using Superpipeline.Contracts;
using Superpipeline.Engine.Policy;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Engine.Models;

/// <summary>Shape of a GPT-style decoder (the built-in demo): token and position embeddings, pre-LayerNorm
/// blocks of causal self-attention and MLP, then a final norm and the LM head.</summary>
public sealed record GptConfig(int Blocks, int Hidden, int Heads, int Vocab, int Sequence, int Batch)
{
    public static GptConfig From(ModelSpec spec) => new(spec.Blocks, spec.Hidden, spec.Heads, spec.Vocab, spec.Sequence, spec.Batch);

    /// <summary>Throws a <see cref="FieldException"/> naming the first bad field.</summary>
    public void Validate()
    {
        static void Positive(int value, string field)
        {
            if (value < 1) throw new FieldException(field, $"must be at least 1 (got {value})");
        }
        Positive(Blocks, FieldException.Blocks); Positive(Hidden, FieldException.Hidden); Positive(Heads, FieldException.Heads);
        Positive(Vocab, FieldException.Vocab); Positive(Sequence, FieldException.Sequence); Positive(Batch, FieldException.Batch);
        if (Hidden % Heads != 0) throw new FieldException(FieldException.Hidden, $"({Hidden}) must be a multiple of the heads ({Heads})");
    }
}

public static class GptDecoder
{
    public const double InitStd = 0.02;

    public static LayeredModel Create(string name, GptConfig config)
    {
        config.Validate();
        var layers = new List<Layer> { new GptEmbedding(0, config) };
        for (int b = 0; b < config.Blocks; b++) layers.Add(new GptBlock(b + 1, b, config));
        layers.Add(new GptHead(config.Blocks + 1, config));
        return new LayeredModel(name, layers, [config.Batch, config.Sequence], ScalarType.Int64, seed =>
        {
            using var g = new Generator(unchecked((ulong)seed ^ 0x5eed_1234UL));
            return randint(config.Vocab, [config.Batch, config.Sequence], dtype: ScalarType.Int64, generator: g);
        });
    }

    internal static Tensor Normal(Generator g, params long[] shape) => randn(shape, generator: g).mul_(InitStd);

    internal static void CheckSequence(long[] input, GptConfig c, string layer)
    {
        if (input.Length != 3 || input[2] != c.Hidden || input[1] > c.Sequence)
            throw new ArgumentException($"{layer}: expected activations [batch, ≤{c.Sequence}, {c.Hidden}], got [{string.Join(", ", input)}]");
    }
}

/// <summary>Token embedding plus learned position embedding: int64 [B, T] → float32 [B, T, H].</summary>
public sealed class GptEmbedding(int index, GptConfig c) : Layer(index, "embed")
{
    public override IReadOnlyList<ParamSpec> Parameters { get; } =
        [new("wte", c.Vocab, c.Hidden), new("wpe", c.Sequence, c.Hidden)];

    public override long[] OutputShape(long[] input)
    {
        if (input.Length != 2 || input[1] > c.Sequence)
            throw new ArgumentException($"{Name}: expected token ids [batch, ≤{c.Sequence}], got [{string.Join(", ", input)}]");
        return [input[0], input[1], c.Hidden];
    }

    public override double Flops(long[] input) => 2.0 * input[0] * input[1] * c.Hidden;

    /// <summary>The gathered token rows [B, T, H] (index_select materialises them; the view and the narrowed
    /// position table are views); the sum with the positions is the output.</summary>
    public override long WorkspaceBytes(long[] input) => input[0] * input[1] * c.Hidden * sizeof(float);

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor ids)
    {
        long b = ids.shape[0], t = ids.shape[1];
        var tokens = w["wte"].index_select(0, ids.reshape(-1)).view(b, t, c.Hidden);
        return tokens + w["wpe"].narrow(0, 0, t);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => new Dictionary<string, Tensor>
    {
        ["wte"] = GptDecoder.Normal(g, c.Vocab, c.Hidden),
        ["wpe"] = GptDecoder.Normal(g, c.Sequence, c.Hidden),
    };
}

/// <summary>One pre-LayerNorm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x)), with causal attention.</summary>
public sealed class GptBlock(int index, int block, GptConfig c) : Layer(index, $"block.{block}")
{
    public override IReadOnlyList<ParamSpec> Parameters { get; } =
    [
        new("ln_1.weight", c.Hidden), new("ln_1.bias", c.Hidden),
        new("attn.c_attn.weight", 3L * c.Hidden, c.Hidden), new("attn.c_attn.bias", 3L * c.Hidden),
        new("attn.c_proj.weight", c.Hidden, c.Hidden), new("attn.c_proj.bias", c.Hidden),
        new("ln_2.weight", c.Hidden), new("ln_2.bias", c.Hidden),
        new("mlp.c_fc.weight", 4L * c.Hidden, c.Hidden), new("mlp.c_fc.bias", 4L * c.Hidden),
        new("mlp.c_proj.weight", c.Hidden, 4L * c.Hidden), new("mlp.c_proj.bias", c.Hidden),
    ];

    public override long[] OutputShape(long[] input)
    {
        GptDecoder.CheckSequence(input, c, Name);
        return input;
    }

    public override double Flops(long[] input)
    {
        double tokens = input[0] * input[1], h = c.Hidden, t = input[1];
        return 2 * tokens * 12 * h * h + 2 * 2 * tokens * t * h; // projections + scores and weighted sum
    }

    /// <summary>Counted from <see cref="Forward"/> as it runs inside the pass's dispose scope, which keeps every
    /// tensor the forward makes alive until the layer is done, so the workspace is their sum, not a running
    /// maximum. For B·T tokens of H floats (N·H): ln_1 (N·H), c_attn's q, k, v in one tensor (3·N·H; the view,
    /// permute and the three selects are views), the attention output (N·H; the CPU kernel lays it out so that the
    /// transpose and reshape to [B, T, H] are views), c_proj (N·H), the first residual sum (N·H), ln_2 (N·H),
    /// c_fc (4·N·H), its GELU (4·N·H) and the MLP's c_proj (N·H): 17·N·H. The second residual sum is the output,
    /// reserved as such. Inside the attention call: the scores [B, heads, T, T] and their softmax, as a kernel
    /// that materialises them holds them (libtorch's CPU flash kernel works in blocks and holds less, plus a
    /// log-sum-exp [B, heads, T] that the forward drops), so this is an upper bound there and exact elsewhere.
    /// tests/WorkspaceAccountingSpec.cs checks the 17·N·H against the storages the forward's scope holds.</summary>
    public override long WorkspaceBytes(long[] input)
    {
        long tokens = input[0] * input[1], scores = input[0] * c.Heads * input[1] * input[1];
        return (17 * tokens * c.Hidden + 2 * scores) * sizeof(float);
    }

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        long b = x.shape[0], t = x.shape[1], hd = c.Hidden / c.Heads;
        var h = F.layer_norm(x, [c.Hidden], w["ln_1.weight"], w["ln_1.bias"]);
        var qkv = F.linear(h, w["attn.c_attn.weight"], w["attn.c_attn.bias"]).view(b, t, 3, c.Heads, hd).permute(2, 0, 3, 1, 4);
        var attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], null, 0.0, true);
        var merged = attn.transpose(1, 2).reshape(b, t, c.Hidden);
        x = x + F.linear(merged, w["attn.c_proj.weight"], w["attn.c_proj.bias"]);
        h = F.layer_norm(x, [c.Hidden], w["ln_2.weight"], w["ln_2.bias"]);
        var m = F.gelu(F.linear(h, w["mlp.c_fc.weight"], w["mlp.c_fc.bias"]));
        return x + F.linear(m, w["mlp.c_proj.weight"], w["mlp.c_proj.bias"]);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => new Dictionary<string, Tensor>
    {
        ["ln_1.weight"] = ones(c.Hidden), ["ln_1.bias"] = zeros(c.Hidden),
        ["attn.c_attn.weight"] = GptDecoder.Normal(g, 3L * c.Hidden, c.Hidden), ["attn.c_attn.bias"] = GptDecoder.Normal(g, 3L * c.Hidden),
        ["attn.c_proj.weight"] = GptDecoder.Normal(g, c.Hidden, c.Hidden), ["attn.c_proj.bias"] = GptDecoder.Normal(g, c.Hidden),
        ["ln_2.weight"] = ones(c.Hidden), ["ln_2.bias"] = zeros(c.Hidden),
        ["mlp.c_fc.weight"] = GptDecoder.Normal(g, 4L * c.Hidden, c.Hidden), ["mlp.c_fc.bias"] = GptDecoder.Normal(g, 4L * c.Hidden),
        ["mlp.c_proj.weight"] = GptDecoder.Normal(g, c.Hidden, 4L * c.Hidden), ["mlp.c_proj.bias"] = GptDecoder.Normal(g, c.Hidden),
    };
}

/// <summary>Final LayerNorm and the LM head: [B, T, H] → logits [B, T, V].</summary>
public sealed class GptHead(int index, GptConfig c) : Layer(index, "head")
{
    public override IReadOnlyList<ParamSpec> Parameters { get; } =
        [new("ln_f.weight", c.Hidden), new("ln_f.bias", c.Hidden), new("lm_head.weight", c.Vocab, c.Hidden)];

    public override long[] OutputShape(long[] input)
    {
        GptDecoder.CheckSequence(input, c, Name);
        return [input[0], input[1], c.Vocab];
    }

    public override double Flops(long[] input) => 2.0 * input[0] * input[1] * c.Hidden * c.Vocab;

    /// <summary>ln_f's output [B, T, H]; the logits are the output.</summary>
    public override long WorkspaceBytes(long[] input) => input[0] * input[1] * c.Hidden * sizeof(float);

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x) =>
        F.linear(F.layer_norm(x, [c.Hidden], w["ln_f.weight"], w["ln_f.bias"]), w["lm_head.weight"]);

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => new Dictionary<string, Tensor>
    {
        ["ln_f.weight"] = ones(c.Hidden), ["ln_f.bias"] = zeros(c.Hidden),
        ["lm_head.weight"] = GptDecoder.Normal(g, c.Vocab, c.Hidden),
    };
}
