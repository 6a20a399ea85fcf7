using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Superpipeline.Engine.Models;

/// <summary>The shape of a LLaVA checkpoint (transformers' LlavaConfig, model_type "llava"), as read from config.json: a CLIP
/// vision tower (<c>vision_config</c>, model_type "clip_vision_model"), a projector and a Llama decoder (<c>text_config</c>,
/// model_type "llama"). Keys a section leaves out take transformers' defaults (save_pretrained writes sub-configs as their
/// differences from the defaults, so the hub's llava-hf configs name few keys).</summary>
/// <param name="ImageTokenIndex">The id of <c>&lt;image&gt;</c> (image_token_index, or image_token_id as newer files call it).</param>
/// <param name="VisionFeatureLayer">The vision tower's hidden state the features are taken from (negative: from the end; -2 is
/// the output of the last block but one).</param>
/// <param name="SelectStrategy">"default": the class token is dropped; "full": it is kept.</param>
/// <param name="ImageSeqLength">Tokens one image takes in the prompt (the processor expands each <c>&lt;image&gt;</c> into
/// this many); it must equal the features the tower gives (<see cref="ImageTokens"/>).</param>
public sealed record LlavaConfig(LlamaConfig Text, ClipVisionConfig Vision, int ImageTokenIndex = 32000, int VisionFeatureLayer = -2,
    string SelectStrategy = "default", string ProjectorAct = "gelu", bool ProjectorBias = true, int? ImageSeqLength = null,
    string TorchDtype = "float32")
{
    public const string ModelType = "llava";

    /// <summary>The select strategies transformers knows.</summary>
    public static IReadOnlyList<string> Strategies { get; } = ["default", "full"];

    /// <summary>The float32 prefill input carries token ids in a float channel: exact below 2^24.</summary>
    public const int MaxVocab = 1 << 24;

    /// <summary>Encoder blocks the features pass through: hidden_states[VisionFeatureLayer] is the output of this many blocks
    /// (hidden_states[0] is the embeddings after pre_layrnorm).</summary>
    public int VisionBlocks => VisionFeatureLayer < 0 ? Vision.Layers + 1 + VisionFeatureLayer : VisionFeatureLayer;

    /// <summary>Feature rows one image gives: one per patch, and the class token with the "full" strategy.</summary>
    public int ImageTokens => Vision.Patches + (SelectStrategy == "full" ? 1 : 0);

    /// <summary>Throws a <see cref="CheckpointConfigException"/> naming the first bad key.</summary>
    public void Validate(string file = "config.json")
    {
        Text.Validate(file);
        Vision.Validate(file);
        if (Text.Vocab > MaxVocab)
            throw new CheckpointConfigException(file, "text_config.vocab_size", $"({Text.Vocab}) exceeds {MaxVocab}: ids are carried in float32");
        if (ImageTokenIndex < 0 || ImageTokenIndex >= Text.Vocab)
            throw new CheckpointConfigException(file, "image_token_index", $"({ImageTokenIndex}) is outside the vocabulary [0, {Text.Vocab})");
        if (VisionFeatureLayer < -(Vision.Layers + 1) || VisionFeatureLayer > Vision.Layers)
            throw new CheckpointConfigException(file, "vision_feature_layer",
                $"({VisionFeatureLayer}) is outside [{-(Vision.Layers + 1)}, {Vision.Layers}] for {Vision.Layers} vision layers");
        if (!Strategies.Contains(SelectStrategy))
            throw new CheckpointConfigException(file, "vision_feature_select_strategy", $"is \"{SelectStrategy}\"; only \"default\" or \"full\"");
        if (ProjectorAct != "gelu")
            throw new CheckpointConfigException(file, "projector_hidden_act", $"is \"{ProjectorAct}\"; only \"gelu\" is supported");
        if (ImageSeqLength is { } n && n != ImageTokens)
            throw new CheckpointConfigException(file, "image_seq_length",
                $"({n}) is not the {ImageTokens} features an image of {Vision.ImageSize} pixels gives ({Vision.Patches} patches"
                + (SelectStrategy == "full" ? " and the class token)" : ", the class token dropped)"));
    }

    /// <summary>LlamaConfig's defaults, for the keys text_config leaves out.</summary>
    static readonly JsonObject TextDefaults = new()
    {
        ["model_type"] = LlamaConfig.ModelType, ["vocab_size"] = 32000, ["hidden_size"] = 4096, ["intermediate_size"] = 11008,
        ["num_hidden_layers"] = 32, ["num_attention_heads"] = 32, ["max_position_embeddings"] = 2048, ["rms_norm_eps"] = 1e-6,
    };

    /// <summary>Reads <c>DIR/config.json</c> (or the file itself). Missing, mistyped or unsupported keys are one-line errors
    /// naming the file and the key ("text_config.hidden_size", "vision_feature_layer").</summary>
    public static LlavaConfig Read(string path)
    {
        using var c = ConfigJson.Open(path);
        string file = c.File;
        c.ModelType([ModelType]);
        var root = new ClipJsonSection(file, c.Root, "");

        var text = TextDefaults.DeepClone().AsObject();
        if (c.Root.TryGetProperty("text_config", out var t) && t.ValueKind != JsonValueKind.Null)
        {
            if (t.ValueKind != JsonValueKind.Object) throw new CheckpointConfigException(file, "text_config", $"is {t.GetRawText()}, not an object");
            foreach (var p in t.EnumerateObject()) text[p.Name] = JsonNode.Parse(p.Value.GetRawText());
        }
        if (text["model_type"]?.GetValueKind() != JsonValueKind.String || (string?)text["model_type"] != LlamaConfig.ModelType)
            throw new CheckpointConfigException(file, "text_config.model_type",
                $"is {text["model_type"]?.ToJsonString() ?? "null"}; only a \"llama\" decoder is supported");
        LlamaConfig textConfig;
        using (var section = ConfigJson.FromText($"{file} (text_config)", text.ToJsonString())) textConfig = LlamaConfig.Read(section);

        var vision = root.Section("vision_config");
        string visionType = vision.String("model_type", "clip_vision_model");
        if (visionType != "clip_vision_model")
            throw new CheckpointConfigException(file, "vision_config.model_type", $"is \"{visionType}\"; only \"clip_vision_model\" is supported");
        // LlavaConfig's default tower (CLIP ViT-L/14 at 336 pixels) when vision_config is absent; CLIPVisionConfig's defaults for
        // the keys a present one leaves out.
        var visionConfig = c.Has("vision_config")
            ? ClipVisionConfig.Read(vision, vision.Int("projection_dim", 512))
            : new ClipVisionConfig(Hidden: 1024, Ffn: 4096, Layers: 24, Heads: 16, ImageSize: 336, PatchSize: 14, ProjectionDim: 768);

        if (c.Root.TryGetProperty("vision_feature_layer", out var layer) && layer.ValueKind == JsonValueKind.Array)
            throw new CheckpointConfigException(file, "vision_feature_layer", $"is {layer.GetRawText()}; only one layer is supported");
        var config = new LlavaConfig(textConfig, visionConfig,
            ImageTokenIndex: c.Int("image_token_index", c.Has("image_token_id") ? c.Int("image_token_id") : 32000),
            VisionFeatureLayer: c.Int("vision_feature_layer", -2),
            SelectStrategy: c.String("vision_feature_select_strategy") ?? "default",
            ProjectorAct: c.String("projector_hidden_act") ?? "gelu",
            ProjectorBias: c.Bool("multimodal_projector_bias", true),
            ImageSeqLength: c.Has("image_seq_length") ? c.Int("image_seq_length") : null,
            TorchDtype: c.String("torch_dtype") ?? c.String("dtype") ?? textConfig.TorchDtype);
        if (!config.ProjectorBias)
            throw new CheckpointConfigException(file, "multimodal_projector_bias", "is false; only a projector with biases is supported");
        config.Validate(file);
        return config;
    }

    /// <summary>config.json as transformers' save_pretrained writes it for LlavaForConditionalGeneration (keys sorted, indented by 2;
    /// the sub-configs whole).</summary>
    public string ToJson()
    {
        var text = JsonNode.Parse(Text.ToJson())!.AsObject();
        var keys = new SortedDictionary<string, object?>(StringComparer.Ordinal)
        {
            ["architectures"] = new[] { "LlavaForConditionalGeneration" }, ["ignore_index"] = -100, ["image_seq_length"] = ImageSeqLength ?? ImageTokens,
            ["image_token_index"] = ImageTokenIndex, ["model_type"] = ModelType, ["multimodal_projector_bias"] = ProjectorBias,
            ["projector_hidden_act"] = ProjectorAct, ["text_config"] = text, ["tie_word_embeddings"] = Text.TieWordEmbeddings,
            ["torch_dtype"] = TorchDtype, ["vision_config"] = Vision.ToJsonKeys(), ["vision_feature_layer"] = VisionFeatureLayer,
            ["vision_feature_select_strategy"] = SelectStrategy,
        };
        return JsonSerializer.Serialize(keys, new JsonSerializerOptions { WriteIndented = true, IndentSize = 2 }) + "\n";
    }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"llava({Vision}, feature layer {VisionFeatureLayer} ({SelectStrategy}), {ImageTokens} image tokens, id {ImageTokenIndex}; {Text})");
}
