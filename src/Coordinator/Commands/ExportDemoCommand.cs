using System.CommandLine;
using Superpipeline.Engine.Models;

namespace Superpipeline.Coordinator.Commands;

/// <summary><c>superpipeline export-demo</c>: writes a seeded checkpoint of a family (config.json + safetensors) that
/// <c>run --model DIR</c> reads back: Llama or GPT-2.</summary>
public static class ExportDemoCommand
{
    public static Command Build()
    {
        var family = new Option<string>("--family") { Description = "llama or gpt2", DefaultValueFactory = _ => LlamaConfig.ModelType };
        var outDir = new Option<string>("--out") { Description = "the directory to write config.json and the safetensors into", Required = true };
        var layers = new Option<int>("--layers") { Description = "decoder layers (num_hidden_layers)", DefaultValueFactory = _ => 2 };
        var hidden = new Option<int>("--hidden") { Description = "hidden_size", DefaultValueFactory = _ => 64 };
        var heads = new Option<int>("--heads") { Description = "num_attention_heads", DefaultValueFactory = _ => 4 };
        var kvHeads = new Option<int>("--kv-heads") { Description = "llama: num_key_value_heads (default: --heads)" };
        var ffn = new Option<int>("--ffn") { Description = "intermediate_size (gpt2: n_inner)", DefaultValueFactory = _ => 128 };
        var vocab = new Option<int>("--vocab") { Description = "vocab_size", DefaultValueFactory = _ => 256 };
        var positions = new Option<int>("--max-positions") { Description = "max_position_embeddings", DefaultValueFactory = _ => 512 };
        var seed = new Option<long>("--seed") { Description = "seed of the weights", DefaultValueFactory = _ => 1 };
        var shards = new Option<int>("--shards") { Description = "safetensors files to split the tensors over", DefaultValueFactory = _ => 1 };
        var dtype = new Option<string>("--dtype")
        {
            Description = "stored tensor dtype and config.json's torch_dtype: f32, f16 or bf16 (the seeded values rounded to it)",
            DefaultValueFactory = _ => "f32",
        };
        var export = new Command("export-demo", "Write a seeded checkpoint (Hugging Face layout: config.json + safetensors) for run --model DIR.");
        foreach (var o in new Option[] { family, outDir, layers, hidden, heads, kvHeads, ffn, vocab, positions, seed, shards, dtype }) export.Options.Add(o);
        export.SetAction(r =>
        {
            int kv = r.GetResult(kvHeads) is { Implicit: false } ? r.GetValue(kvHeads) : r.GetValue(heads);
            var files = Export(r.GetValue(family)!, r.GetValue(dtype)!, r.GetValue(outDir)!, r.GetValue(seed), r.GetValue(shards), () => new LlamaConfig(
                Hidden: r.GetValue(hidden), Ffn: r.GetValue(ffn), Layers: r.GetValue(layers), Heads: r.GetValue(heads), KvHeads: kv,
                RmsNormEps: 1e-6, RopeTheta: 10000.0, Vocab: r.GetValue(vocab), MaxPositions: r.GetValue(positions), TieWordEmbeddings: false),
                () => r.GetResult(kvHeads) is { Implicit: false }
                    ? throw new ArgumentException("--kv-heads applies to llama only: gpt2 has no grouped heads")
                    : new Gpt2Config(Hidden: r.GetValue(hidden), Layers: r.GetValue(layers), Heads: r.GetValue(heads),
                        MaxPositions: r.GetValue(positions), Vocab: r.GetValue(vocab), Inner: r.GetValue(ffn)));
            Console.WriteLine($"superpipeline export-demo: wrote config.json and {string.Join(", ", files.Select(Path.GetFileName))} to {r.GetValue(outDir)}");
            return 0;
        });
        return export;
    }

    /// <summary>Writes the checkpoint of <paramref name="family"/>; returns the weight files. One-line refusals name the flag.</summary>
    public static IReadOnlyList<string> Export(string family, string dtype, string directory, long seed, int shards, Func<LlamaConfig> llama,
        Func<Gpt2Config>? gpt2 = null)
    {
        string torchDtype = dtype.Trim().ToLowerInvariant() switch
        {
            "f32" => "float32",
            "f16" => "float16",
            "bf16" => "bfloat16",
            _ => throw new ArgumentException($"--dtype must be f32, f16 or bf16; got '{dtype}'"),
        };
        if (shards < 1) throw new ArgumentException($"--shards must be at least 1; got {shards}");
        return family.Trim().ToLowerInvariant() switch
        {
            LlamaConfig.ModelType => LlamaExport.Write(directory, llama() with { TorchDtype = torchDtype }, seed, shards),
            Gpt2Config.ModelType when gpt2 is not null => Gpt2Export.Write(directory, gpt2() with { TorchDtype = torchDtype }, seed, shards),
            _ => throw new ArgumentException($"--family must be llama or gpt2; got '{family}'"),
        };
    }
}
