namespace Superpipeline.Engine.Models;

/// <summary>Writes a seeded GPT-2 checkpoint in Hugging Face's layout: config.json and model.safetensors (or
/// model-0000i-of-0000N.safetensors plus model.safetensors.index.json), tensors under transformers' names, in the config's
/// torch_dtype (float32 as F32, float16 as F16, bfloat16 as BF16).</summary>
public static class Gpt2Export
{
    /// <summary>Writes the checkpoint of <paramref name="config"/> with weights from <paramref name="seed"/> (the values
    /// <see cref="SeededWeights"/> gives each layer, except that a tied head has no matrix of its own: wte is written once, and
    /// a model read back from the directory uses it in both layers). Tensor names carry <paramref name="prefix"/>
    /// ("transformer." as GPT2LMHeadModel saves them, or "" as the gpt2 files on the hub hold them). Returns the weight files written.</summary>
    public static IReadOnlyList<string> Write(string directory, Gpt2Config config, long seed, int shards = 1, string prefix = Gpt2Names.Transformer)
    {
        config.Validate();
        return SeededCheckpoint.Write(directory, Gpt2.Create("gpt2", config, 1, 1, prefix), config.ToJson(), config.TorchDtype, seed, shards);
    }
}
