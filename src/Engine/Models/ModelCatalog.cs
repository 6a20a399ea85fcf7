using System.Diagnostics;
using Superpipeline.Contracts;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Images;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Onnx;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;
using Superpipeline.Engine.Text;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Models;

/// <summary>The one catalog of models: runnable families by name (<see cref="Create"/>, seeded weights), and the
/// published shapes the simulator costs without weights (<see cref="Shapes"/>, from the models' published configurations:
/// Hugging Face config.json of meta-llama/Llama-2-{7b,13b,70b}-hf and facebook/opt-30b; OPT-175B from the OPT paper, table 1).
/// Unknown names are refused with the list of known ones.</summary>
public static class ModelCatalog
{
    public static IReadOnlyList<string> Names { get; } = ["demo", "gpt"];

    public static LayeredModel Create(ModelSpec spec)
    {
        CheckpointWeights.LoadDType(spec); // a load dtype other than none or float32 is refused before any work
        if (OnnxImport.IsOnnx(spec.Checkpoint)) return OnnxImport.Create(spec);
        if (spec.Checkpoint is not null) return FromCheckpoint(spec);
        if (spec.Input is not null) throw new ArgumentException($"{spec.Input}: token ids are read only for a checkpoint model");
        return spec.Name switch
        {
            "demo" or "gpt" => Gpt2.Create(spec.Name, DemoConfig(spec), spec.Batch, spec.Sequence),
            _ => throw new ArgumentException($"unknown model '{spec.Name}' (known: {string.Join(", ", Names)})"),
        };
    }

    /// <summary>The built-in demo ("demo", "gpt") is a GPT-2 (GPT2LMHeadModel) with seeded weights: the spec's Blocks are n_layer,
    /// Hidden n_embd, Heads n_head, Vocab vocab_size and Sequence n_positions; the MLP is 4 · Hidden wide and the head is tied to
    /// wte, as GPT-2's defaults have them. Its weights are <see cref="Gpt2"/>'s seeded ones (<see cref="SeededWeights"/>), the
    /// values <c>export-demo --family gpt2</c> writes for the same sizes and seed. A bad size is a <see cref="FieldException"/>
    /// naming the spec's field (the CLI names its flag), not a config.json key.</summary>
    public static Gpt2Config DemoConfig(ModelSpec spec)
    {
        static void Positive(int value, string field)
        {
            if (value < 1) throw new FieldException(field, $"must be at least 1 (got {value})");
        }
        Positive(spec.Blocks, FieldException.Blocks); Positive(spec.Hidden, FieldException.Hidden); Positive(spec.Heads, FieldException.Heads);
        Positive(spec.Vocab, FieldException.Vocab); Positive(spec.Sequence, FieldException.Sequence); Positive(spec.Batch, FieldException.Batch);
        if (spec.Hidden % spec.Heads != 0)
            throw new FieldException(FieldException.Hidden, $"({spec.Hidden}) must be a multiple of the heads ({spec.Heads})");
        return new Gpt2Config(Hidden: spec.Hidden, Layers: spec.Blocks, Heads: spec.Heads, MaxPositions: spec.Sequence, Vocab: spec.Vocab);
    }

    /// <summary>The layers' host weights: the checkpoint's tensors for a checkpoint model, in the spec's load dtype (dispose the
    /// source, an <see cref="IDisposable"/>, once the layers have loaded), else seeded.</summary>
    public static IWeightSource Weights(ModelSpec spec) =>
        OnnxImport.IsOnnx(spec.Checkpoint) ? OnnxImport.Weights(spec)
        : spec.Checkpoint is not null ? CheckpointWeights.For(spec) : new SeededWeights(spec.Seed);

    /// <summary>For a checkpoint model, checks from the headers that every layer's tensor is there, F32, F16 or BF16, with its shape (a
    /// <see cref="SafetensorsException"/> naming the file and tensor); nothing for a seeded family.</summary>
    public static void CheckWeights(ModelSpec spec, LayeredModel model)
    {
        if (spec.Checkpoint is null) return;
        if (OnnxImport.IsOnnx(spec.Checkpoint))
        {
            OnnxImport.Weights(spec).Check(model);
            return;
        }
        using var weights = new CheckpointWeights(spec.Checkpoint);
        weights.Check(model);
    }

    /// <summary>The refusals a model spec can give: a field, an argument, a checkpoint's config or tensors.</summary>
    public static bool IsRefusal(Exception e) => e is ArgumentException or CheckpointConfigException or SafetensorsException or OnnxException;

    /// <summary>A spec that runs the checkpoint in <paramref name="directory"/>: its family from config.json (llama, gpt2, vit or clip),
    /// the size fields echoing the config. A vit spec's input is pixels (<see cref="Vit.CheckpointSpec"/>); a clip spec's tower is
    /// chosen by its input (<see cref="Clip"/>). For an ONNX file (<c>PATH.onnx</c>) the family is <paramref name="onnxFamily"/> or
    /// the one whose inputs the graph has (<see cref="OnnxImport.FamilyOf"/>), and the size fields are the imported model's layers
    /// (Blocks) with the others 0: the graph, not a config, sizes it.</summary>
    public static ModelSpec CheckpointSpec(string directory, int batch, int sequence, long seed, string? input = null, string? onnxFamily = null)
    {
        if (OnnxImport.IsOnnx(directory))
        {
            var onnx = new ModelSpec(OnnxImport.FamilyOf(directory, onnxFamily), 0, 0, 0, 0, sequence, batch, seed,
                Path.GetFullPath(directory), input is null ? null : Path.GetFullPath(input));
            var model = OnnxImport.Create(onnx);
            // An input file sets the batch (and a text family's sequence), as a checkpoint's ids do.
            return onnx with { Blocks = model.Layers.Count, Batch = (int)model.InputShape[0] };
        }
        if (onnxFamily is not null)
            throw new ArgumentException($"{directory}: a family is given for ONNX files only; a checkpoint's config.json names its own");
        if (FamilyOf(directory) == VitConfig.ModelType) return Vit.CheckpointSpec(directory, batch, seed, input); // input: pixels
        if (FamilyOf(directory) == ClipConfig.ModelType) return Clip.CheckpointSpec(directory, batch, sequence, seed, input); // a tower, by input
        var (type, layers, hidden, heads, vocab, positions, key) = FamilyOf(directory) switch
        {
            Gpt2Config.ModelType when Gpt2Config.Read(directory) is var g =>
                (Gpt2Config.ModelType, g.Layers, g.Hidden, g.Heads, g.Vocab, g.MaxPositions, "n_positions"),
            LlavaConfig.ModelType when LlavaConfig.Read(directory).Text is var t =>
                (LlavaConfig.ModelType, t.Layers, t.Hidden, t.Heads, t.Vocab, t.MaxPositions, "text_config.max_position_embeddings"),
            _ when LlamaConfig.Read(directory) is var l =>
                (LlamaConfig.ModelType, l.Layers, l.Hidden, l.Heads, l.Vocab, l.MaxPositions, "max_position_embeddings"),
            _ => throw new UnreachableException(),
        };
        if (input is not null && TokenIds(input, vocab, positions, key).Shape is [var b, var s]) (batch, sequence) = ((int)b, (int)s);
        return new ModelSpec(type, layers, hidden, heads, vocab, sequence, batch, seed,
            Path.GetFullPath(directory), input is null ? null : Path.GetFullPath(input));
    }

    /// <summary>The token ids the checkpoint in <paramref name="directory"/> accepts: its vocab_size and the positions it has.</summary>
    public static TokenLimits TokenLimits(string directory) => FamilyOf(directory) switch
    {
        Gpt2Config.ModelType => Gpt2Config.Read(directory) is var g ? new(g.Vocab, g.MaxPositions, "n_positions") : throw new UnreachableException(),
        VitConfig.ModelType => throw new ArgumentException($"{directory}: a vit checkpoint takes images, not text"),
        ClipConfig.ModelType => throw Clip.PromptsRefused(directory),
        LlavaConfig.ModelType => LlavaConfig.Read(directory).Text is var t
            ? new(t.Vocab, t.MaxPositions, "text_config.max_position_embeddings") : throw new UnreachableException(),
        _ => LlamaConfig.Read(directory) is var l ? new(l.Vocab, l.MaxPositions, "max_position_embeddings") : throw new UnreachableException(),
    };

    /// <summary>The image pipeline of the checkpoint in <paramref name="directory"/> when its family takes images (vit; clip's vision
    /// tower), else null.</summary>
    public static ImagePreprocess? ImagePreprocessOf(string directory) => FamilyOf(directory) switch
    {
        VitConfig.ModelType => Vit.Preprocess(directory),
        ClipConfig.ModelType => ImagePreprocess.ForCheckpoint(directory, ClipConfig.Read(directory).Vision.ImageSize),
        _ => null,
    };

    /// <summary>The checkpoint families this build reads, by config.json's <c>model_type</c>.</summary>
    public static IReadOnlyList<string> CheckpointFamilies { get; } =
        [LlamaConfig.ModelType, Gpt2Config.ModelType, VitConfig.ModelType, ClipConfig.ModelType, LlavaConfig.ModelType];

    /// <summary>The family <c>DIR/config.json</c> names; one line naming the file and key when it names none this build reads.</summary>
    static string FamilyOf(string directory)
    {
        using var config = ConfigJson.Open(directory);
        return config.ModelType(CheckpointFamilies);
    }

    static LayeredModel FromCheckpoint(ModelSpec spec)
    {
        string dir = spec.Checkpoint!;
        if (FamilyOf(dir) == VitConfig.ModelType) return Vit.FromCheckpoint(spec);
        if (FamilyOf(dir) == ClipConfig.ModelType) return Clip.FromCheckpoint(spec); // the tower the spec's name or input asks for
        Func<int, int, LayeredModel> create;
        int vocab, positions;
        string key;
        string family = FamilyOf(dir);
        if (family == LlavaConfig.ModelType)
        {
            // The decoder: what a pass over token ids runs (generate --image runs the vision side first: Llava.CreateVision).
            var v = LlavaConfig.Read(dir);
            var names = LlavaNames.In(dir);
            (create, vocab, positions, key) = ((b, t) => Llava.Create(spec.Name, v, b, t, names), v.Text.Vocab, v.Text.MaxPositions,
                "text_config.max_position_embeddings");
        }
        else if (family == Gpt2Config.ModelType)
        {
            var g = Gpt2Config.Read(dir);
            string prefix = Gpt2.PrefixIn(dir);
            (create, vocab, positions, key) = ((b, t) => Gpt2.Create(spec.Name, g, b, t, prefix), g.Vocab, g.MaxPositions, "n_positions");
        }
        else
        {
            var l = LlamaConfig.Read(dir);
            (create, vocab, positions, key) = ((b, t) => Llama.Create(spec.Name, l, b, t), l.Vocab, l.MaxPositions, "max_position_embeddings");
        }
        if (spec.Input is null) return create(spec.Batch, spec.Sequence);
        var ids = TokenIds(spec.Input, vocab, positions, key);
        var seeded = create((int)ids.Shape[0], (int)ids.Shape[1]);
        return new LayeredModel(seeded.Name, seeded.Layers, [.. ids.Shape], ScalarType.Int64, _ => TensorPayloads.ToTensor(ids));
    }

    static TensorPayload TokenIds(string path, int vocab, int maxPositions, string positionsKey)
    {
        if (!File.Exists(path)) throw new ArgumentException($"{path}: not found");
        var (descr, shape, data) = Npy.Read(path);
        if (descr != "<i8") throw new ArgumentException($"{path}: token ids must be int64 (<i8), got '{descr}'");
        if (shape.Length != 2 || shape[0] < 1 || shape[1] < 1)
            throw new ArgumentException($"{path}: token ids must have shape [batch, seq], got [{string.Join(", ", shape)}]");
        if (shape[1] > maxPositions)
            throw new ArgumentException($"{path}: sequence length {shape[1]} exceeds {positionsKey} ({maxPositions})");
        if (data.Length != shape[0] * shape[1] * sizeof(long))
            throw new ArgumentException($"{path}: data is {data.Length} bytes, not [{shape[0]}, {shape[1]}] int64");
        for (int i = 0; i < data.Length; i += sizeof(long))
        {
            long id = BitConverter.ToInt64(data, i);
            if (id < 0 || id >= vocab)
                throw new ArgumentException($"{path}: token id {id} at position {i / sizeof(long)} is outside the vocabulary [0, {vocab})");
        }
        return new TensorPayload("Int64", [.. shape], [.. data]);
    }

    public static IReadOnlyList<TransformerShape> Shapes { get; } =
    [
        new("llama2-7b", DecoderFamily.Llama, Layers: 32, Hidden: 4096, Heads: 32, KvHeads: 32, Ffn: 11008, Vocab: 32000, MaxPositions: 4096),
        new("llama2-13b", DecoderFamily.Llama, Layers: 40, Hidden: 5120, Heads: 40, KvHeads: 40, Ffn: 13824, Vocab: 32000, MaxPositions: 4096),
        new("llama2-70b", DecoderFamily.Llama, Layers: 80, Hidden: 8192, Heads: 64, KvHeads: 8, Ffn: 28672, Vocab: 32000, MaxPositions: 4096),
        new("opt-30b", DecoderFamily.Opt, Layers: 48, Hidden: 7168, Heads: 56, KvHeads: 56, Ffn: 28672, Vocab: 50272, MaxPositions: 2048),
        new("opt-175b", DecoderFamily.Opt, Layers: 96, Hidden: 12288, Heads: 96, KvHeads: 96, Ffn: 49152, Vocab: 50272, MaxPositions: 2048),
    ];

    /// <summary>Published parameter counts the shapes should reproduce (model cards / papers).</summary>
    public static IReadOnlyDictionary<string, double> PublishedParameters { get; } = new Dictionary<string, double>
    {
        ["llama2-7b"] = 6.74e9, ["llama2-13b"] = 13.0e9, ["llama2-70b"] = 69.0e9, ["opt-30b"] = 30.0e9, ["opt-175b"] = 175.0e9,
    };

    public static TransformerShape? FindShape(string name) =>
        Shapes.FirstOrDefault(s => string.Equals(s.Name, name.Trim(), StringComparison.OrdinalIgnoreCase));
}
