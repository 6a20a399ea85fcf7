using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using Superpipeline.Contracts;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Text;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Training;

/// <summary>Training data: token ids in a NumPy file, and the batches a run takes from it.</summary>
public static class TrainingData
{
    /// <summary>int64 [rows, seq] token ids from a .npy file; anything else is one line naming the file.</summary>
    public static Tensor ReadIds(string path)
    {
        if (!File.Exists(path)) throw new FieldException(TrainingFields.Data, $"{path}: no such file");
        var (descr, shape, data) = Npy.Read(path);
        if (descr != "<i8" || shape.Length != 2)
            throw new FieldException(TrainingFields.Data, $"{path}: must hold int64 token ids [rows, seq]; got {descr} [{string.Join(", ", shape)}]");
        var longs = new long[data.Length / sizeof(long)];
        Buffer.BlockCopy(data, 0, longs, 0, data.Length);
        return tensor(longs, shape, ScalarType.Int64);
    }

    /// <summary>A text file through the checkpoint's tokenizer (in <paramref name="modelDir"/>), cut into rows of
    /// <paramref name="sequence"/> tokens (the tokens past the last whole row are left out).</summary>
    public static Tensor ReadText(string path, string modelDir, int sequence)
    {
        if (!File.Exists(path)) throw new FieldException(TrainingFields.Data, $"{path}: no such file");
        if (sequence < 2) throw new FieldException(FieldException.Sequence, $"must be at least 2 to predict a token; got {sequence}");
        if (!CheckpointTokenizer.Present(modelDir))
            throw new FieldException(TrainingFields.Data, $"{path}: a text file needs the checkpoint's tokenizer, and {modelDir} has none");
        var ids = CheckpointTokenizer.Load(modelDir).Encode(File.ReadAllText(path));
        long rows = ids.Count / sequence;
        if (rows == 0) throw new FieldException(TrainingFields.Data, $"{path}: {ids.Count} tokens, fewer than one row of {sequence}");
        return tensor(ids.Take((int)(rows * sequence)).Select(i => (long)i).ToArray(), [rows, sequence], ScalarType.Int64);
    }

    /// <summary>Token ids from <paramref name="path"/>: a .npy file as it is (<see cref="ReadIds"/>), any other file as text
    /// (<see cref="ReadText"/>).</summary>
    public static Tensor Read(string path, string modelDir, int sequence) =>
        path.EndsWith(".npy", StringComparison.OrdinalIgnoreCase) ? ReadIds(path) : ReadText(path, modelDir, sequence);

    /// <summary>The rows of a step starting at data row <paramref name="first"/>: <paramref name="batch"/> rows in order, wrapping
    /// around the end of the data (an epoch boundary). A run from the start takes step s's from row s · batch; a resumed one
    /// from the row its checkpoint saved.</summary>
    public static Tensor Rows(Tensor data, long first, int batch)
    {
        long rows = data.shape[0];
        var index = Enumerable.Range(0, batch).Select(i => (first + i) % rows).ToArray();
        using var at = tensor(index, ScalarType.Int64);
        return data.index_select(0, at);
    }
}

/// <summary>A trained model saved as a Hugging Face checkpoint directory: model.safetensors (float32, the source checkpoint's
/// tensor names, each tied tensor once, transformers' metadata) beside the source's other files (config.json, the tokenizer
/// files, generation_config.json), so run and generate load it as they load the source. A float16 or bfloat16 source trained
/// upcast to float32 (<see cref="TrainingWeights"/>), so its config.json is saved with torch_dtype "float32", as the tensors are.</summary>
public static class TrainedCheckpoint
{
    public const string ConfigFile = "config.json";

    public static void Write(string directory, string source, IReadOnlyList<(string Name, Tensor Tensor)> weights)
    {
        Directory.CreateDirectory(directory);
        bool float32 = weights.All(w => w.Tensor.dtype == ScalarType.Float32);
        foreach (var file in Directory.EnumerateFiles(source))
        {
            string name = Path.GetFileName(file), target = Path.Combine(directory, name);
            if (name.EndsWith(".safetensors", StringComparison.Ordinal) || name == SafetensorsCheckpoint.IndexFile) continue;
            if (float32 && name == ConfigFile && Float32Config(file) is { } config) File.WriteAllText(target, config, new UTF8Encoding(false));
            else if (Path.GetFullPath(file) != Path.GetFullPath(target)) File.Copy(file, target, overwrite: true);
        }
        SafetensorsWriter.WriteCheckpoint(directory, weights.Select(w => KeyValuePair.Create(w.Name, w.Tensor)));
    }

    static readonly string[] DtypeKeys = ["torch_dtype", "dtype"]; // transformers' name, and its newer one

    /// <summary>The config.json at <paramref name="path"/> with every dtype key saying "float32" (the top level's and each
    /// sub-config's: text_config, vision_config), indented by 2; null when none says otherwise (the file is then copied as it is).</summary>
    static string? Float32Config(string path)
    {
        if (JsonNode.Parse(File.ReadAllText(path)) is not JsonObject root) return null;
        bool changed = false;
        void Widen(JsonObject o)
        {
            foreach (var key in DtypeKeys)
                if (o[key] is JsonValue v && v.TryGetValue<string>(out var dtype) && dtype != ModelSpec.Float32)
                {
                    o[key] = ModelSpec.Float32;
                    changed = true;
                }
            foreach (var (_, child) in o.ToList())
                if (child is JsonObject sub) Widen(sub);
        }
        Widen(root);
        if (!changed) return null;
        return root.ToJsonString(new JsonSerializerOptions { WriteIndented = true, IndentSize = 2, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping })
            + "\n";
    }
}
