using System.Text;
using System.Text.Json;
using Superpipeline.Contracts;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Images;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Text;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Models;

/// <summary>The shape of a CLIP checkpoint (transformers' CLIPConfig, model_type "clip"): the two towers' configs, the
/// projections' width and the initial logit scale. Absent keys take transformers' defaults (ViT-B/32).</summary>
public sealed record ClipConfig(ClipTextConfig Text, ClipVisionConfig Vision, int ProjectionDim = 512, double LogitScaleInit = 2.6592,
    string TorchDtype = "float32")
{
    public const string ModelType = "clip";

    public void Validate(string file = "config.json")
    {
        if (ProjectionDim < 1) throw new CheckpointConfigException(file, "projection_dim", $"must be at least 1 (got {ProjectionDim})");
        if (Text.ProjectionDim != ProjectionDim || Vision.ProjectionDim != ProjectionDim)
            throw new CheckpointConfigException(file, "projection_dim", $"({ProjectionDim}) must be the towers' projection width");
        Text.Validate(file);
        Vision.Validate(file);
    }

    /// <summary>Reads <c>DIR/config.json</c> (or the file itself): model_type "clip", text_config and vision_config nested, both
    /// towers' projection_dim the top-level one (CLIPModel builds both projections with it).</summary>
    public static ClipConfig Read(string path)
    {
        using var c = ConfigJson.Open(path);
        c.ModelType([ModelType]);
        var root = new ClipJsonSection(c.File, c.Root, "");
        int projection = root.Int("projection_dim", 512);
        if (projection < 1) throw new CheckpointConfigException(c.File, "projection_dim", $"must be at least 1 (got {projection})");
        var config = new ClipConfig(
            Text: ClipTextConfig.Read(root.Section("text_config"), projection),
            Vision: ClipVisionConfig.Read(root.Section("vision_config"), projection),
            ProjectionDim: projection,
            LogitScaleInit: root.Double("logit_scale_init_value", 2.6592),
            TorchDtype: c.String("torch_dtype") ?? c.String("dtype") ?? "float32");
        config.Validate(c.File);
        return config;
    }

    /// <summary>config.json as save_pretrained writes it for CLIPModel (keys sorted, indented by 2; the towers' keys nested).</summary>
    public string ToJson()
    {
        var keys = new SortedDictionary<string, object?>(StringComparer.Ordinal)
        {
            ["architectures"] = new[] { "CLIPModel" }, ["initializer_factor"] = 1.0, ["logit_scale_init_value"] = LogitScaleInit,
            ["model_type"] = ModelType, ["projection_dim"] = ProjectionDim, ["text_config"] = Text.ToJsonKeys(), ["torch_dtype"] = TorchDtype,
            ["vision_config"] = Vision.ToJsonKeys(),
        };
        return JsonSerializer.Serialize(keys, new JsonSerializerOptions { WriteIndented = true, IndentSize = 2 }) + "\n";
    }

    public override string ToString() => $"clip({Vision}; {Text}; projection {ProjectionDim})";
}

/// <summary>The CLIP family (transformers' CLIPModel) as two models over one checkpoint, each a flat list of layers that streams
/// under any (k, k'): the vision tower (<see cref="ClipVision"/>, image_embeds) and the text tower (<see cref="ClipText"/>,
/// text_embeds). Which one a <see cref="ModelSpec"/> asks for: its name <see cref="TextTower"/> or <see cref="VisionTower"/>;
/// any other name (the family's, "clip") takes the tower its input is for: int64 token ids the text tower, float32 pixel
/// values (or none: seeded pixels) the vision tower. <see cref="Similarity"/> is CLIPModel's forward on the two outputs.</summary>
public static class Clip
{
    public const string TextTower = "clip-text", VisionTower = "clip-vision";
    public const string LogitScale = "logit_scale";

    /// <summary>Whether <paramref name="spec"/> asks for the text tower (see the class summary).</summary>
    public static bool IsText(ModelSpec spec) => spec.Name switch
    {
        TextTower => true,
        VisionTower => false,
        _ => spec.Input is not null && Read(spec.Input).Descr == "<i8",
    };

    /// <summary>The tower <paramref name="spec"/> asks for over the checkpoint in its directory: the spec's input when it names
    /// one (checked against the tower), else seeded input of the spec's batch (and sequence, for text).</summary>
    public static LayeredModel FromCheckpoint(ModelSpec spec)
    {
        string dir = spec.Checkpoint ?? throw new ArgumentException("a CLIP tower is read from a checkpoint");
        var c = ClipConfig.Read(dir);
        bool text = IsText(spec);
        string name = text ? TextTower : VisionTower;
        if (spec.Input is null)
            return text ? ClipText.Create(name, c.Text, spec.Batch, spec.Sequence) : ClipVision.Create(name, c.Vision, spec.Batch);
        var input = text ? TextInput(spec.Input, c.Text) : PixelInput(spec.Input, c.Vision);
        var model = text ? ClipText.Create(name, c.Text, (int)input.Shape[0], (int)input.Shape[1], masked: input.Shape.Length == 3)
            : ClipVision.Create(name, c.Vision, (int)input.Shape[0]);
        return new LayeredModel(model.Name, model.Layers, [.. input.Shape], model.InputDType, _ => TensorPayloads.ToTensor(input));
    }

    /// <summary>A spec for the checkpoint in <paramref name="directory"/>: the text tower when <paramref name="input"/> holds int64
    /// token ids, else the vision tower; its size fields echo the tower's config (Vocab is 0 for vision).</summary>
    public static ModelSpec CheckpointSpec(string directory, int batch, int sequence, long seed, string? input = null)
    {
        var c = ClipConfig.Read(directory);
        bool text = input is not null && Read(input).Descr == "<i8";
        if (input is not null)
        {
            var shape = text ? TextInput(input, c.Text).Shape : PixelInput(input, c.Vision).Shape;
            (batch, sequence) = ((int)shape[0], text ? (int)shape[1] : c.Vision.Positions);
        }
        return text
            ? new ModelSpec(TextTower, c.Text.Layers, c.Text.Hidden, c.Text.Heads, c.Text.Vocab, sequence, batch, seed, Path.GetFullPath(directory),
                input is null ? null : Path.GetFullPath(input))
            : new ModelSpec(VisionTower, c.Vision.Layers, c.Vision.Hidden, c.Vision.Heads, 0, c.Vision.Positions, batch, seed,
                Path.GetFullPath(directory), input is null ? null : Path.GetFullPath(input));
    }

    /// <summary>Prompts tokenized as a decoder's (plain ids, no mask) are refused for a CLIP checkpoint: its text tower needs each text
    /// wrapped in its start and end tokens (the end is where it pools) and padded with a mask, which <see cref="Tokenize"/> does.</summary>
    public static ArgumentException PromptsRefused(string directory) => new($"{directory}: a CLIP text tower takes texts wrapped in " +
        "<|startoftext|> and <|endoftext|> with a padding mask, not prompt ids; the similarity command tokenizes texts for it, or give ids " +
        "with the mask, int64 [batch, seq, 2], as input");

    /// <summary>int64 [B, T] ids or [B, T, 2] ids with the attention mask from <paramref name="path"/>, checked: ids in the
    /// vocabulary, T within the positions, mask values 0 or 1. One-line refusals naming the file and the config key.</summary>
    public static TensorPayload TextInput(string path, ClipTextConfig c)
    {
        var (descr, shape, data) = Read(path);
        if (descr != "<i8") throw new ArgumentException($"{path}: token ids must be int64 (<i8), got '{descr}'");
        if (!(shape.Length == 2 || shape.Length == 3 && shape[2] == 2) || shape[0] < 1 || shape[1] < 1)
            throw new ArgumentException($"{path}: token ids must have shape [batch, seq] or [batch, seq, 2] (ids, mask), got {ClipCommon.Shape(shape)}");
        if (shape[1] > c.MaxPositions)
            throw new ArgumentException($"{path}: sequence length {shape[1]} exceeds text_config.max_position_embeddings ({c.MaxPositions})");
        if (data.Length != shape.Aggregate(1L, (a, b) => a * b) * sizeof(long))
            throw new ArgumentException($"{path}: data is {data.Length} bytes, not {ClipCommon.Shape(shape)} int64");
        int stride = shape.Length == 3 ? 2 : 1;
        for (int i = 0; i < data.Length / sizeof(long); i += stride)
        {
            long id = BitConverter.ToInt64(data, i * sizeof(long));
            if (id < 0 || id >= c.Vocab)
                throw new ArgumentException(
                    $"{path}: token id {id} at position {i / stride} is outside the vocabulary [0, {c.Vocab}) (text_config.vocab_size)");
            if (stride == 2 && BitConverter.ToInt64(data, (i + 1) * sizeof(long)) is var m and not 0 and not 1)
                throw new ArgumentException($"{path}: attention mask value {m} at position {i / stride} is not 0 or 1");
        }
        return new TensorPayload("Int64", [.. shape], [.. data]);
    }

    /// <summary>float32 pixel values [B, num_channels, image_size, image_size] from <paramref name="path"/>, checked.</summary>
    public static TensorPayload PixelInput(string path, ClipVisionConfig c)
    {
        var (descr, shape, data) = Read(path);
        if (descr != "<f4") throw new ArgumentException($"{path}: pixel values must be float32 (<f4), got '{descr}'");
        if (shape.Length != 4 || shape[0] < 1 || shape[1] != c.Channels || shape[2] != c.ImageSize || shape[3] != c.ImageSize)
            throw new ArgumentException($"{path}: pixel values must have shape [batch, {c.Channels}, {c.ImageSize}, {c.ImageSize}] " +
                $"(vision_config.num_channels, image_size), got {ClipCommon.Shape(shape)}");
        if (data.Length != shape.Aggregate(1L, (a, b) => a * b) * sizeof(float))
            throw new ArgumentException($"{path}: data is {data.Length} bytes, not {ClipCommon.Shape(shape)} float32");
        return new TensorPayload("Float32", [.. shape], [.. data]);
    }

    static (string Descr, long[] Shape, byte[] Data) Read(string path) =>
        File.Exists(path) ? Npy.Read(path) : throw new ArgumentException($"{path}: not found");

    /// <summary>The ids of <paramref name="texts"/> as CLIPTokenizer gives them with padding="longest": &lt;|startoftext|&gt;, the
    /// text's tokens, &lt;|endoftext|&gt;, then the pad token up to the longest row, mask 0 there. Start and end are the tokenizer's
    /// bos and eos tokens (else config.json's bos_token_id and eos_token_id, and the vocabulary's last id when eos_token_id is the
    /// legacy 2); padding is the tokenizer's pad token (CLIP's is &lt;|endoftext|&gt;), else pad_token_id. Returns int64 [B, T, 2]
    /// (id, mask). Refused in one line: no text, a text longer than the positions, an id outside the vocabulary.</summary>
    public static TensorPayload Tokenize(CheckpointTokenizer tokenizer, IReadOnlyList<string> texts, ClipTextConfig c)
    {
        if (texts.Count == 0) throw new ArgumentException("no text given");
        int bos = tokenizer.BosId ?? c.BosTokenId;
        int eos = tokenizer.EosId ?? (c.PoolsAtLargestId ? c.Vocab - 1 : c.EosTokenId);
        int pad = tokenizer.PadId ?? c.PadTokenId;
        var rows = new List<List<int>>();
        foreach (var (text, row) in texts.Select((t, i) => (t, i + 1)))
        {
            var body = tokenizer.Encode(text).ToList();
            if (tokenizer.AddBos && body.Count > 0 && body[0] == bos) body.RemoveAt(0);
            List<int> ids = [bos, .. body, eos];
            if (ids.Count > c.MaxPositions)
                throw new ArgumentException($"text {row} is {ids.Count} tokens with its start and end tokens, more than the {c.MaxPositions} " +
                    "positions of the text tower (text_config.max_position_embeddings)");
            if (ids.FirstOrDefault(id => id < 0 || id >= c.Vocab, -1) is var bad and >= 0)
                throw new ArgumentException($"text {row}: token id {bad} from {Path.GetFileName(tokenizer.File)} is outside the vocabulary " +
                    $"[0, {c.Vocab}) (text_config.vocab_size)");
            rows.Add(ids);
        }
        int t = rows.Max(r => r.Count);
        var bytes = new byte[rows.Count * t * 2 * sizeof(long)];
        for (int b = 0; b < rows.Count; b++)
            for (int i = 0; i < t; i++)
            {
                int at = ((b * t) + i) * 2 * sizeof(long);
                BitConverter.TryWriteBytes(bytes.AsSpan(at), (long)(i < rows[b].Count ? rows[b][i] : pad));
                BitConverter.TryWriteBytes(bytes.AsSpan(at + sizeof(long)), i < rows[b].Count ? 1L : 0L);
            }
        return new TensorPayload("Int64", [rows.Count, t, 2], [.. bytes]);
    }

    /// <summary>The checkpoint's logit_scale (a scalar, the log of the temperature's inverse), as float32.</summary>
    public static float ReadLogitScale(string directory)
    {
        using var ckpt = SafetensorsCheckpoint.Open(directory);
        if (!ckpt.Names.Contains(LogitScale)) throw new SafetensorsException(directory, LogitScale, "is not in the checkpoint");
        using var t = ckpt.Read(LogitScale);
        if (t.numel() != 1) throw new SafetensorsException(ckpt.FileOf(LogitScale), LogitScale, $"has {t.numel()} elements, not one");
        using var f = t.to_type(ScalarType.Float32);
        return f.reshape(-1)[0].item<float>();
    }

    /// <summary>CLIPModel's forward on the towers' outputs: both embeddings divided by their L2 norms, logits_per_text =
    /// exp(logit_scale) · text · imageᵀ, logits_per_image its transpose [images, texts]; the softmax over texts per image
    /// beside it (what CLIP's zero-shot classification reads). Host float32 tensors in, new tensors out.</summary>
    public static (Tensor LogitsPerImage, Tensor Probabilities) Similarity(Tensor imageEmbeds, Tensor textEmbeds, float logitScale)
    {
        using var scope = NewDisposeScope();
        var image = imageEmbeds / imageEmbeds.norm(-1, true, 2);
        var text = textEmbeds / textEmbeds.norm(-1, true, 2);
        var scale = tensor(logitScale).exp();
        var perText = text.matmul(image.t()) * scale;
        var perImage = perText.t().contiguous();
        var probs = perImage.softmax(1);
        return (perImage.MoveToOuterDisposeScope(), probs.MoveToOuterDisposeScope());
    }

    /// <summary>Writes a seeded CLIPModel checkpoint in Hugging Face's layout (config.json and safetensors in the config's torch_dtype):
    /// the vision tower's layers seeded from <paramref name="seed"/>, the text tower's from seed + 1 (each tower's layers are
    /// indexed from 0), and logit_scale = logit_scale_init_value, as CLIPModel initialises it. Returns the weight files written.</summary>
    public static IReadOnlyList<string> Export(string directory, ClipConfig config, long seed, int shards = 1)
    {
        config.Validate();
        if (!SeededCheckpoint.TorchDtypes.TryGetValue(config.TorchDtype, out var stored))
            throw new ArgumentException(
                $"torch_dtype \"{config.TorchDtype}\" is not written (written: {string.Join(", ", SeededCheckpoint.TorchDtypes.Keys)})");
        var tensors = new List<KeyValuePair<string, Tensor>>();
        try
        {
            void Add(string name, Tensor t)
            {
                if (t.dtype == stored) tensors.Add(new(name, t));
                else
                {
                    using (t) tensors.Add(new(name, t.to_type(stored)));
                }
            }
            foreach (var (model, source) in new[]
            {
                (ClipText.Create(TextTower, config.Text, 1, 1), new SeededWeights(seed + 1)),
                (ClipVision.Create(VisionTower, config.Vision, 1), new SeededWeights(seed)),
            })
                foreach (var layer in model.Layers)
                {
                    var weights = source.Load(layer);
                    foreach (var spec in layer.Parameters) Add(spec.Name, weights[spec.Name]);
                }
            Add(LogitScale, tensor((float)config.LogitScaleInit));
            Directory.CreateDirectory(directory);
            var files = SafetensorsWriter.WriteCheckpoint(directory, tensors, shards);
            File.WriteAllText(Path.Combine(directory, "config.json"), config.ToJson(), new UTF8Encoding(false));
            return files;
        }
        finally
        {
            foreach (var kv in tensors) kv.Value.Dispose();
        }
    }

    /// <summary>preprocessor_config.json for CLIPImageProcessor at <paramref name="imageSize"/> (<see cref="ImagePreprocess.Clip"/>:
    /// shortest edge to the size, bicubic, centre crop, 1/255, OpenAI's mean and std).</summary>
    public static string PreprocessorJson(int imageSize) => ImagePreprocess.Clip(imageSize).ToJson("CLIPImageProcessor") + "\n";
}
