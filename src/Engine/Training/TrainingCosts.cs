using Superpipeline.Engine.Models;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Training;

/// <summary>Device bytes a layer's backward step holds beyond its weights, its saved input, the gradient coming in and the
/// gradients going out (those are reserved on their own).</summary>
public static class TrainingCosts
{
    /// <summary>The recomputed forward keeps its temporaries for autograd (<see cref="Layer.WorkspaceBytes(long[])"/>) and its
    /// output; backpropagating through them makes one gradient per temporary, at most as many bytes again, and for the head the
    /// loss's log-softmax of the logits and its gradient (the output's size twice). An estimate from the forward's own figure,
    /// not probed against the storages autograd holds.</summary>
    public static long BackwardWorkspaceBytes(Layer layer, long[] input, (long[] Shape, ScalarType DType) output) =>
        2 * layer.WorkspaceBytes(input) + 2 * TensorBytes.Of(output.Shape, ScalarType.Float32);

    /// <summary>The bytes of a float32 gradient of an activation of <paramref name="shape"/>.</summary>
    public static long GradientBytes(long[] shape) => TensorBytes.Of(shape, ScalarType.Float32);
}
