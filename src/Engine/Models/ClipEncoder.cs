using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Engine.Models;

/// <summary>What CLIP's layers share: the seeded initialisation, the activation and the LayerNorm call.</summary>
public static class ClipCommon
{
    /// <summary>Seeded weights: matrices, biases and embeddings N(0, <see cref="InitStd"/>), norm weights 1 + N(0, <see cref="NormStd"/>),
    /// norm biases N(0, <see cref="NormStd"/>): large enough that a wrong transpose, activation, epsilon or pooled position shows.</summary>
    public const double InitStd = 0.2, NormStd = 0.3;

    /// <summary>The additive mask's value for a key a query may not see (transformers' torch.finfo(float32).min).</summary>
    public const float Masked = float.MinValue;

    internal static Tensor Normal(Generator g, params long[] shape) => randn(shape, generator: g).mul_(InitStd);
    internal static Tensor NormWeight(Generator g, long size) => randn([size], generator: g).mul_(NormStd).add_(1.0);
    internal static Tensor NormBias(Generator g, long size) => randn([size], generator: g).mul_(NormStd);

    /// <summary>Fresh values for <paramref name="parameters"/>: LayerNorm weights (names ending "norm*.weight", "layrnorm.weight",
    /// "layer_norm*.weight") and biases get the norm draws, every other tensor the normal one.</summary>
    internal static Dictionary<string, Tensor> Initialize(Generator g, IEnumerable<ParamSpec> parameters) => parameters.ToDictionary(p => p.Name,
        p => IsNorm(p.Name)
            ? (p.Name.EndsWith(".weight", StringComparison.Ordinal) ? NormWeight(g, p.Shape[0]) : NormBias(g, p.Shape[0]))
            : Normal(g, [.. p.Shape]));

    static bool IsNorm(string name) => name.Contains("layer_norm", StringComparison.Ordinal) || name.Contains("layernorm", StringComparison.Ordinal)
        || name.Contains("layrnorm", StringComparison.Ordinal);

    /// <summary>transformers' ACT2FN: quick_gelu is x · sigmoid(1.702 · x) (computed as QuickGELUActivation writes it, the
    /// product in place on <paramref name="x"/>'s storage), gelu the exact erf form.</summary>
    internal static Tensor Activation(Tensor x, string act) => act switch
    {
        "quick_gelu" => x.mul_(x.mul(1.702).sigmoid_()),
        "gelu" => F.gelu(x),
        _ => throw new ArgumentException($"hidden_act \"{act}\" is not supported (supported: {string.Join(", ", ClipActivation.Supported)})"),
    };

    internal static Tensor LayerNorm(Tensor x, Tensor weight, Tensor bias, double eps) => F.layer_norm(x, [weight.shape[0]], weight, bias, eps);

    internal static string Shape(long[] shape) => $"[{string.Join(", ", shape)}]";
}

/// <summary>One CLIPEncoderLayer of either tower: x + out_proj(attention(q_proj, k_proj, v_proj of layer_norm1(x))), then
/// x + fc2(act(fc1(layer_norm2(x)))), with 1/√d scaling. The activation is [B, T, H + <paramref name="sideChannels"/>]: the
/// block computes on the first H channels and passes the trailing side channels through unchanged. With
/// <paramref name="causal"/> (the text tower) channel H is the attention mask (1 a token, 0 padding) and a query sees the
/// keys at or before it that are tokens (CLIP's text attention is causal and padded); without it every token sees every token.
/// Tensor names are <paramref name="prefix"/> + "encoder.layers.N." + transformers' names.</summary>
public sealed class ClipEncoderLayer(int index, int block, ClipEncoderShape c, string prefix, string tower, int sideChannels = 0, bool causal = false)
    : Layer(index, $"{tower}.block.{block}")
{
    public int Block { get; } = block;

    string N(string tensor) => $"{prefix}encoder.layers.{Block}.{tensor}";

    public override IReadOnlyList<ParamSpec> Parameters { get; } = ParametersOf(block, c, prefix);

    static IReadOnlyList<ParamSpec> ParametersOf(int block, ClipEncoderShape c, string prefix)
    {
        long h = c.Hidden, f = c.Ffn;
        string N(string tensor) => $"{prefix}encoder.layers.{block}.{tensor}";
        return
        [
            new(N("self_attn.k_proj.weight"), h, h), new(N("self_attn.k_proj.bias"), h),
            new(N("self_attn.v_proj.weight"), h, h), new(N("self_attn.v_proj.bias"), h),
            new(N("self_attn.q_proj.weight"), h, h), new(N("self_attn.q_proj.bias"), h),
            new(N("self_attn.out_proj.weight"), h, h), new(N("self_attn.out_proj.bias"), h),
            new(N("layer_norm1.weight"), h), new(N("layer_norm1.bias"), h),
            new(N("mlp.fc1.weight"), f, h), new(N("mlp.fc1.bias"), f),
            new(N("mlp.fc2.weight"), h, f), new(N("mlp.fc2.bias"), h),
            new(N("layer_norm2.weight"), h), new(N("layer_norm2.bias"), h),
        ];
    }

    public override long[] OutputShape(long[] input)
    {
        if (input.Length != 3 || input[2] != c.Hidden + sideChannels)
            throw new ArgumentException($"{Name}: expected activations [batch, tokens, {c.Hidden + sideChannels}], got {ClipCommon.Shape(input)}");
        return input;
    }

    public override double Flops(long[] input)
    {
        double tokens = input[0] * input[1], h = c.Hidden, t = input[1];
        return 2 * tokens * (4 * h * h + 2 * h * c.Ffn) + 2 * 2 * tokens * t * h; // projections + scores and weighted sum
    }

    /// <summary>Counted from <see cref="Forward"/> as it runs in the pass's dispose scope, N = B·T tokens, H hidden, F = ffn:
    /// layer_norm1 (N·H), q, k, v (3·N·H), the attention output and its merge (2·N·H), out_proj (N·H), the first residual (N·H),
    /// layer_norm2 (N·H), fc1 and the activation (2·N·F: quick_gelu's sigmoid beside fc1, multiplied in place; gelu's output),
    /// fc2 (N·H); with side channels the second residual too (N·H), the output being it joined to them. Inside the attention call:
    /// scores [B, heads, T, T] and their softmax, an upper bound as for the GPT-2 block. A causal tower's mask: the float mask
    /// (B·T·T), its boolean steps (3·B·T·T bytes), the causal triangle (T·T bytes) and the key mask (B·T floats, B·T bytes).
    /// tests/ClipSpec.cs checks the rest against the storages the forward's scope holds.</summary>
    public override long WorkspaceBytes(long[] input)
    {
        long b = input[0], t = input[1], n = b * t, h = c.Hidden, f = c.Ffn;
        long floats = (sideChannels > 0 ? 11 : 10) * n * h + 2 * n * f + 2L * b * c.Heads * t * t;
        long mask = causal ? b * t * t * sizeof(float) + 3 * b * t * t + t * t + b * t * (sizeof(float) + 1) : 0;
        return floats * sizeof(float) + mask;
    }

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor input)
    {
        long b = input.shape[0], t = input.shape[1];
        int heads = c.Heads, d = c.HeadDim, hidden = c.Hidden;
        var x = sideChannels == 0 ? input : input.narrow(-1, 0, hidden);
        Tensor? mask = causal ? Mask(input.narrow(-1, hidden, 1), t) : null;
        var h = ClipCommon.LayerNorm(x, w[N("layer_norm1.weight")], w[N("layer_norm1.bias")], c.LayerNormEps);
        var q = F.linear(h, w[N("self_attn.q_proj.weight")], w[N("self_attn.q_proj.bias")]).view(b, t, heads, d).transpose(1, 2);
        var k = F.linear(h, w[N("self_attn.k_proj.weight")], w[N("self_attn.k_proj.bias")]).view(b, t, heads, d).transpose(1, 2);
        var v = F.linear(h, w[N("self_attn.v_proj.weight")], w[N("self_attn.v_proj.bias")]).view(b, t, heads, d).transpose(1, 2);
        var attn = F.scaled_dot_product_attention(q, k, v, mask, 0.0, false);
        var merged = attn.transpose(1, 2).reshape(b, t, hidden);
        x = x + F.linear(merged, w[N("self_attn.out_proj.weight")], w[N("self_attn.out_proj.bias")]);
        h = ClipCommon.LayerNorm(x, w[N("layer_norm2.weight")], w[N("layer_norm2.bias")], c.LayerNormEps);
        var m = ClipCommon.Activation(F.linear(h, w[N("mlp.fc1.weight")], w[N("mlp.fc1.bias")]), c.HiddenAct);
        x = x + F.linear(m, w[N("mlp.fc2.weight")], w[N("mlp.fc2.bias")]);
        return sideChannels == 0 ? x : cat([x, input.narrow(-1, hidden, sideChannels)], -1);
    }

    /// <summary>The additive mask [B, 1, T, T]: 0 where query i may see key j (j ≤ i and j a token), <see cref="ClipCommon.Masked"/>
    /// elsewhere (transformers' causal mask joined to the expanded attention mask).</summary>
    static Tensor Mask(Tensor keyChannel, long t)
    {
        long b = keyChannel.shape[0];
        var tokens = keyChannel.reshape(b, 1, 1, t).gt(0.5f);
        var seen = ones(t, t, ScalarType.Bool, keyChannel.device).tril_();
        var keep = tokens.logical_and(seen);
        return zeros([b, 1, t, t], ScalarType.Float32, keyChannel.device).masked_fill_(keep.logical_not_(), ClipCommon.Masked);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => ClipCommon.Initialize(g, Parameters);
}
