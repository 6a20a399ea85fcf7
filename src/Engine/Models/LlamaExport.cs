namespace Superpipeline.Engine.Models;

/// <summary>Writes a seeded Llama checkpoint in Hugging Face's layout: config.json and model.safetensors (or
/// model-0000i-of-0000N.safetensors plus model.safetensors.index.json), tensors under transformers' names, in the config's
/// torch_dtype (float32 as F32, float16 as F16, bfloat16 as BF16).</summary>
public static class LlamaExport
{
    /// <summary>Writes the checkpoint of <paramref name="config"/> with weights from <paramref name="seed"/> (the values
    /// <see cref="SeededWeights"/> gives each layer, except that a tied head has no matrix of its own: the embedding is written
    /// once, and a model read back from the directory uses it in both layers).
    /// Returns the weight files written.</summary>
    public static IReadOnlyList<string> Write(string directory, LlamaConfig config, long seed, int shards = 1)
    {
        config.Validate();
        return SeededCheckpoint.Write(directory, Llama.Create("llama", config, 1, 1), config.ToJson(), config.TorchDtype, seed, shards);
    }
}
