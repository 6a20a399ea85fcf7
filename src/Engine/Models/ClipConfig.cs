using System.Globalization;
using System.Text.Json;

namespace Superpipeline.Engine.Models;

/// <summary>One section of a config.json (the root, or a nested object such as CLIP's <c>vision_config</c>), read with keys
/// named as the file has them ("vision_config.hidden_size"): absent keys take transformers' defaults, mistyped ones are a
/// <see cref="CheckpointConfigException"/> naming the file and the key.</summary>
public sealed class ClipJsonSection(string file, JsonElement element, string path)
{
    public string File { get; } = file;
    public JsonElement Element { get; } = element;

    /// <summary>Where the section sits: "vision_config", or "" for the root.</summary>
    public string Path { get; } = path;

    /// <summary>The key as the error names it: "vision_config.hidden_size", or "projection_dim" at the root.</summary>
    public string Key(string key) => Path.Length == 0 ? key : $"{Path}.{key}";

    bool TryGet(string key, out JsonElement value) =>
        Element.TryGetProperty(key, out value) && value.ValueKind != JsonValueKind.Null;

    /// <summary>The nested object <paramref name="key"/>; an absent one is empty (every key takes its default), as
    /// transformers' CLIPConfig takes it.</summary>
    public ClipJsonSection Section(string key)
    {
        if (!TryGet(key, out var v)) return new ClipJsonSection(File, JsonDocument.Parse("{}").RootElement, Key(key));
        return v.ValueKind == JsonValueKind.Object ? new ClipJsonSection(File, v, Key(key))
            : throw new CheckpointConfigException(File, Key(key), $"is {v.GetRawText()}, not an object");
    }

    public int Int(string key, int fallback)
    {
        if (!TryGet(key, out var v)) return fallback;
        return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int n) ? n
            : throw new CheckpointConfigException(File, Key(key), $"is {v.GetRawText()}, not an integer");
    }

    public int? OptionalInt(string key) => TryGet(key, out _) ? Int(key, 0) : null;

    public double Double(string key, double fallback)
    {
        if (!TryGet(key, out var v)) return fallback;
        return v.ValueKind == JsonValueKind.Number ? v.GetDouble()
            : throw new CheckpointConfigException(File, Key(key), $"is {v.GetRawText()}, not a number");
    }

    public string String(string key, string fallback)
    {
        if (!TryGet(key, out var v)) return fallback;
        return v.ValueKind == JsonValueKind.String ? v.GetString()!
            : throw new CheckpointConfigException(File, Key(key), $"is {v.GetRawText()}, not a string");
    }
}

/// <summary>The activations CLIP's towers take (transformers' ACT2FN names).</summary>
public static class ClipActivation
{
    /// <summary>quick_gelu (CLIP's default: x · sigmoid(1.702 x)) and gelu (exact, erf).</summary>
    public static IReadOnlyList<string> Supported { get; } = ["quick_gelu", "gelu"];

    internal static string Check(ClipJsonSection s, string key)
    {
        string act = s.String(key, "quick_gelu");
        return Supported.Contains(act) ? act
            : throw new CheckpointConfigException(s.File, s.Key(key), $"is \"{act}\"; supported: {string.Join(", ", Supported.Select(a => $"\"{a}\""))}");
    }
}

/// <summary>What a CLIP encoder block needs, common to both towers (transformers' CLIPEncoderLayer).</summary>
public sealed record ClipEncoderShape(int Hidden, int Ffn, int Heads, double LayerNormEps, string HiddenAct)
{
    public int HeadDim => Hidden / Heads;
}

/// <summary>CLIP's vision tower (transformers' CLIPVisionConfig; defaults are its defaults, ViT-B/32): square images of
/// <see cref="ImageSize"/> pixels cut into patches of <see cref="PatchSize"/>, a class token, <see cref="Layers"/> pre-LN
/// blocks. <see cref="ProjectionDim"/> is the visual projection's output (CLIPConfig's projection_dim).</summary>
public sealed record ClipVisionConfig(int Hidden = 768, int Ffn = 3072, int Layers = 12, int Heads = 12, int ImageSize = 224,
    int PatchSize = 32, int Channels = 3, double LayerNormEps = 1e-5, string HiddenAct = "quick_gelu", int ProjectionDim = 512)
{
    public int GridSize => ImageSize / PatchSize;
    public int Patches => GridSize * GridSize;

    /// <summary>Tokens through the encoder: the class token and one per patch.</summary>
    public int Positions => Patches + 1;
    public ClipEncoderShape Encoder => new(Hidden, Ffn, Heads, LayerNormEps, HiddenAct);

    /// <summary>Throws a <see cref="CheckpointConfigException"/> naming the first bad key, under <paramref name="section"/>
    /// ("vision_config").</summary>
    public void Validate(string file = "config.json", string section = "vision_config")
    {
        string K(string key) => section.Length == 0 ? key : $"{section}.{key}";
        void Positive(int value, string key)
        {
            if (value < 1) throw new CheckpointConfigException(file, K(key), $"must be at least 1 (got {value})");
        }
        Positive(Hidden, "hidden_size"); Positive(Ffn, "intermediate_size"); Positive(Layers, "num_hidden_layers");
        Positive(Heads, "num_attention_heads"); Positive(ImageSize, "image_size"); Positive(PatchSize, "patch_size");
        Positive(Channels, "num_channels"); Positive(ProjectionDim, "projection_dim");
        if (Hidden % Heads != 0)
            throw new CheckpointConfigException(file, K("hidden_size"), $"({Hidden}) must be a multiple of num_attention_heads ({Heads})");
        if (ImageSize % PatchSize != 0)
            throw new CheckpointConfigException(file, K("image_size"), $"({ImageSize}) must be a multiple of patch_size ({PatchSize})");
        if (!(LayerNormEps > 0)) throw new CheckpointConfigException(file, K("layer_norm_eps"), $"must be positive (got {LayerNormEps})");
        if (!ClipActivation.Supported.Contains(HiddenAct))
            throw new CheckpointConfigException(file, K("hidden_act"), $"is \"{HiddenAct}\"; supported: {string.Join(", ", ClipActivation.Supported)}");
    }

    /// <summary>Reads a vision_config object (CLIPModel's, or LLaVA's, whose model_type is "clip_vision_model"), with
    /// <paramref name="projectionDim"/> from the enclosing config (CLIPConfig's projection_dim; LLaVA has none).</summary>
    public static ClipVisionConfig Read(ClipJsonSection s, int projectionDim = 512)
    {
        var d = new ClipVisionConfig();
        var config = new ClipVisionConfig(
            Hidden: s.Int("hidden_size", d.Hidden), Ffn: s.Int("intermediate_size", d.Ffn), Layers: s.Int("num_hidden_layers", d.Layers),
            Heads: s.Int("num_attention_heads", d.Heads), ImageSize: s.Int("image_size", d.ImageSize), PatchSize: s.Int("patch_size", d.PatchSize),
            Channels: s.Int("num_channels", d.Channels), LayerNormEps: s.Double("layer_norm_eps", d.LayerNormEps),
            HiddenAct: ClipActivation.Check(s, "hidden_act"), ProjectionDim: projectionDim);
        config.Validate(s.File, s.Path);
        return config;
    }

    internal SortedDictionary<string, object?> ToJsonKeys() => new(StringComparer.Ordinal)
    {
        ["hidden_act"] = HiddenAct, ["hidden_size"] = Hidden, ["image_size"] = ImageSize, ["intermediate_size"] = Ffn,
        ["layer_norm_eps"] = LayerNormEps, ["model_type"] = "clip_vision_model", ["num_attention_heads"] = Heads,
        ["num_channels"] = Channels, ["num_hidden_layers"] = Layers, ["patch_size"] = PatchSize, ["projection_dim"] = ProjectionDim,
    };

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"clip vision(layers {Layers}, hidden {Hidden}, heads {Heads}, ffn {Ffn}, image {ImageSize}, patch {PatchSize}, act {HiddenAct})");
}
