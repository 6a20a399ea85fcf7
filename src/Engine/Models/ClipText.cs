using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Engine.Models;

/// <summary>CLIP's text tower (transformers' CLIPTextConfig; defaults are its defaults). <see cref="EosTokenId"/> picks the
/// pooled position as CLIPTextTransformer does: 2 (the legacy value of the original configs) pools at the largest token id
/// (argmax, since &lt;|endoftext|&gt; is the vocabulary's last id), any other value at the first position holding it.</summary>
public sealed record ClipTextConfig(int Hidden = 512, int Ffn = 2048, int Layers = 12, int Heads = 8, int Vocab = 49408, int MaxPositions = 77,
    double LayerNormEps = 1e-5, string HiddenAct = "quick_gelu", int ProjectionDim = 512, int EosTokenId = 49407, int BosTokenId = 49406,
    int PadTokenId = 1)
{
    /// <summary>The eos_token_id that keeps transformers' legacy pooling (argmax of the ids).</summary>
    public const int LegacyEos = 2;
    public bool PoolsAtLargestId => EosTokenId == LegacyEos;
    public ClipEncoderShape Encoder => new(Hidden, Ffn, Heads, LayerNormEps, HiddenAct);

    /// <summary>Throws a <see cref="CheckpointConfigException"/> naming the first bad key, under <paramref name="section"/>.</summary>
    public void Validate(string file = "config.json", string section = "text_config")
    {
        string K(string key) => section.Length == 0 ? key : $"{section}.{key}";
        void Positive(int value, string key)
        {
            if (value < 1) throw new CheckpointConfigException(file, K(key), $"must be at least 1 (got {value})");
        }
        Positive(Hidden, "hidden_size"); Positive(Ffn, "intermediate_size"); Positive(Layers, "num_hidden_layers");
        Positive(Heads, "num_attention_heads"); Positive(Vocab, "vocab_size"); Positive(MaxPositions, "max_position_embeddings");
        Positive(ProjectionDim, "projection_dim");
        if (Hidden % Heads != 0)
            throw new CheckpointConfigException(file, K("hidden_size"), $"({Hidden}) must be a multiple of num_attention_heads ({Heads})");
        if (!(LayerNormEps > 0)) throw new CheckpointConfigException(file, K("layer_norm_eps"), $"must be positive (got {LayerNormEps})");
        if (!ClipActivation.Supported.Contains(HiddenAct))
            throw new CheckpointConfigException(file, K("hidden_act"), $"is \"{HiddenAct}\"; supported: {string.Join(", ", ClipActivation.Supported)}");
        if (EosTokenId < 0 || EosTokenId >= Vocab)
            throw new CheckpointConfigException(file, K("eos_token_id"), $"({EosTokenId}) is outside the vocabulary [0, {Vocab})");
    }

    /// <summary>Reads a text_config object, with <paramref name="projectionDim"/> from the enclosing CLIPConfig.</summary>
    public static ClipTextConfig Read(ClipJsonSection s, int projectionDim = 512)
    {
        var d = new ClipTextConfig();
        var config = new ClipTextConfig(
            Hidden: s.Int("hidden_size", d.Hidden), Ffn: s.Int("intermediate_size", d.Ffn), Layers: s.Int("num_hidden_layers", d.Layers),
            Heads: s.Int("num_attention_heads", d.Heads), Vocab: s.Int("vocab_size", d.Vocab),
            MaxPositions: s.Int("max_position_embeddings", d.MaxPositions), LayerNormEps: s.Double("layer_norm_eps", d.LayerNormEps),
            HiddenAct: ClipActivation.Check(s, "hidden_act"), ProjectionDim: projectionDim, EosTokenId: s.Int("eos_token_id", d.EosTokenId),
            BosTokenId: s.Int("bos_token_id", d.BosTokenId), PadTokenId: s.Int("pad_token_id", d.PadTokenId));
        config.Validate(s.File, s.Path);
        return config;
    }

    internal SortedDictionary<string, object?> ToJsonKeys() => new(StringComparer.Ordinal)
    {
        ["bos_token_id"] = BosTokenId, ["eos_token_id"] = EosTokenId, ["hidden_act"] = HiddenAct, ["hidden_size"] = Hidden,
        ["intermediate_size"] = Ffn, ["layer_norm_eps"] = LayerNormEps, ["max_position_embeddings"] = MaxPositions,
        ["model_type"] = "clip_text_model", ["num_attention_heads"] = Heads, ["num_hidden_layers"] = Layers, ["pad_token_id"] = PadTokenId,
        ["projection_dim"] = ProjectionDim, ["vocab_size"] = Vocab,
    };

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"clip text(layers {Layers}, hidden {Hidden}, heads {Heads}, ffn {Ffn}, vocab {Vocab}, positions {MaxPositions}, eos {EosTokenId})");
}

/// <summary>The one table from CLIP text layers to a checkpoint's tensor names: under <see cref="Prefix"/> ("text_model."), the
/// projection (text_projection.weight, no bias) apart.</summary>
public sealed class ClipTextNames(string prefix = ClipTextNames.TextModel, string projection = ClipTextNames.TextProjection)
{
    public const string TextModel = "text_model.", TextProjection = "text_projection.weight";

    public string Prefix { get; } = prefix;
    public string Projection { get; } = projection;
    public string TokenEmbedding => $"{Prefix}embeddings.token_embedding.weight";
    public string PositionEmbedding => $"{Prefix}embeddings.position_embedding.weight";
    public string FinalLayerNormWeight => $"{Prefix}final_layer_norm.weight";
    public string FinalLayerNormBias => $"{Prefix}final_layer_norm.bias";
}

/// <summary>CLIP's text tower (transformers' CLIPTextTransformer, and CLIPModel.get_text_features with the projection):
/// <see cref="ClipTextEmbeddings"/>, one causal <see cref="ClipEncoderLayer"/> per block, <see cref="ClipTextHead"/>.
/// The input is int64 [B, T, 2]: per position the token id and the attention mask (1 a token, 0 padding); or int64 [B, T],
/// every position a token. Between layers the activation is float32 [B, T, H + 2]: the hidden state, then the attention mask
/// and a one-hot channel marking the pooled (end-of-text) position, both computed by the embeddings from the input, so the
/// tower streams as one tensor like every model.</summary>
public static class ClipText
{
    /// <summary>The side channels after the hidden state: the attention mask, then the pooled position.</summary>
    public const int SideChannels = 2;

    /// <summary>The whole tower over <paramref name="batch"/> rows of <paramref name="sequence"/> tokens (seeded ids, no padding,
    /// as the default input; <paramref name="masked"/>: input [B, T, 2] with the mask, else [B, T]). The head ends with
    /// text_projection when <paramref name="project"/> (text_embeds [B, projection_dim], not normalised), else at the pooled
    /// final_layer_norm (pooler_output [B, hidden]).</summary>
    public static LayeredModel Create(string name, ClipTextConfig config, int batch, int sequence, ClipTextNames? names = null,
        bool project = true, bool masked = true)
    {
        config.Validate();
        names ??= new ClipTextNames();
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(batch), $"batch must be at least 1 (got {batch})");
        if (sequence < 1 || sequence > config.MaxPositions)
            throw new ArgumentOutOfRangeException(nameof(sequence),
                $"sequence length {sequence} must be in [1, {config.MaxPositions}] (max_position_embeddings)");
        var layers = new List<Layer> { new ClipTextEmbeddings(0, config, names) };
        for (int b = 0; b < config.Layers; b++)
            layers.Add(new ClipEncoderLayer(b + 1, b, config.Encoder, names.Prefix, "text", SideChannels, causal: true));
        layers.Add(new ClipTextHead(layers.Count, config, names, project));
        long[] shape = masked ? [batch, sequence, 2] : [batch, sequence];
        return new LayeredModel(name, layers, shape, ScalarType.Int64, seed =>
        {
            using var g = new Generator(unchecked((ulong)seed ^ 0x7e47_5eedUL));
            var ids = randint(config.Vocab, [batch, sequence], dtype: ScalarType.Int64, generator: g);
            return masked ? stack([ids, ones_like(ids)], -1) : ids;
        });
    }
}

/// <summary>CLIPTextEmbeddings: token_embedding[ids] + position_embedding[0..T-1] → [B, T, H], followed by the side channels: the
/// attention mask as 0/1 and the one-hot pooled position (see <see cref="ClipTextConfig.EosTokenId"/>).</summary>
public sealed class ClipTextEmbeddings(int index, ClipTextConfig c, ClipTextNames names) : Layer(index, "text.embed")
{
    public override IReadOnlyList<ParamSpec> Parameters { get; } =
        [new(names.TokenEmbedding, c.Vocab, c.Hidden), new(names.PositionEmbedding, c.MaxPositions, c.Hidden)];

    public override long[] OutputShape(long[] input)
    {
        bool ok = (input.Length == 2 || input.Length == 3 && input[2] == 2) && input[1] >= 1;
        if (!ok)
            throw new ArgumentException($"{Name}: expected token ids [batch, tokens] or ids with the mask [batch, tokens, 2], got {ClipCommon.Shape(input)}");
        if (input[1] > c.MaxPositions)
            throw new ArgumentException($"{Name}: sequence length {input[1]} exceeds max_position_embeddings ({c.MaxPositions})");
        return [input[0], input[1], c.Hidden + ClipText.SideChannels];
    }

    public override long? MaxPositions => c.MaxPositions;

    public override double Flops(long[] input) => (double)input[0] * input[1] * c.Hidden;

    /// <summary>N = B·T tokens: the token embeddings and their sum with the positions (2·N·H floats), the mask and the one-hot as
    /// floats (2·N), the pooled index and its one-hot in int64 (B + N), the ids compared with eos as bool and int32 (5·N bytes; the
    /// legacy rule takes the argmax of the ids instead), and for ids without a mask the all-ones mask (N int64).</summary>
    public override long WorkspaceBytes(long[] input)
    {
        long b = input[0], n = b * input[1];
        return (2 * n * c.Hidden + 2 * n) * sizeof(float) + (b + n) * sizeof(long) + (c.PoolsAtLargestId ? 0 : n * (1 + sizeof(int)))
            + (input.Length == 2 ? n * sizeof(long) : 0);
    }

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor input)
    {
        long b = input.shape[0], t = input.shape[1];
        var ids = input.dim() == 3 ? input.select(-1, 0) : input;
        var mask = input.dim() == 3 ? input.select(-1, 1) : ones_like(ids);
        var tokens = w[names.TokenEmbedding].index_select(0, ids.reshape(-1)).view(b, t, c.Hidden);
        var embeddings = tokens + w[names.PositionEmbedding].narrow(0, 0, t);
        var pooled = c.PoolsAtLargestId ? ids.argmax(-1) : ids.eq(c.EosTokenId).to_type(ScalarType.Int32).argmax(-1);
        var onehot = F.one_hot(pooled, t);
        return cat([embeddings, mask.to_type(ScalarType.Float32).unsqueeze(-1), onehot.to_type(ScalarType.Float32).unsqueeze(-1)], -1);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => ClipCommon.Initialize(g, Parameters);
}

/// <summary>CLIPTextTransformer's pooling and CLIPModel's projection: the hidden state at the pooled position (the side channel's
/// one), final_layer_norm ([B, H], the pooler_output: LayerNorm is per position, so normalising the pooled row alone is
/// transformers' normalise-then-pick), then text_projection (no bias) when <paramref name="project"/> → text_embeds [B, projection_dim].</summary>
public sealed class ClipTextHead(int index, ClipTextConfig c, ClipTextNames names, bool project = true) : Layer(index, "text.head")
{
    public override IReadOnlyList<ParamSpec> Parameters { get; } = project
        ? [new(names.FinalLayerNormWeight, c.Hidden), new(names.FinalLayerNormBias, c.Hidden), new(names.Projection, c.ProjectionDim, c.Hidden)]
        : [new(names.FinalLayerNormWeight, c.Hidden), new(names.FinalLayerNormBias, c.Hidden)];

    public override long[] OutputShape(long[] input)
    {
        if (input.Length != 3 || input[2] != c.Hidden + ClipText.SideChannels)
            throw new ArgumentException($"{Name}: expected activations [batch, tokens, {c.Hidden + ClipText.SideChannels}], got {ClipCommon.Shape(input)}");
        return [input[0], project ? c.ProjectionDim : c.Hidden];
    }

    public override double Flops(long[] input) => project ? 2.0 * input[0] * c.Hidden * c.ProjectionDim : 8.0 * input[0] * c.Hidden;

    /// <summary>The pooled index (B int64) and the pooled rows (B·H floats); with the projection, their LayerNorm too (B·H).</summary>
    public override long WorkspaceBytes(long[] input) => input[0] * sizeof(long) + (project ? 2 : 1) * input[0] * c.Hidden * sizeof(float);

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        long b = x.shape[0];
        var position = x.select(-1, c.Hidden + 1).argmax(1).view(b, 1, 1).expand(b, 1, c.Hidden);
        var rows = x.narrow(-1, 0, c.Hidden).gather(1, position).squeeze(1);
        var pooled = ClipCommon.LayerNorm(rows, w[names.FinalLayerNormWeight], w[names.FinalLayerNormBias], c.LayerNormEps);
        return project ? F.linear(pooled, w[names.Projection]) : pooled;
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => ClipCommon.Initialize(g, Parameters);
}
