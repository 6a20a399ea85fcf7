using Superpipeline.Contracts;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Images;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Policy;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Engine.Models;

/// <summary>What the ViT head layer computes, after the final layernorm: ViTModel's pooler_output (dense + tanh on the CLS token),
/// ViTForImageClassification's logits (classifier on the CLS token), or, with neither in the checkpoint, the last hidden state.</summary>
public enum VitHeadKind
{
    Pooler,
    Classifier,
    HiddenStates,
}

/// <summary>The ViT family (transformers' ViTModel, or ViTForImageClassification): layers are the embedding (patches by a
/// patch_size-strided convolution, the CLS token, position embeddings), one per encoder block (pre-LN), and the head (final
/// layernorm, then the pooler, the classifier or nothing; see <see cref="VitHeadKind"/>). Its input is float32 pixels
/// [batch, num_channels, image_size, image_size] (<see cref="ImageInput"/> makes them from PNG or JPEG files); other image sizes
/// are refused (position embeddings are not interpolated). Tensor names are the checkpoint's own (<see cref="VitNames"/>).</summary>
public static class Vit
{
    /// <summary>The model over <paramref name="batch"/> images (seeded N(0, 1) pixels when no input is given).</summary>
    public static LayeredModel Create(string name, VitConfig config, int batch, VitNames names, VitHeadKind head)
    {
        config.Validate();
        if (batch < 1) throw new FieldException(FieldException.Batch, $"must be at least 1 (got {batch})");
        var layers = new List<Layer> { new VitEmbedding(0, config, names) };
        for (int b = 0; b < config.Layers; b++) layers.Add(new VitBlock(b + 1, b, config, names));
        layers.Add(new VitHead(config.Layers + 1, config, names, head));
        long[] shape = [batch, config.Channels, config.ImageSize, config.ImageSize];
        return new LayeredModel(name, layers, shape, ScalarType.Float32, seed =>
        {
            using var g = new Generator(unchecked((ulong)seed ^ 0x7669_7400UL));
            return randn(shape, generator: g);
        });
    }

    /// <summary>The tensor prefix ("vit." as ViTForImageClassification saves them, or "") and the head the checkpoint in
    /// <paramref name="directory"/> has: the classifier when classifier.weight is there, else the pooler when pooler.dense.weight
    /// is, else the last hidden state. A one-line error naming the directory when embeddings.cls_token is in neither place.</summary>
    public static (VitNames Names, VitHeadKind Head) LayoutIn(string directory)
    {
        using var ckpt = SafetensorsCheckpoint.Open(directory);
        var names = ckpt.Names.ToHashSet(StringComparer.Ordinal);
        string prefix = names.Contains(VitNames.Vit + VitNames.ClsTokenName) ? VitNames.Vit
            : names.Contains(VitNames.ClsTokenName) ? ""
            : throw new ArgumentException($"{directory}: neither vit.embeddings.cls_token nor embeddings.cls_token is in the checkpoint; " +
                "not a ViT checkpoint");
        var n = new VitNames(prefix);
        var head = names.Contains(VitNames.ClassifierWeight) ? VitHeadKind.Classifier
            : names.Contains(n.PoolerWeight) ? VitHeadKind.Pooler : VitHeadKind.HiddenStates;
        return (n, head);
    }

    /// <summary>The image pipeline of the checkpoint in <paramref name="directory"/>: its preprocessor_config.json, or ViTImageProcessor's
    /// defaults at the config's image_size (resize to image_size², bilinear, 1/255, mean and std 0.5).</summary>
    public static ImagePreprocess Preprocess(string directory) => ImagePreprocess.ForCheckpoint(directory, VitConfig.Read(directory).ImageSize);

    /// <summary>A spec that runs the checkpoint in <paramref name="directory"/>: Blocks, Hidden and Heads echo the config, Vocab is
    /// the width of the head's output (labels, the pooler's size or hidden_size), Sequence the encoder's tokens; with
    /// <paramref name="input"/> (pixels in a .npy) its first dimension is the batch.</summary>
    public static ModelSpec CheckpointSpec(string directory, int batch, long seed, string? input)
    {
        var c = VitConfig.Read(directory);
        var (_, head) = LayoutIn(directory);
        if (input is not null) batch = (int)Pixels(input, c).Shape[0];
        int width = head switch { VitHeadKind.Classifier => c.Labels, VitHeadKind.Pooler => c.PoolerSize, _ => c.Hidden };
        return new ModelSpec(VitConfig.ModelType, c.Layers, c.Hidden, c.Heads, width, c.Tokens, batch, seed, Path.GetFullPath(directory),
            input is null ? null : Path.GetFullPath(input));
    }

    /// <summary>The model of a spec from <see cref="CheckpointSpec"/>: its input the pixels of spec.Input, or seeded pixels.</summary>
    public static LayeredModel FromCheckpoint(ModelSpec spec)
    {
        string dir = spec.Checkpoint!;
        var c = VitConfig.Read(dir);
        var (names, head) = LayoutIn(dir);
        if (spec.Input is null) return Create(spec.Name, c, spec.Batch, names, head);
        var pixels = Pixels(spec.Input, c);
        var seeded = Create(spec.Name, c, (int)pixels.Shape[0], names, head);
        return new LayeredModel(seeded.Name, seeded.Layers, [.. pixels.Shape], ScalarType.Float32, _ => TensorPayloads.ToTensor(pixels));
    }

    /// <summary>Pixels from a .npy: float32 [batch, num_channels, image_size, image_size], else one line naming the file.</summary>
    static TensorPayload Pixels(string path, VitConfig c)
    {
        if (!File.Exists(path)) throw new ArgumentException($"{path}: not found");
        var (descr, shape, data) = Npy.Read(path);
        string expected = $"[batch, {c.Channels}, {c.ImageSize}, {c.ImageSize}] (num_channels, image_size; position embeddings are not interpolated)";
        if (descr != "<f4") throw new ArgumentException($"{path}: pixels must be float32 (<f4), got '{descr}'");
        if (shape.Length != 4 || shape[0] < 1 || shape[1] != c.Channels || shape[2] != c.ImageSize || shape[3] != c.ImageSize)
            throw new ArgumentException($"{path}: pixels must have shape {expected}, got [{string.Join(", ", shape)}]");
        if (data.Length != shape.Aggregate(1L, (a, b) => a * b) * sizeof(float))
            throw new ArgumentException($"{path}: data is {data.Length} bytes, not [{string.Join(", ", shape)}] float32");
        return new TensorPayload("Float32", [.. shape], [.. data]);
    }

    internal static void CheckTokens(long[] input, VitConfig c, string layer)
    {
        if (input.Length != 3 || input[1] != c.Tokens || input[2] != c.Hidden)
            throw new ArgumentException($"{layer}: expected activations [batch, {c.Tokens}, {c.Hidden}], got [{string.Join(", ", input)}]");
    }
}

/// <summary>The one table from layers to a ViT checkpoint's tensor names, under a prefix ("vit." or "").</summary>
public sealed class VitNames(string prefix)
{
    public const string Vit = "vit.";
    public const string ClsTokenName = "embeddings.cls_token";
    public const string ClassifierWeight = "classifier.weight", ClassifierBias = "classifier.bias";

    public string Prefix { get; } = prefix is Vit or "" ? prefix : throw new ArgumentException($"tensor prefix \"{prefix}\": only \"{Vit}\" or none");
    public string ClsToken => Prefix + ClsTokenName;
    public string PositionEmbeddings => $"{Prefix}embeddings.position_embeddings";
    public string PatchWeight => $"{Prefix}embeddings.patch_embeddings.projection.weight";
    public string PatchBias => $"{Prefix}embeddings.patch_embeddings.projection.bias";
    public string LayerNormWeight => $"{Prefix}layernorm.weight";
    public string LayerNormBias => $"{Prefix}layernorm.bias";
    public string PoolerWeight => $"{Prefix}pooler.dense.weight";
    public string PoolerBias => $"{Prefix}pooler.dense.bias";
    public string Block(int i, string tensor) => $"{Prefix}encoder.layer.{i}.{tensor}";

    /// <summary>A block's tensors in checkpoint order, with their shapes (nn.Linear weights [out, in]).</summary>
    public IReadOnlyList<ParamSpec> BlockParameters(int i, VitConfig c)
    {
        long h = c.Hidden, f = c.Intermediate;
        var list = new List<ParamSpec>();
        foreach (var p in new[] { "query", "key", "value" })
        {
            list.Add(new(Block(i, $"attention.attention.{p}.weight"), h, h));
            if (c.QkvBias) list.Add(new(Block(i, $"attention.attention.{p}.bias"), h));
        }
        list.AddRange(
        [
            new(Block(i, "attention.output.dense.weight"), h, h), new(Block(i, "attention.output.dense.bias"), h),
            new(Block(i, "intermediate.dense.weight"), f, h), new(Block(i, "intermediate.dense.bias"), f),
            new(Block(i, "output.dense.weight"), h, f), new(Block(i, "output.dense.bias"), h),
            new(Block(i, "layernorm_before.weight"), h), new(Block(i, "layernorm_before.bias"), h),
            new(Block(i, "layernorm_after.weight"), h), new(Block(i, "layernorm_after.bias"), h),
        ]);
        return list;
    }
}

/// <summary>ViTEmbeddings: pixels [B, C, S, S] → [B, T, H] with T = (S / P)² + 1: conv2d(pixels, projection, stride P) flattened
/// to patch tokens, the CLS token before them, plus the position embeddings.</summary>
public sealed class VitEmbedding(int index, VitConfig c, VitNames names) : Layer(index, "embed")
{
    public override IReadOnlyList<ParamSpec> Parameters { get; } =
    [
        new(names.ClsToken, 1, 1, c.Hidden), new(names.PositionEmbeddings, 1, c.Tokens, c.Hidden),
        new(names.PatchWeight, c.Hidden, c.Channels, c.PatchSize, c.PatchSize), new(names.PatchBias, c.Hidden),
    ];

    public override long[] OutputShape(long[] input)
    {
        if (input.Length != 4 || input[1] != c.Channels || input[2] != c.ImageSize || input[3] != c.ImageSize)
            throw new ArgumentException($"{Name}: expected pixels [batch, {c.Channels}, {c.ImageSize}, {c.ImageSize}] (num_channels, image_size; " +
                $"position embeddings are not interpolated), got [{string.Join(", ", input)}]");
        return [input[0], c.Tokens, c.Hidden];
    }

    public override double Flops(long[] input) => 2.0 * input[0] * (c.Tokens - 1) * c.Hidden * c.Channels * c.PatchSize * c.PatchSize;

    /// <summary>The convolution's output (B·(T-1)·H) and the CLS-and-patches concatenation (B·T·H); the position sum is the output.
    /// Plus an im2col buffer the size of the pixels (B·C·S²), which a CPU convolution may unfold them into.</summary>
    public override long WorkspaceBytes(long[] input) =>
        (input[0] * (2L * c.Tokens - 1) * c.Hidden + input[0] * c.Channels * c.ImageSize * c.ImageSize) * sizeof(float);

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor pixels)
    {
        long b = pixels.shape[0];
        var patches = F.conv2d(pixels, w[names.PatchWeight], w[names.PatchBias], strides: [c.PatchSize, c.PatchSize]);
        var tokens = patches.flatten(2).transpose(1, 2);
        var cls = w[names.ClsToken].expand(b, -1, -1);
        return cat([cls, tokens], 1) + w[names.PositionEmbeddings];
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => Parameters.ToDictionary(p => p.Name, p => Gpt2.Normal(g, [.. p.Shape]));
}

/// <summary>One ViTLayer (pre-LN): x + attention.output.dense(attention(layernorm_before(x))) with query, key and value heads
/// and 1/√d scaling (no mask), then x + output.dense(gelu(intermediate.dense(layernorm_after(x)))) with the exact (erf) gelu.</summary>
public sealed class VitBlock(int index, int block, VitConfig c, VitNames names) : Layer(index, $"block.{block}")
{
    public int Block { get; } = block;

    public override IReadOnlyList<ParamSpec> Parameters { get; } = names.BlockParameters(block, c);

    public override long[] OutputShape(long[] input)
    {
        Vit.CheckTokens(input, c, Name);
        return input;
    }

    public override double Flops(long[] input)
    {
        double tokens = input[0] * input[1], h = c.Hidden, t = input[1];
        return 2 * tokens * (4 * h * h + 2 * h * c.Intermediate) + 2 * 2 * tokens * t * h;
    }

    /// <summary>Counted from <see cref="Forward"/> as it runs inside the pass's dispose scope. N = B·T tokens, H hidden, F
    /// intermediate: layernorm_before (N·H), query, key and value (3·N·H; the heads are views), the attention output (N·H, laid out
    /// [B, T, heads, d] so that the merge is a view), output.dense (N·H), the first residual (N·H), layernorm_after (N·H),
    /// intermediate.dense and gelu (2·N·F), output.dense (N·H); the second residual is the output. Inside the attention call:
    /// scores [B, heads, T, T] and their softmax, an upper bound. tests/VitSpec.cs checks the rest against the storages held.</summary>
    public override long WorkspaceBytes(long[] input)
    {
        long n = input[0] * input[1], h = c.Hidden, f = c.Intermediate;
        return (9 * n * h + 2 * n * f + 2L * input[0] * c.Heads * input[1] * input[1]) * sizeof(float);
    }

    string N(string tensor) => names.Block(Block, tensor);

    Tensor? Bias(IReadOnlyDictionary<string, Tensor> w, string tensor) => c.QkvBias ? w[N(tensor)] : null;

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        long b = x.shape[0], t = x.shape[1];
        int heads = c.Heads, d = c.HeadDim, hidden = c.Hidden;
        var h = F.layer_norm(x, [hidden], w[N("layernorm_before.weight")], w[N("layernorm_before.bias")], c.LayerNormEps);
        Tensor Heads(string p) =>
            F.linear(h, w[N($"attention.attention.{p}.weight")], Bias(w, $"attention.attention.{p}.bias")).view(b, t, heads, d).transpose(1, 2);
        var (q, k, v) = (Heads("query"), Heads("key"), Heads("value"));
        var attn = F.scaled_dot_product_attention(q, k, v, null, 0.0, false);
        var merged = attn.transpose(1, 2).reshape(b, t, hidden);
        x = F.linear(merged, w[N("attention.output.dense.weight")], w[N("attention.output.dense.bias")]) + x;
        h = F.layer_norm(x, [hidden], w[N("layernorm_after.weight")], w[N("layernorm_after.bias")], c.LayerNormEps);
        var m = F.gelu(F.linear(h, w[N("intermediate.dense.weight")], w[N("intermediate.dense.bias")]));
        return F.linear(m, w[N("output.dense.weight")], w[N("output.dense.bias")]) + x;
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => Parameters.ToDictionary(p => p.Name,
        p => p.Name.Contains(".layernorm_", StringComparison.Ordinal)
            ? (p.Name.EndsWith(".weight", StringComparison.Ordinal) ? Gpt2.NormWeight(g, c.Hidden) : Gpt2.NormBias(g, c.Hidden))
            : Gpt2.Normal(g, [.. p.Shape]));
}

/// <summary>The final layernorm and what follows it (<see cref="VitHeadKind"/>): [B, T, H] → the pooler's [B, pooler size]
/// (tanh(dense(x[:, 0]))), the classifier's logits [B, labels] (classifier(x[:, 0])), or the last hidden state [B, T, H].</summary>
public sealed class VitHead(int index, VitConfig c, VitNames names, VitHeadKind kind) : Layer(index, "head")
{
    public VitHeadKind Kind { get; } = kind;

    public override IReadOnlyList<ParamSpec> Parameters { get; } = kind switch
    {
        VitHeadKind.Pooler =>
        [
            new(names.LayerNormWeight, c.Hidden), new(names.LayerNormBias, c.Hidden),
            new(names.PoolerWeight, c.PoolerSize, c.Hidden), new(names.PoolerBias, c.PoolerSize),
        ],
        VitHeadKind.Classifier =>
        [
            new(names.LayerNormWeight, c.Hidden), new(names.LayerNormBias, c.Hidden),
            new(VitNames.ClassifierWeight, c.Labels, c.Hidden), new(VitNames.ClassifierBias, c.Labels),
        ],
        _ => [new(names.LayerNormWeight, c.Hidden), new(names.LayerNormBias, c.Hidden)],
    };

    public override long[] OutputShape(long[] input)
    {
        Vit.CheckTokens(input, c, Name);
        return Kind switch
        {
            VitHeadKind.Pooler => [input[0], c.PoolerSize],
            VitHeadKind.Classifier => [input[0], c.Labels],
            _ => input,
        };
    }

    public override double Flops(long[] input) => Kind switch
    {
        VitHeadKind.Pooler => 2.0 * input[0] * c.Hidden * c.PoolerSize,
        VitHeadKind.Classifier => 2.0 * input[0] * c.Hidden * c.Labels,
        _ => 0,
    } + 8.0 * input[0] * input[1] * c.Hidden;

    /// <summary>The layernorm's output (N·H) unless it is the output; the pooler's dense before its tanh (B·pooler size).</summary>
    public override long WorkspaceBytes(long[] input) => Kind switch
    {
        VitHeadKind.Pooler => input[0] * input[1] * c.Hidden + input[0] * c.PoolerSize,
        VitHeadKind.Classifier => input[0] * input[1] * c.Hidden,
        _ => 0,
    } * sizeof(float);

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        var normed = F.layer_norm(x, [c.Hidden], w[names.LayerNormWeight], w[names.LayerNormBias], c.LayerNormEps);
        return Kind switch
        {
            VitHeadKind.Pooler => F.linear(normed.select(1, 0), w[names.PoolerWeight], w[names.PoolerBias]).tanh(),
            VitHeadKind.Classifier => F.linear(normed.select(1, 0), w[VitNames.ClassifierWeight], w[VitNames.ClassifierBias]),
            _ => normed,
        };
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => Parameters.ToDictionary(p => p.Name,
        p => p.Name == names.LayerNormWeight ? Gpt2.NormWeight(g, c.Hidden)
            : p.Name == names.LayerNormBias ? Gpt2.NormBias(g, c.Hidden)
            : Gpt2.Normal(g, [.. p.Shape]));
}
