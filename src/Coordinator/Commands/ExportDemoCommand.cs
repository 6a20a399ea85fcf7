using System.CommandLine;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Text;

namespace Superpipeline.Coordinator.Commands;

/// <summary><c>superpipeline export-demo</c>: writes a seeded checkpoint of a family (config.json + safetensors + tokenizer) that
/// <c>run --model DIR</c> reads back: Llama, GPT-2, ViT (config.json + safetensors + preprocessor_config.json, no tokenizer) or CLIP
/// (both towers sized by the same flags, with a tokenizer and a preprocessor_config.json).</summary>
public static class ExportDemoCommand
{
    public static Command Build()
    {
        var family = new Option<string>("--family") { Description = "llama, gpt2, vit, clip or llava", DefaultValueFactory = _ => LlamaConfig.ModelType };
        var outDir = new Option<string>("--out") { Description = "the directory to write config.json and the safetensors into", Required = true };
        var layers = new Option<int>("--layers") { Description = "decoder layers (num_hidden_layers)", DefaultValueFactory = _ => 2 };
        var hidden = new Option<int>("--hidden") { Description = "hidden_size", DefaultValueFactory = _ => 64 };
        var heads = new Option<int>("--heads") { Description = "num_attention_heads", DefaultValueFactory = _ => 4 };
        var kvHeads = new Option<int>("--kv-heads") { Description = "llama: num_key_value_heads (default: --heads)" };
        var ffn = new Option<int>("--ffn") { Description = "intermediate_size (gpt2: n_inner)", DefaultValueFactory = _ => 128 };
        var vocab = new Option<int>("--vocab")
        {
            Description = "vocab_size (from 257 for gpt2 and 260 for llama, a tokenizer is written too)", DefaultValueFactory = _ => 512,
        };
        var positions = new Option<int>("--max-positions") { Description = "max_position_embeddings", DefaultValueFactory = _ => 512 };
        var seed = new Option<long>("--seed") { Description = "seed of the weights", DefaultValueFactory = _ => 1 };
        var shards = new Option<int>("--shards") { Description = "safetensors files to split the tensors over", DefaultValueFactory = _ => 1 };
        var dtype = new Option<string>("--dtype")
        {
            Description = "stored tensor dtype and config.json's torch_dtype: f32, f16 or bf16 (the seeded values rounded to it)",
            DefaultValueFactory = _ => "f32",
        };
        var imageSize = new Option<int>("--image-size")
        {
            Description = "vit, clip and llava: image_size (pixels per edge)", DefaultValueFactory = _ => 32,
        };
        var patchSize = new Option<int>("--patch-size")
        {
            Description = "vit, clip and llava: patch_size, a divisor of --image-size", DefaultValueFactory = _ => 8,
        };
        var labels = new Option<int>("--labels")
        {
            Description = "vit: a classifier head of this many labels (ViTForImageClassification); default none (ViTModel with its pooler)",
        };
        var visionLayers = new Option<int>("--vision-layers")
        {
            Description = "llava: vision tower layers (features from the last but one, vision_feature_layer -2)", DefaultValueFactory = _ => 2,
        };
        Option[] imageOnly = [imageSize, patchSize, labels, visionLayers];
        var export = new Command("export-demo", "Write a seeded checkpoint (Hugging Face layout: config.json + safetensors) for run --model DIR.");
        Option[] all = [family, outDir, layers, hidden, heads, kvHeads, ffn, vocab, positions, seed, shards, dtype, .. imageOnly];
        foreach (var o in all) export.Options.Add(o);
        export.SetAction(r =>
        {
            string chosen = r.GetValue(family)!.Trim().ToLowerInvariant();
            Option[] imageFlags = chosen switch
            {
                VitConfig.ModelType => [imageSize, patchSize, labels],
                ClipConfig.ModelType => [imageSize, patchSize],
                LlavaConfig.ModelType => [imageSize, patchSize, visionLayers],
                _ => [],
            };
            if (imageOnly.Except(imageFlags).FirstOrDefault(o => r.GetResult(o) is { Implicit: false }) is { } vitFlag)
            {
                string families = vitFlag == labels ? "vit" : vitFlag == visionLayers ? "llava" : "vit, clip and llava";
                throw new ArgumentException($"{vitFlag.Name} applies to {families} only");
            }
            (VitConfig, bool) Vit()
            {
                if (new Option[] { kvHeads, vocab, positions }.FirstOrDefault(o => r.GetResult(o) is { Implicit: false }) is { } given)
                    throw new ArgumentException($"{given.Name} applies to llama and gpt2 only: vit has no tokens");
                int size = r.GetValue(imageSize), patch = r.GetValue(patchSize);
                bool classifier = r.GetResult(labels) is { Implicit: false };
                if (size < 1 || patch < 1) throw new ArgumentException($"--image-size and --patch-size must be at least 1; got {size} and {patch}");
                if (size % patch != 0) throw new ArgumentException($"--image-size ({size}) must be a multiple of --patch-size ({patch})");
                if (classifier && r.GetValue(labels) < 1) throw new ArgumentException($"--labels must be at least 1; got {r.GetValue(labels)}");
                return (new VitConfig(Hidden: r.GetValue(hidden), Layers: r.GetValue(layers), Heads: r.GetValue(heads), Intermediate: r.GetValue(ffn),
                    ImageSize: size, PatchSize: patch, Labels: classifier ? r.GetValue(labels) : 2), classifier);
            }
            int kv = r.GetResult(kvHeads) is { Implicit: false } ? r.GetValue(kvHeads) : r.GetValue(heads);
            var files = Export(r.GetValue(family)!, r.GetValue(dtype)!, r.GetValue(outDir)!, r.GetValue(seed), r.GetValue(shards), () => new LlamaConfig(
                Hidden: r.GetValue(hidden), Ffn: r.GetValue(ffn), Layers: r.GetValue(layers), Heads: r.GetValue(heads), KvHeads: kv,
                RmsNormEps: 1e-6, RopeTheta: 10000.0, Vocab: r.GetValue(vocab), MaxPositions: r.GetValue(positions), TieWordEmbeddings: false),
                () => r.GetResult(kvHeads) is { Implicit: false }
                    ? throw new ArgumentException("--kv-heads applies to llama only: gpt2 has no grouped heads")
                    : new Gpt2Config(Hidden: r.GetValue(hidden), Layers: r.GetValue(layers), Heads: r.GetValue(heads),
                        MaxPositions: r.GetValue(positions), Vocab: r.GetValue(vocab), Inner: r.GetValue(ffn)),
                Vit, () => DemoClip(r.GetValue(layers), r.GetValue(hidden), r.GetValue(heads), r.GetValue(ffn), r.GetValue(vocab), r.GetValue(positions),
                    r.GetValue(imageSize), r.GetValue(patchSize), r.GetResult(kvHeads) is { Implicit: false }),
                text => LlavaDemo(text, r.GetValue(imageSize), r.GetValue(patchSize), r.GetValue(visionLayers)));
            Console.WriteLine($"superpipeline export-demo: wrote config.json and {string.Join(", ", files.Select(Path.GetFileName))} to {r.GetValue(outDir)}");
            string name = r.GetValue(family)!.Trim().ToLowerInvariant();
            if (name == VitConfig.ModelType) return 0; // images, no tokenizer
            if (r.GetValue(vocab) < DemoTokenizer.MinimumVocab(name))
                Console.WriteLine($"no tokenizer written: --vocab {r.GetValue(vocab)} is below the {DemoTokenizer.MinimumVocab(name)} ids a {name} " +
                    "tokenizer needs (256 bytes and its special tokens); run takes --input ids.npy, not --prompt");
            return 0;
        });
        return export;
    }

    /// <summary>Writes the checkpoint of <paramref name="family"/>: config.json, the weights and, when the vocabulary has room for
    /// one, the family's tokenizer (<see cref="DemoTokenizer"/>); returns the files besides config.json. One-line refusals name the flag.</summary>
    public static IReadOnlyList<string> Export(string family, string dtype, string directory, long seed, int shards, Func<LlamaConfig> llama,
        Func<Gpt2Config>? gpt2 = null, Func<(VitConfig Config, bool Classifier)>? vit = null, Func<ClipConfig>? clip = null,
        Func<LlamaConfig, LlavaConfig>? llava = null)
    {
        string torchDtype = dtype.Trim().ToLowerInvariant() switch
        {
            "f32" => "float32",
            "f16" => "float16",
            "bf16" => "bfloat16",
            _ => throw new ArgumentException($"--dtype must be f32, f16 or bf16; got '{dtype}'"),
        };
        if (shards < 1) throw new ArgumentException($"--shards must be at least 1; got {shards}");
        string name = family.Trim().ToLowerInvariant();
        if (name == VitConfig.ModelType && vit?.Invoke() is { } v)
            return VitExport.Write(directory, v.Config with { TorchDtype = torchDtype }, seed, v.Classifier, shards);
        var (files, vocab, positions) = name switch
        {
            LlamaConfig.ModelType when llama() with { TorchDtype = torchDtype } is var l =>
                (LlamaExport.Write(directory, l, seed, shards), l.Vocab, l.MaxPositions),
            Gpt2Config.ModelType when gpt2?.Invoke() is { } g =>
                (Gpt2Export.Write(directory, g with { TorchDtype = torchDtype }, seed, shards), g.Vocab, g.MaxPositions),
            ClipConfig.ModelType when clip?.Invoke() is { } c =>
                (ExportClip(directory, c with { TorchDtype = torchDtype }, seed, shards), c.Text.Vocab, c.Text.MaxPositions),
            LlavaConfig.ModelType when llava?.Invoke(llama() with { TorchDtype = torchDtype }) is { } lv =>
                (LlavaExport.Write(directory, lv with { TorchDtype = torchDtype }, seed, shards), lv.Text.Vocab, lv.Text.MaxPositions),
            _ => throw new ArgumentException($"--family must be llama, gpt2, vit, clip or llava; got '{family}'"),
        };
        // The tokenizer beside the weights; a vocabulary too small for one (under 256 bytes + the special tokens) gets none.
        if (vocab < DemoTokenizer.MinimumVocab(name)) return files;
        return [.. files, .. DemoTokenizer.Write(directory, name, vocab, positions).Select(f => Path.Combine(directory, f))];
    }

    /// <summary>A CLIP of the flags' sizes: both towers have --layers blocks of --hidden, --heads and --ffn; the text tower --vocab
    /// ids (the last two its start and end tokens, eos_token_id the last) and --max-positions; images of --image-size in patches of
    /// --patch-size; projection_dim is --hidden.</summary>
    static ClipConfig DemoClip(int layers, int hidden, int heads, int ffn, int vocab, int positions, int imageSize, int patchSize, bool kvHeads)
    {
        if (kvHeads) throw new ArgumentException("--kv-heads applies to llama only: clip has no grouped heads");
        if (imageSize < 1 || patchSize < 1 || imageSize % patchSize != 0)
            throw new ArgumentException($"--image-size ({imageSize}) must be a positive multiple of --patch-size ({patchSize})");
        return new ClipConfig(
            new ClipTextConfig(Hidden: hidden, Ffn: ffn, Layers: layers, Heads: heads, Vocab: vocab, MaxPositions: positions, ProjectionDim: hidden,
                EosTokenId: vocab - 1, BosTokenId: vocab - 2),
            new ClipVisionConfig(Hidden: hidden, Ffn: ffn, Layers: layers, Heads: heads, ImageSize: imageSize, PatchSize: patchSize, ProjectionDim: hidden),
            ProjectionDim: hidden);
    }

    /// <summary>The CLIP checkpoint and its preprocessor_config.json (CLIPImageProcessor for the vision tower's image size).</summary>
    static IReadOnlyList<string> ExportClip(string directory, ClipConfig config, long seed, int shards)
    {
        var files = Clip.Export(directory, config, seed, shards);
        string preprocessor = Path.Combine(directory, "preprocessor_config.json");
        File.WriteAllText(preprocessor, Clip.PreprocessorJson(config.Vision.ImageSize));
        return [.. files, preprocessor];
    }

    /// <summary>The demo LLaVA: the llama flags' decoder, a CLIP vision tower as wide as it (--hidden, --heads, --ffn) of
    /// <paramref name="visionLayers"/> layers over images of <paramref name="imageSize"/> pixels in patches of
    /// <paramref name="patchSize"/>, features from the last layer but one with the class token dropped, and the image token the
    /// vocabulary's last id (where the demo tokenizer puts &lt;image&gt;). Refusals name the flag.</summary>
    public static LlavaConfig LlavaDemo(LlamaConfig text, int imageSize, int patchSize, int visionLayers)
    {
        if (visionLayers < 1) throw new ArgumentException($"--vision-layers must be at least 1; got {visionLayers}");
        if (patchSize < 1) throw new ArgumentException($"--patch-size must be at least 1; got {patchSize}");
        if (imageSize < patchSize || imageSize % patchSize != 0)
            throw new ArgumentException($"--image-size ({imageSize}) must be a positive multiple of --patch-size ({patchSize})");
        var vision = new ClipVisionConfig(Hidden: text.Hidden, Ffn: text.Ffn, Layers: visionLayers, Heads: text.Heads, ImageSize: imageSize,
            PatchSize: patchSize, ProjectionDim: text.Hidden);
        return new LlavaConfig(text, vision, ImageTokenIndex: text.Vocab - 1, ImageSeqLength: vision.Patches, TorchDtype: text.TorchDtype);
    }
}
