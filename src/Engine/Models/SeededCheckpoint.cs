using System.Text;
using Superpipeline.Engine.Checkpoints;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Models;

/// <summary>The writing every family's exporter shares: a model's seeded weights under its parameter names (each name once:
/// a tied head's matrix is the embedding's, written once), as safetensors in Hugging Face's layout, beside its config.json.</summary>
public static class SeededCheckpoint
{
    /// <summary>Writes <paramref name="model"/>'s weights from <paramref name="seed"/> and <paramref name="configJson"/> into
    /// <paramref name="directory"/>; returns the weight files written.</summary>
    public static IReadOnlyList<string> Write(string directory, LayeredModel model, string configJson, string torchDtype, long seed, int shards)
    {
        if (torchDtype != "float32")
            throw new ArgumentException($"torch_dtype \"{torchDtype}\": only float32 checkpoints are written for now");
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
            Directory.CreateDirectory(directory);
            var files = SafetensorsWriter.WriteCheckpoint(directory, tensors, shards);
            File.WriteAllText(Path.Combine(directory, "config.json"), configJson, new UTF8Encoding(false));
            return files;
        }
        finally
        {
            foreach (var kv in tensors) kv.Value.Dispose();
        }
    }
}
