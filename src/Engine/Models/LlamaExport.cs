using System.Text;
using Superpipeline.Engine.Checkpoints;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Models;

/// <summary>Writes a seeded Llama checkpoint in Hugging Face's layout: config.json and model.safetensors (or
/// model-0000i-of-0000N.safetensors plus model.safetensors.index.json), tensors under transformers' names, F32.</summary>
public static class LlamaExport
{
    /// <summary>Writes the checkpoint of <paramref name="config"/> with weights from <paramref name="seed"/> (the values
    /// <see cref="SeededWeights"/> gives each layer, except that a tied head has no matrix of its own: the embedding is written
    /// once, and a model read back from the directory uses it in both layers).
    /// Returns the weight files written.</summary>
    public static IReadOnlyList<string> Write(string directory, LlamaConfig config, long seed, int shards = 1)
    {
        config.Validate();
        if (config.TorchDtype != "float32")
            throw new ArgumentException($"torch_dtype \"{config.TorchDtype}\": only float32 checkpoints are written for now");
        var model = Llama.Create("llama", config, 1, 1);
        var source = new SeededWeights(seed);
        var tensors = new List<KeyValuePair<string, Tensor>>();
        try
        {
            foreach (var layer in model.Layers)
            {
                var weights = source.Load(layer);
                foreach (var spec in layer.Parameters)
                {
                    if (tensors.Any(kv => kv.Key == spec.Name)) weights[spec.Name].Dispose(); // the tied head's copy
                    else tensors.Add(new(spec.Name, weights[spec.Name]));
                }
            }
            System.IO.Directory.CreateDirectory(directory);
            var files = SafetensorsWriter.WriteCheckpoint(directory, tensors, shards);
            File.WriteAllText(Path.Combine(directory, "config.json"), config.ToJson(), new UTF8Encoding(false));
            return files;
        }
        finally
        {
            foreach (var kv in tensors) kv.Value.Dispose();
        }
    }
}
