using Superpipeline.Engine.Images;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Engine.Training;

/// <summary>What a model's head is trained to predict, and so which loss its logits take.</summary>
public enum TrainingObjective
{
    /// <summary>A decoder over token ids [rows, seq]: the ids are the input and, shifted by one, the labels
    /// (<see cref="TrainingLoss.CausalLm"/>).</summary>
    CausalLm,
    /// <summary>An image classifier (ViTForImageClassification): float32 pixels [rows, C, H, W] in, logits [rows, num_labels] out,
    /// int64 labels [rows] beside them (<see cref="ClassificationLoss.Of"/>).</summary>
    Classification,
}

/// <summary>transformers' single-label classification loss and the image classifier's training data: pixels and int64 labels.</summary>
public static class ClassificationLoss
{
    /// <summary>The field the engine names for an image classifier's labels (the CLI's --labels).</summary>
    public const string Field = "class labels";

    /// <summary>The objective <paramref name="model"/> trains under: a decoder over int64 [rows, seq] ids, or a ViT with its
    /// classifier head; anything else (a ViTModel's pooler, a CLIP tower, an ONNX graph) is refused in one line.</summary>
    public static TrainingObjective ObjectiveOf(LayeredModel model)
    {
        if (model.InputDType == ScalarType.Int64 && model.InputShape.Length == 2) return TrainingObjective.CausalLm;
        if (model.Layers[^1] is VitHead { Kind: VitHeadKind.Classifier }) return TrainingObjective.Classification;
        throw new ArgumentException($"{model.Name}: training takes a decoder over token ids or an image classifier with its classifier head "
            + $"(this model's input is {model.InputDType}[{string.Join(", ", model.InputShape)}], its last layer {model.Layers[^1].Name})");
    }

    /// <summary>ViTForImageClassification's loss when num_labels &gt; 1 and the labels are integers (problem_type
    /// single_label_classification): CrossEntropyLoss()(logits.view(-1, num_labels), labels.view(-1)), the mean over rows.</summary>
    public static Tensor Of(Tensor logits, Tensor labels) => F.cross_entropy(logits.view(-1, logits.shape[^1]), labels.view(-1));

    /// <summary>Checks <paramref name="labels"/> for <paramref name="rows"/> images of a classifier with <paramref name="classes"/>
    /// labels: int64 [rows], every label in [0, classes). Throws a <see cref="FieldException"/> naming <see cref="Field"/>.</summary>
    public static void CheckLabels(Tensor labels, long rows, long classes)
    {
        if (labels.dtype != ScalarType.Int64 || labels.dim() != 1 || labels.shape[0] != rows)
            throw new FieldException(Field, $"must be int64 [{rows}] (one per image); got {labels.dtype}[{string.Join(", ", labels.shape)}]");
        using var scope = NewDisposeScope();
        var bad = (labels < 0).logical_or(labels >= classes).nonzero();
        if (bad.shape[0] == 0) return;
        long row = bad[0, 0].item<long>();
        throw new FieldException(Field, $"hold {labels[row].item<long>()} at row {row}: outside the classifier's {classes} labels (num_labels)");
    }

    /// <summary>int64 labels [rows] from a .npy file; anything else is one line naming the file.</summary>
    public static Tensor ReadLabels(string path)
    {
        if (!File.Exists(path)) throw new FieldException(Field, $"{path}: no such file");
        var (descr, shape, data) = Npy.Read(path);
        if (descr != "<i8" || shape.Length != 1)
            throw new FieldException(Field, $"{path}: must hold int64 labels [rows]; got {descr} [{string.Join(", ", shape)}]");
        var longs = new long[data.Length / sizeof(long)];
        Buffer.BlockCopy(data, 0, longs, 0, data.Length);
        return tensor(longs, shape, ScalarType.Int64);
    }

    /// <summary>Float32 pixels [rows, C, H, W] for the ViT in <paramref name="modelDir"/>: a .npy as it is (its shape checked
    /// against the config), a directory's PNG and JPEG files in ordinal name order, or a text file listing one image path a line
    /// (relative to the list), the images through the checkpoint's preprocessor.</summary>
    public static Tensor ReadPixels(string path, string modelDir)
    {
        var c = VitConfig.Read(modelDir);
        long[] want = [c.Channels, c.ImageSize, c.ImageSize];
        if (Directory.Exists(path))
        {
            var files = Directory.EnumerateFiles(path).Where(IsImage).Order(StringComparer.Ordinal).ToArray();
            if (files.Length == 0) throw new FieldException(TrainingFields.Data, $"{path}: a directory with no .png, .jpg or .jpeg file");
            return ImageInput.Load(files, Vit.Preprocess(modelDir));
        }
        if (!File.Exists(path)) throw new FieldException(TrainingFields.Data, $"{path}: no such file or directory");
        if (!path.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
        {
            string root = Path.GetDirectoryName(Path.GetFullPath(path))!;
            var listed = File.ReadAllLines(path).Select(l => l.Trim()).Where(l => l.Length > 0).Select(l => Path.Combine(root, l)).ToArray();
            if (listed.Length == 0) throw new FieldException(TrainingFields.Data, $"{path}: lists no image");
            return ImageInput.Load(listed, Vit.Preprocess(modelDir));
        }
        var (descr, shape, data) = Npy.Read(path);
        if (descr != "<f4" || shape.Length != 4 || !shape.Skip(1).SequenceEqual(want))
            throw new FieldException(TrainingFields.Data,
                $"{path}: must hold float32 pixels [rows, {string.Join(", ", want)}] (num_channels, image_size); got {descr} [{string.Join(", ", shape)}]");
        var floats = new float[data.Length / sizeof(float)];
        Buffer.BlockCopy(data, 0, floats, 0, data.Length);
        return tensor(floats, shape, ScalarType.Float32);
    }

    static bool IsImage(string file) => Path.GetExtension(file).ToLowerInvariant() is ".png" or ".jpg" or ".jpeg";
}
