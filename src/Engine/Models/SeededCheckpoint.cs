using System.Text;
using Superpipeline.Engine.Checkpoints;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Models;

/// <summary>The writing every family's exporter shares: a model's seeded weights under its parameter names (each name once:
/// a tied head's matrix is the embedding's, written once), as safetensors in Hugging Face's layout, beside its config.json.</summary>
public static class SeededCheckpoint
{
    /// <summary>config.json's torch_dtype values the exporters write, with the dtype their tensors are stored in.</summary>
    public static IReadOnlyDictionary<string, ScalarType> TorchDtypes { get; } = new Dictionary<string, ScalarType>
    {
        ["float32"] = ScalarType.Float32, ["float16"] = ScalarType.Float16, ["bfloat16"] = ScalarType.BFloat16,
    };

    /// <summary>Writes <paramref name="model"/>'s weights from <paramref name="seed"/> and <paramref name="configJson"/> into
    /// <paramref name="directory"/>; returns the weight files written. The seeded float32 values are rounded to
    /// <paramref name="torchDtype"/> (float32, float16 or bfloat16; round to nearest even) and stored in it.</summary>
    public static IReadOnlyList<string> Write(string directory, LayeredModel model, string configJson, string torchDtype, long seed, int shards)
    {
        if (!TorchDtypes.TryGetValue(torchDtype, out var stored))
            throw new ArgumentException($"torch_dtype \"{torchDtype}\" is not written (written: {string.Join(", ", TorchDtypes.Keys)})");
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
                    else if (stored == weights[spec.Name].dtype) tensors.Add(new(spec.Name, weights[spec.Name]));
                    else
                    {
                        using var wide = weights[spec.Name];
                        tensors.Add(new(spec.Name, wide.to_type(stored)));
                    }
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
