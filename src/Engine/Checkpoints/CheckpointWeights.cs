using Superpipeline.Contracts;
using Superpipeline.Engine.Models;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Checkpoints;

/// <summary>Weights read from a Hugging Face checkpoint directory (model.safetensors, or shards with their index): each layer
/// reads only its own tensors, named by its <see cref="ParamSpec"/>s (the family's table of checkpoint names), in the dtype they
/// are stored in (F32, F16 or BF16: a layer's host copy holds the stored bytes; the device widens them to float32), or, with a
/// load dtype of float32 (<see cref="ModelSpec.LoadDtype"/>: training), each F16/BF16 tensor upcast to float32 as it is read
/// (an exact conversion; the host copy then holds float32). A tensor of another dtype, another shape or missing is a one-line
/// error naming the file and the tensor. Thread-safe (layer actors load in parallel); dispose it after the layers have loaded.</summary>
public sealed class CheckpointWeights : IWeightSource, IDisposable
{
    /// <summary>The stored dtypes a layer's weights may have: floating point ones the device widens to float32 exactly.</summary>
    public static IReadOnlyList<string> WeightDtypes { get; } = ["F32", "F16", "BF16"];

    readonly SafetensorsCheckpoint checkpoint;
    readonly ScalarType? load;

    /// <param name="load">Float32 to upcast every F16/BF16 tensor on read; null (the default) to keep each as stored.</param>
    public CheckpointWeights(string directory, ScalarType? load = null)
    {
        if (load is { } l && l != ScalarType.Float32) throw new ArgumentException($"a checkpoint loads as stored or as Float32, not as {l}");
        checkpoint = SafetensorsCheckpoint.Open(directory);
        this.load = load;
    }

    /// <summary>The weights of <paramref name="spec"/>'s checkpoint (or of <paramref name="directory"/>, a checkpoint of the same
    /// model: a training checkpoint to resume from), loaded in the spec's <see cref="ModelSpec.LoadDtype"/>.</summary>
    public static CheckpointWeights For(ModelSpec spec, string? directory = null) =>
        new(directory ?? spec.Checkpoint ?? throw new ArgumentException($"{spec.Name}: a seeded model has no checkpoint to read"), LoadDType(spec));

    /// <summary><see cref="ModelSpec.LoadDtype"/> as a TorchSharp dtype: null (as stored) or Float32; anything else is refused naming
    /// the field and the value.</summary>
    public static ScalarType? LoadDType(ModelSpec spec) => spec.LoadDtype switch
    {
        null => null,
        ModelSpec.Float32 => ScalarType.Float32,
        var other => throw new ArgumentException($"load dtype \"{other}\": a checkpoint loads as stored (none) or as \"{ModelSpec.Float32}\""),
    };

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
                var stored = checkpoint.Read(spec.Name);
                if (load is { } wide && stored.dtype != wide)
                {
                    using (stored) result[spec.Name] = stored.to_type(wide);
                }
                else result[spec.Name] = stored;
            }
            return result;
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
    }

    /// <summary>The bytes <paramref name="layer"/>'s tensors hold as loaded (what its host copy holds and what crosses the link: the
    /// stored bytes, or float32's when upcast), from the headers alone; the same refusals as <see cref="Load"/>.</summary>
    public long StoredBytes(Layer layer) => layer.Parameters.Sum(spec =>
    {
        Check(layer, spec);
        var entry = checkpoint.Entry(spec.Name);
        return load is { } wide ? TensorBytes.Of([.. entry.Shape], wide) : entry.ByteLength;
    });

    /// <summary>The stored dtypes of <paramref name="model"/>'s tensors ("F32", "F16", "BF16"), each once, from the headers.</summary>
    public IReadOnlyList<string> StoredDtypes(LayeredModel model) =>
        [.. model.Layers.SelectMany(l => l.Parameters).Select(p => checkpoint.Entry(p.Name).Dtype).Distinct().Order(StringComparer.Ordinal)];

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
