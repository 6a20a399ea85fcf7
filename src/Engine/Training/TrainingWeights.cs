using Superpipeline.Contracts;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Models;

namespace Superpipeline.Engine.Training;

/// <summary>The dtype a model trains in. As Hugging Face's <c>from_pretrained</c> loads a checkpoint in float32 unless told
/// otherwise (torch_dtype defaults to float32) and a plain PyTorch loop then trains float32 parameters, training loads every
/// checkpoint at float32: each F16/BF16 tensor is upcast on read (exact), so the host weights, the master copy, gradients,
/// optimizer state, device weights and the saved checkpoint are all float32. A float32 checkpoint loads as it is.</summary>
public static class TrainingWeights
{
    /// <summary><paramref name="spec"/> loaded as training loads it: <see cref="ModelSpec.LoadDtype"/> float32.</summary>
    public static ModelSpec Spec(ModelSpec spec) => spec with { LoadDtype = ModelSpec.Float32 };

    /// <summary>What training upcasts in <paramref name="spec"/>'s checkpoint: the torch_dtype names of the stored dtypes narrower
    /// than float32 ("float16", "bfloat16", joined by " and "), from the safetensors headers; null when every tensor is F32 (or the
    /// model is not a safetensors checkpoint).</summary>
    public static string? UpcastFrom(ModelSpec spec, LayeredModel model)
    {
        if (spec.Checkpoint is null || Onnx.OnnxImport.IsOnnx(spec.Checkpoint)) return null;
        using var weights = new CheckpointWeights(spec.Checkpoint);
        var narrow = weights.StoredDtypes(model).Where(d => d != "F32").Select(d => d switch
        {
            "F16" => "float16",
            "BF16" => "bfloat16",
            _ => d,
        }).ToArray();
        return narrow.Length == 0 ? null : string.Join(" and ", narrow);
    }
}
