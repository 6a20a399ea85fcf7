using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Policy;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Engine.Models;

/// <summary>The one table from LLaVA layers to a checkpoint's tensor names, in either layout: <see cref="Current"/> (what
/// transformers' LlavaForConditionalGeneration writes now: "model.vision_tower.vision_model.…", "model.multi_modal_projector.…",
/// "model.language_model.…", "lm_head.weight") or <see cref="Hub"/> (what the hub's llava-hf checkpoints hold:
/// "vision_tower.vision_model.…", "multi_modal_projector.…", "language_model.model.…", "language_model.lm_head.weight").</summary>
public sealed class LlavaNames(string layout, ClipVisionNames vision, string projector, LlamaNames language)
{
    public static LlavaNames Current { get; } = new("current", new ClipVisionNames("model.vision_tower.vision_model."), "model.multi_modal_projector.",
        new LlamaNames("model.language_model.", "lm_head.weight"));

    public static LlavaNames Hub { get; } = new("hub", new ClipVisionNames("vision_tower.vision_model."), "multi_modal_projector.",
        new LlamaNames("language_model.model.", "language_model.lm_head.weight"));

    /// <summary>"current" or "hub".</summary>
    public string Layout { get; } = layout;
    public ClipVisionNames Vision { get; } = vision;
    public LlamaNames Language { get; } = language;
    public string Linear1Weight => $"{projector}linear_1.weight";
    public string Linear1Bias => $"{projector}linear_1.bias";
    public string Linear2Weight => $"{projector}linear_2.weight";
    public string Linear2Bias => $"{projector}linear_2.bias";

    /// <summary>The layout of the checkpoint in <paramref name="directory"/>, from its token embedding's name; a one-line error
    /// naming the directory when it holds neither.</summary>
    public static LlavaNames In(string directory)
    {
        using var ckpt = SafetensorsCheckpoint.Open(directory);
        var names = ckpt.Names.ToHashSet(StringComparer.Ordinal);
        foreach (var layout in new[] { Current, Hub })
            if (names.Contains(layout.Language.Embedding)) return layout;
        throw new ArgumentException($"{directory}: neither {Current.Language.Embedding} nor {Hub.Language.Embedding} is in the checkpoint; "
            + "not a LLaVA checkpoint");
    }
}

/// <summary>The LLaVA family (transformers' LlavaForConditionalGeneration) as two layered models run under the same (k, k'):
/// the vision side (<see cref="CreateVision"/>: CLIP's embeddings and the blocks up to vision_feature_layer, then
/// <see cref="LlavaProjector"/>), giving image features [images, tokens per image, text hidden]; and the decoder
/// (<see cref="Create"/>: <see cref="LlavaEmbedding"/>, Llama's blocks and head), whose prefill takes the features at the
/// prompt's image tokens inside its one input tensor (<see cref="PrefillInput"/>) and whose later steps are Llama's.</summary>
public static class Llava
{
    /// <summary>The decoder over <paramref name="batch"/> rows of <paramref name="sequence"/> token ids: layers 0 (embedding) to
    /// text layers + 1 (head).</summary>
    public static LayeredModel Create(string name, LlavaConfig config, int batch, int sequence, LlavaNames? names = null)
    {
        names ??= LlavaNames.Current;
        var text = config.Text;
        if (batch < 1) throw new FieldException(FieldException.Batch, $"must be at least 1 (got {batch})");
        if (sequence < 1 || sequence > text.MaxPositions)
            throw new FieldException(FieldException.Sequence, $"({sequence}) must be in [1, {text.MaxPositions}] (max_position_embeddings)");
        var layers = new List<Layer> { new LlavaEmbedding(0, config, names) };
        for (int b = 0; b < text.Layers; b++) layers.Add(new LlamaBlock(b + 1, b, text, names.Language));
        layers.Add(new LlamaHead(text.Layers + 1, text, names.Language));
        return new LayeredModel(name, layers, [batch, sequence], ScalarType.Int64, seed =>
        {
            using var g = new Generator(unchecked((ulong)seed ^ 0x11a_7a5eedUL));
            return randint(text.Vocab, [batch, sequence], dtype: ScalarType.Int64, generator: g);
        });
    }

    /// <summary>The index of the vision side's first layer: after the decoder's, so that every layer of the checkpoint has its
    /// own index (its own seeded weights and its own layer actor).</summary>
    public static int FirstVisionIndex(LlavaConfig config) => config.Text.Layers + 2;

    /// <summary>The vision side over <paramref name="images"/> pixel values float32 [N, channels, size, size]: CLIP's embeddings,
    /// the first <see cref="LlavaConfig.VisionBlocks"/> blocks (no post_layernorm) and the projector → [N, image tokens, text hidden].</summary>
    public static LayeredModel CreateVision(string name, LlavaConfig config, int images, LlavaNames? names = null)
    {
        names ??= LlavaNames.Current;
        int first = FirstVisionIndex(config);
        var layers = ClipVision.Encoder(config.Vision, names.Vision, config.VisionBlocks, first).ToList();
        layers.Add(new LlavaProjector(first + layers.Count, config, names));
        return ClipVision.Model(name, config.Vision, images, layers);
    }

    /// <summary>Every layer of the checkpoint (decoder, then vision side) as one list: what an export writes.</summary>
    public static LayeredModel All(LlavaConfig config, LlavaNames? names = null)
    {
        var decoder = Create("llava", config, 1, 1, names);
        var vision = CreateVision("llava-vision", config, 1, names);
        return new LayeredModel("llava", [.. decoder.Layers, .. vision.Layers], decoder.InputShape, decoder.InputDType, decoder.MakeInput);
    }

    /// <summary>The processor's expansion (LlavaProcessor): each <paramref name="imageToken"/> of <paramref name="ids"/> becomes
    /// <paramref name="tokensPerImage"/> of them.</summary>
    public static long[] ExpandImageTokens(IReadOnlyList<long> ids, long imageToken, int tokensPerImage) =>
        [.. ids.SelectMany(id => id == imageToken ? Enumerable.Repeat(id, tokensPerImage) : [id])];

    /// <summary>The prefill pass's one input: float32 [B, T, 1 + H], channel 0 the token id (exact below 2^24) and channels 1.. the
    /// image feature row at each position whose id is <paramref name="imageToken"/> (zeros elsewhere), the rows of
    /// <paramref name="features"/> ([N, P, H]) taken in order over the positions, row by row (as masked_scatter fills them).
    /// A count of image tokens other than N·P is an <see cref="ArgumentException"/>, as transformers refuses it.</summary>
    public static Tensor PrefillInput(Tensor ids, Tensor features, long imageToken)
    {
        if (ids.dtype != ScalarType.Int64 || ids.dim() != 2)
            throw new ArgumentException($"token ids must be int64 [batch, tokens], got {ids.dtype}[{string.Join(", ", ids.shape)}]");
        if (features.dim() != 3)
            throw new ArgumentException($"image features must be [images, tokens, hidden], got [{string.Join(", ", features.shape)}]");
        using var scope = NewDisposeScope();
        long b = ids.shape[0], t = ids.shape[1], h = features.shape[2];
        var mask = ids.eq(imageToken);
        long tokens = mask.sum().item<long>(), rows = features.shape[0] * features.shape[1];
        if (tokens != rows)
            throw new ArgumentException($"image features and image tokens do not match: the prompts hold {tokens} image tokens, "
                + $"the images give {rows} features ({features.shape[0]} × {features.shape[1]})");
        var input = zeros([b, t, 1 + h], ScalarType.Float32);
        input.select(-1, 0).copy_(ids.to_type(ScalarType.Float32));
        var slots = input.narrow(-1, 1, h);
        slots.masked_scatter_(mask.unsqueeze(-1).expand(b, t, h), features.to_type(ScalarType.Float32).reshape(-1, h));
        return input.MoveToOuterDisposeScope();
    }
}

/// <summary>The decoder's token embedding, and in the prefill the image features: int64 ids [B, T] → embed_tokens(ids), as
/// Llama's; or the prefill's float32 [B, T, 1 + H] (<see cref="Llava.PrefillInput"/>) → embed_tokens(ids) with the feature row
/// in place of the embedding wherever the id is the image token (LlavaModel's masked_scatter).</summary>
public sealed class LlavaEmbedding(int index, LlavaConfig config, LlavaNames names) : Layer(index, "embed")
{
    readonly LlamaConfig c = config.Text;

    public override IReadOnlyList<ParamSpec> Parameters { get; } = [new(names.Language.Embedding, config.Text.Vocab, config.Text.Hidden)];

    public override long[] OutputShape(long[] input)
    {
        bool ids = input.Length == 2, features = input.Length == 3 && input[2] == 1 + c.Hidden;
        if (!(ids || features) || input[1] > c.MaxPositions)
            throw new ArgumentException($"{Name}: expected token ids [batch, ≤{c.MaxPositions}] or a prefill with image features "
                + $"[batch, ≤{c.MaxPositions}, {1 + c.Hidden}], got [{string.Join(", ", input)}]");
        return [input[0], input[1], c.Hidden];
    }

    public override long? MaxPositions => c.MaxPositions;

    public override double Flops(long[] input) => 0;

    /// <summary>For ids, none (as Llama's). For the prefill's [B, T, 1 + H] with N = B·T tokens: the ids as int64 (N longs), the
    /// embeddings (N·H floats; the output is the selection between them and the features, a view of the input), the mask (N bools).</summary>
    public override long WorkspaceBytes(long[] input)
    {
        if (input.Length == 2) return 0;
        long n = input[0] * input[1];
        return n * sizeof(long) + n * c.Hidden * sizeof(float) + n;
    }

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        var table = w[names.Language.Embedding];
        long b = x.shape[0], t = x.shape[1];
        if (x.dim() == 2) return table.index_select(0, x.reshape(-1)).view(b, t, c.Hidden);
        var ids = x.select(-1, 0).to_type(ScalarType.Int64);
        var embeddings = table.index_select(0, ids.reshape(-1)).view(b, t, c.Hidden);
        var image = ids.eq(config.ImageTokenIndex).unsqueeze(-1);
        return where(image, x.narrow(-1, 1, c.Hidden).to_type(embeddings.dtype), embeddings);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => new Dictionary<string, Tensor>
    {
        [names.Language.Embedding] = Llama.Normal(g, c.Vocab, c.Hidden),
    };
}

/// <summary>The vision feature selection and LlavaMultiModalProjector: hidden states [N, 1 + patches, vision hidden] → the class
/// token dropped ("default") or kept ("full") → linear_2(gelu(linear_1(x))) → image features [N, image tokens, text hidden].</summary>
public sealed class LlavaProjector(int index, LlavaConfig c, LlavaNames names) : Layer(index, "projector")
{
    readonly int _vision = c.Vision.Hidden, _text = c.Text.Hidden;

    public override IReadOnlyList<ParamSpec> Parameters { get; } =
    [
        new(names.Linear1Weight, c.Text.Hidden, c.Vision.Hidden), new(names.Linear1Bias, c.Text.Hidden),
        new(names.Linear2Weight, c.Text.Hidden, c.Text.Hidden), new(names.Linear2Bias, c.Text.Hidden),
    ];

    public override long[] OutputShape(long[] input)
    {
        if (input.Length != 3 || input[1] != c.Vision.Positions || input[2] != _vision)
            throw new ArgumentException($"{Name}: expected vision hidden states [images, {c.Vision.Positions}, {_vision}], "
                + $"got [{string.Join(", ", input)}]");
        return [input[0], c.ImageTokens, _text];
    }

    public override double Flops(long[] input) => 2.0 * input[0] * c.ImageTokens * (_vision * (double)_text + _text * (double)_text);

    /// <summary>N = images · image tokens rows: linear_1's output and the activation (2·N·text hidden floats). The selected rows
    /// are a view (the product reads them strided).</summary>
    public override long WorkspaceBytes(long[] input) => 2 * input[0] * c.ImageTokens * _text * sizeof(float);

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        var selected = c.SelectStrategy == "default" ? x.narrow(1, 1, x.shape[1] - 1) : x;
        var h = F.gelu(F.linear(selected, w[names.Linear1Weight], w[names.Linear1Bias]));
        return F.linear(h, w[names.Linear2Weight], w[names.Linear2Bias]);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => new Dictionary<string, Tensor>
    {
        [names.Linear1Weight] = Llama.Normal(g, _text, _vision), [names.Linear1Bias] = Llama.Normal(g, _text),
        [names.Linear2Weight] = Llama.Normal(g, _text, _text), [names.Linear2Bias] = Llama.Normal(g, _text),
    };
}

/// <summary>Writes a seeded LLaVA checkpoint in Hugging Face's layout: config.json, the safetensors (every layer of the decoder and
/// the vision side under <paramref name="names"/>'s names; the vision tower's blocks past the feature layer and its
/// post_layernorm are not used by LLaVA and not written) and preprocessor_config.json (CLIPImageProcessor's, at the tower's size).</summary>
public static class LlavaExport
{
    public static IReadOnlyList<string> Write(string directory, LlavaConfig config, long seed, int shards = 1, LlavaNames? names = null)
    {
        config.Validate();
        var files = SeededCheckpoint.Write(directory, Llava.All(config, names), config.ToJson(), config.TorchDtype, seed, shards);
        string path = Path.Combine(directory, Images.ImagePreprocess.FileName);
        File.WriteAllText(path, Images.ImagePreprocess.Clip(config.Vision.ImageSize).ToJson("CLIPImageProcessor") + "\n");
        return [.. files, path];
    }
}
