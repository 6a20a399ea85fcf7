using Superpipeline.Engine.Models;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Checkpoints;

/// <summary>Weights read from a Hugging Face checkpoint directory (model.safetensors, or shards with their index): each layer
/// reads only its own tensors, named by its <see cref="ParamSpec"/>s (the family's table of checkpoint names), in the dtype they
/// are stored in (F32, F16 or BF16: a layer's host copy holds the stored bytes; the device widens them to float32). A tensor of
/// another dtype, another shape or missing is a one-line error naming the file and the tensor. Thread-safe (layer actors load
/// in parallel); dispose it after the layers have loaded.</summary>
public sealed class CheckpointWeights : IWeightSource, IDisposable
{
    /// <summary>The stored dtypes a layer's weights may have: floating point ones the device widens to float32 exactly.</summary>
    public static IReadOnlyList<string> WeightDtypes { get; } = ["F32", "F16", "BF16"];

    readonly SafetensorsCheckpoint checkpoint;

    public CheckpointWeights(string directory) => checkpoint = SafetensorsCheckpoint.Open(directory);

    public string Directory => checkpoint.Directory;

    /// <summary>Bytes read so far: the headers of the files opened and the layers' own tensors, nothing else.</summary>
    public long BytesRead => checkpoint.BytesRead;

    /// <summary>The weight files opened so far (a file opens the first time one of its tensors is asked for).</summary>
    public IReadOnlyList<string> OpenedFiles => checkpoint.OpenedFiles;

    public IReadOnlyDictionary<string, Tensor> Load(Layer layer)
    {
        var result = new Dictionary<string, Tensor>(layer.Parameters.Count);
        try
        {
            foreach (var spec in layer.Parameters)
            {
                Check(layer, spec);
                result[spec.Name] = checkpoint.Read(spec.Name);
            }
            return result;
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
    }

    /// <summary>The bytes <paramref name="layer"/>'s tensors hold as stored (what its host copy holds and what crosses the link),
    /// from the headers alone; the same refusals as <see cref="Load"/>.</summary>
    public long StoredBytes(Layer layer) => layer.Parameters.Sum(spec =>
    {
        Check(layer, spec);
        return checkpoint.Entry(spec.Name).ByteLength;
    });

    /// <summary>Checks that every tensor of <paramref name="model"/>'s layers is in the checkpoint, F32, F16 or BF16, with the layer's shape,
    /// from the headers alone (no tensor data is read): the refusals <see cref="Load"/> would give, before any work starts.</summary>
    public void Check(LayeredModel model)
    {
        foreach (var layer in model.Layers)
            foreach (var spec in layer.Parameters) Check(layer, spec);
    }

    void Check(Layer layer, ParamSpec spec)
    {
        var entry = checkpoint.Entry(spec.Name);
        string file = Path.Combine(checkpoint.Directory, checkpoint.FileOf(spec.Name));
        if (!WeightDtypes.Contains(entry.Dtype))
            throw new SafetensorsException(file, spec.Name, $"is {entry.Dtype}; weights are read as {string.Join(", ", WeightDtypes)}");
        if (!entry.Shape.SequenceEqual(spec.Shape))
            throw new SafetensorsException(file, spec.Name,
                $"has shape [{string.Join(",", entry.Shape)}], layer {layer.Name} expects [{string.Join(",", spec.Shape)}]");
    }

    public void Dispose() => checkpoint.Dispose();
}
