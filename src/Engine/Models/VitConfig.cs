using System.Globalization;
using System.Text.Json;

namespace Superpipeline.Engine.Models;

/// <summary>The shape of a ViT checkpoint (transformers' ViTConfig, model_type "vit"), as read from config.json. Only what
/// modeling_vit.py computes by default: exact (erf) gelu, a pooler of dense + tanh, no interpolated position embeddings.</summary>
/// <param name="Labels">num_labels (the size of id2label; transformers' default 2): the classifier's outputs when the checkpoint
/// has one (ViTForImageClassification).</param>
/// <param name="PoolerOutputSize">pooler_output_size, or hidden_size when null (ViTPooler's dense is hidden → this).</param>
public sealed record VitConfig(int Hidden, int Layers, int Heads, int Intermediate, int ImageSize, int PatchSize, int Channels = 3,
    double LayerNormEps = 1e-12, bool QkvBias = true, int Labels = 2, int? PoolerOutputSize = null, string TorchDtype = "float32")
{
    public const string ModelType = "vit";
    public int HeadDim => Hidden / Heads;

    /// <summary>Patches along each edge: image_size / patch_size.</summary>
    public int Grid => ImageSize / PatchSize;

    /// <summary>Tokens through the encoder: the CLS token and one per patch (the rows of the position embeddings).</summary>
    public int Tokens => Grid * Grid + 1;

    public int PoolerSize => PoolerOutputSize ?? Hidden;

    /// <summary>Throws a <see cref="CheckpointConfigException"/> naming the first bad key (config.json's name for it).</summary>
    public void Validate(string file = "config.json")
    {
        void Positive(int value, string key)
        {
            if (value < 1) throw new CheckpointConfigException(file, key, $"must be at least 1 (got {value})");
        }
        Positive(Hidden, "hidden_size"); Positive(Layers, "num_hidden_layers"); Positive(Heads, "num_attention_heads");
        Positive(Intermediate, "intermediate_size"); Positive(ImageSize, "image_size"); Positive(PatchSize, "patch_size");
        Positive(Channels, "num_channels"); Positive(Labels, "id2label");
        if (PoolerOutputSize is int p) Positive(p, "pooler_output_size");
        if (Hidden % Heads != 0)
            throw new CheckpointConfigException(file, "hidden_size", $"({Hidden}) must be a multiple of num_attention_heads ({Heads})");
        if (ImageSize % PatchSize != 0)
            throw new CheckpointConfigException(file, "image_size", $"({ImageSize}) must be a multiple of patch_size ({PatchSize})");
        if (!(LayerNormEps > 0)) throw new CheckpointConfigException(file, "layer_norm_eps", $"must be positive (got {LayerNormEps})");
    }

    /// <summary>Reads <c>DIR/config.json</c> (or the file itself). Missing, mistyped or unsupported keys are one-line errors
    /// naming the file and the key.</summary>
    public static VitConfig Read(string path)
    {
        using var c = ConfigJson.Open(path);
        string file = c.File;
        c.ModelType([ModelType]);
        string? act = c.String("hidden_act");
        if (act is not null and not "gelu") throw new CheckpointConfigException(file, "hidden_act", $"is \"{act}\"; only \"gelu\" is supported");
        string? poolerAct = c.String("pooler_act");
        if (poolerAct is not null and not "tanh")
            throw new CheckpointConfigException(file, "pooler_act", $"is \"{poolerAct}\"; only \"tanh\" is supported");
        int labels = 2;
        if (c.Root.TryGetProperty("id2label", out var id2label) && id2label.ValueKind == JsonValueKind.Object)
            labels = id2label.EnumerateObject().Count();
        else if (c.Has("num_labels")) labels = c.Int("num_labels");
        var config = new VitConfig(
            Hidden: c.Int("hidden_size"),
            Layers: c.Int("num_hidden_layers"),
            Heads: c.Int("num_attention_heads"),
            Intermediate: c.Int("intermediate_size"),
            ImageSize: c.Int("image_size"),
            PatchSize: c.Int("patch_size"),
            Channels: c.Int("num_channels", 3),
            LayerNormEps: c.Double("layer_norm_eps", 1e-12),
            QkvBias: c.Bool("qkv_bias", true),
            Labels: labels,
            PoolerOutputSize: c.Has("pooler_output_size") ? c.Int("pooler_output_size") : null,
            TorchDtype: c.String("torch_dtype") ?? c.String("dtype") ?? "float32");
        config.Validate(file);
        return config;
    }

    /// <summary>config.json as transformers' save_pretrained writes it: for ViTForImageClassification with
    /// <paramref name="classifier"/> (id2label and label2id of <see cref="Labels"/> entries), else for ViTModel.</summary>
    public string ToJson(bool classifier)
    {
        var keys = new SortedDictionary<string, object?>(StringComparer.Ordinal)
        {
            ["architectures"] = new[] { classifier ? "ViTForImageClassification" : "ViTModel" }, ["attention_probs_dropout_prob"] = 0.0,
            ["encoder_stride"] = PatchSize, ["hidden_act"] = "gelu", ["hidden_dropout_prob"] = 0.0, ["hidden_size"] = Hidden,
            ["image_size"] = ImageSize, ["initializer_range"] = 0.02, ["intermediate_size"] = Intermediate, ["layer_norm_eps"] = LayerNormEps,
            ["model_type"] = ModelType, ["num_attention_heads"] = Heads, ["num_channels"] = Channels, ["num_hidden_layers"] = Layers,
            ["patch_size"] = PatchSize, ["qkv_bias"] = QkvBias, ["torch_dtype"] = TorchDtype,
        };
        if (PoolerOutputSize is int p) keys["pooler_output_size"] = p;
        if (classifier)
        {
            keys["id2label"] = Enumerable.Range(0, Labels).ToDictionary(i => i.ToString(CultureInfo.InvariantCulture), i => $"LABEL_{i}");
            keys["label2id"] = Enumerable.Range(0, Labels).ToDictionary(i => $"LABEL_{i}", i => i);
        }
        return JsonSerializer.Serialize(keys, new JsonSerializerOptions { WriteIndented = true, IndentSize = 2 }) + "\n";
    }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"vit(layers {Layers}, hidden {Hidden}, heads {Heads}, intermediate {Intermediate}, image {ImageSize}, patch {PatchSize}, eps {LayerNormEps})");
}
