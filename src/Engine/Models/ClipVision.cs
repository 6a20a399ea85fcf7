using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Engine.Models;

/// <summary>The one table from CLIP vision layers to a checkpoint's tensor names. The tower's tensors sit under
/// <see cref="Prefix"/>: "vision_model." in CLIPModel, "vision_tower.vision_model." or "model.vision_tower.vision_model." in
/// LLaVA's checkpoints. The projection (CLIPModel's visual_projection.weight, no bias) is named apart, outside the prefix.</summary>
public sealed class ClipVisionNames(string prefix = ClipVisionNames.VisionModel, string projection = ClipVisionNames.VisualProjection)
{
    public const string VisionModel = "vision_model.", VisualProjection = "visual_projection.weight";

    public string Prefix { get; } = prefix;
    public string Projection { get; } = projection;
    public string ClassEmbedding => $"{Prefix}embeddings.class_embedding";
    public string PatchEmbedding => $"{Prefix}embeddings.patch_embedding.weight";
    public string PositionEmbedding => $"{Prefix}embeddings.position_embedding.weight";
    public string PreLayerNormWeight => $"{Prefix}pre_layrnorm.weight"; // sic: transformers' name
    public string PreLayerNormBias => $"{Prefix}pre_layrnorm.bias";
    public string PostLayerNormWeight => $"{Prefix}post_layernorm.weight";
    public string PostLayerNormBias => $"{Prefix}post_layernorm.bias";
}

/// <summary>CLIP's vision tower (transformers' CLIPVisionTransformer, and CLIPModel.get_image_features with the projection):
/// <see cref="ClipVisionEmbeddings"/> (layer 0), one <see cref="ClipEncoderLayer"/> per block, <see cref="ClipVisionHead"/>.
/// The input is pixel values float32 [B, channels, image_size, image_size], already resized and normalised.</summary>
public static class ClipVision
{
    /// <summary>The whole tower over <paramref name="batch"/> images (seeded N(0, 1) pixel values as the default input):
    /// embeddings, every block, and the head, which ends with visual_projection when <paramref name="project"/>
    /// (image_embeds [B, projection_dim], not normalised) and at post_layernorm otherwise (pooler_output [B, hidden]).</summary>
    public static LayeredModel Create(string name, ClipVisionConfig config, int batch, ClipVisionNames? names = null, bool project = true)
    {
        names ??= new ClipVisionNames();
        var layers = Encoder(config, names, config.Layers).ToList();
        layers.Add(new ClipVisionHead(layers.Count, config, names, project));
        return Model(name, config, batch, layers);
    }

    /// <summary>The embeddings and the first <paramref name="blocks"/> encoder blocks, no head, with indices from
    /// <paramref name="firstIndex"/>: their output is transformers' hidden_states[blocks] ([B, 1 + patches, hidden], no
    /// post_layernorm), what LLaVA takes as vision_feature_layer (-2 is blocks = num_hidden_layers - 1).</summary>
    public static IReadOnlyList<Layer> Encoder(ClipVisionConfig config, ClipVisionNames names, int blocks, int firstIndex = 0)
    {
        config.Validate();
        if (blocks < 0 || blocks > config.Layers)
            throw new ArgumentOutOfRangeException(nameof(blocks), $"blocks {blocks} must be in [0, {config.Layers}] (num_hidden_layers)");
        var layers = new List<Layer> { new ClipVisionEmbeddings(firstIndex, config, names) };
        for (int b = 0; b < blocks; b++)
            layers.Add(new ClipEncoderLayer(firstIndex + 1 + b, b, config.Encoder, names.Prefix, "vision"));
        return layers;
    }

    /// <summary>A model over <paramref name="layers"/> (the tower or its <see cref="Encoder"/>) taking <paramref name="batch"/> images.</summary>
    public static LayeredModel Model(string name, ClipVisionConfig config, int batch, IReadOnlyList<Layer> layers)
    {
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(batch), $"batch must be at least 1 (got {batch})");
        long[] shape = [batch, config.Channels, config.ImageSize, config.ImageSize];
        return new LayeredModel(name, layers, shape, ScalarType.Float32, seed =>
        {
            using var g = new Generator(unchecked((ulong)seed ^ 0x0c11_9e5eUL));
            return randn(shape, generator: g);
        });
    }
}

/// <summary>CLIPVisionEmbeddings then pre_layrnorm: pixels [B, C, S, S] → a stride-P convolution (no bias) flattened to patches
/// [B, (S/P)², H], the class embedding in front, position embeddings added, LayerNorm → [B, 1 + (S/P)², H].</summary>
public sealed class ClipVisionEmbeddings(int index, ClipVisionConfig c, ClipVisionNames names) : Layer(index, "vision.embed")
{
    public override IReadOnlyList<ParamSpec> Parameters { get; } =
    [
        new(names.ClassEmbedding, c.Hidden), new(names.PatchEmbedding, c.Hidden, c.Channels, c.PatchSize, c.PatchSize),
        new(names.PositionEmbedding, c.Positions, c.Hidden), new(names.PreLayerNormWeight, c.Hidden), new(names.PreLayerNormBias, c.Hidden),
    ];

    public override long[] OutputShape(long[] input)
    {
        if (input.Length != 4 || input[1] != c.Channels || input[2] != c.ImageSize || input[3] != c.ImageSize)
            throw new ArgumentException($"{Name}: expected pixel values [batch, {c.Channels}, {c.ImageSize}, {c.ImageSize}], got {ClipCommon.Shape(input)}");
        return [input[0], c.Positions, c.Hidden];
    }

    public override long? MaxPositions => c.Positions;

    public override double Flops(long[] input) =>
        2.0 * input[0] * c.Patches * c.Hidden * c.Channels * c.PatchSize * c.PatchSize + 8.0 * input[0] * c.Positions * c.Hidden;

    /// <summary>The convolution's output (B·patches·H floats; flattened and transposed as views), the concatenation with the class
    /// token and its sum with the positions (2·B·(1 + patches)·H); the LayerNorm's is the output.</summary>
    public override long WorkspaceBytes(long[] input) => (input[0] * c.Patches * c.Hidden + 2 * input[0] * c.Positions * c.Hidden) * sizeof(float);

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor pixels)
    {
        long b = pixels.shape[0];
        var patches = F.conv2d(pixels, w[names.PatchEmbedding], null, [c.PatchSize, c.PatchSize]).flatten(2).transpose(1, 2);
        var classes = w[names.ClassEmbedding].expand(b, 1, c.Hidden);
        var embeddings = cat([classes, patches], 1) + w[names.PositionEmbedding];
        return ClipCommon.LayerNorm(embeddings, w[names.PreLayerNormWeight], w[names.PreLayerNormBias], c.LayerNormEps);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => ClipCommon.Initialize(g, Parameters);
}

/// <summary>CLIPVisionTransformer's pooling and CLIPModel's projection: post_layernorm of the class token ([B, H], the
/// pooler_output), then visual_projection (no bias) when <paramref name="project"/> → image_embeds [B, projection_dim].</summary>
public sealed class ClipVisionHead(int index, ClipVisionConfig c, ClipVisionNames names, bool project = true) : Layer(index, "vision.head")
{
    public override IReadOnlyList<ParamSpec> Parameters { get; } = project
        ? [new(names.PostLayerNormWeight, c.Hidden), new(names.PostLayerNormBias, c.Hidden), new(names.Projection, c.ProjectionDim, c.Hidden)]
        : [new(names.PostLayerNormWeight, c.Hidden), new(names.PostLayerNormBias, c.Hidden)];

    public override long[] OutputShape(long[] input)
    {
        if (input.Length != 3 || input[2] != c.Hidden)
            throw new ArgumentException($"{Name}: expected activations [batch, tokens, {c.Hidden}], got {ClipCommon.Shape(input)}");
        return [input[0], project ? c.ProjectionDim : c.Hidden];
    }

    public override double Flops(long[] input) => project ? 2.0 * input[0] * c.Hidden * c.ProjectionDim : 8.0 * input[0] * c.Hidden;

    /// <summary>The class token's LayerNorm (B·H floats) when the projection follows it; otherwise it is the output.</summary>
    public override long WorkspaceBytes(long[] input) => project ? input[0] * c.Hidden * sizeof(float) : 0;

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        var pooled = ClipCommon.LayerNorm(x.select(1, 0), w[names.PostLayerNormWeight], w[names.PostLayerNormBias], c.LayerNormEps);
        return project ? F.linear(pooled, w[names.Projection]) : pooled;
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => ClipCommon.Initialize(g, Parameters);
}
