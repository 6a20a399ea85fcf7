using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Training;

/// <summary>The most device bytes one training step reserves under a window of <see cref="Window"/> layers, whatever the timing,
/// term by term as the training passes reserve them (TrainingPassBackend). Forward (layers 0 .. n−2, the head left to the
/// backward pass): the window's weights, every micro-batch's activation carried from layer to layer, one layer's output being
/// made and its workspace. Backward (n−1 .. 0): the labels for the whole pass, the window's weights with the saved inputs they
/// load, then for the computing layer its float32 parameter gradients, the activation gradients (the ones coming in, per
/// micro-batch, and the one going out) and <see cref="TrainingCosts.BackwardWorkspaceBytes"/>. Built by <see cref="Of"/>.</summary>
/// <param name="ForwardWindowBytes">The k largest weights the forward pass streams.</param>
/// <param name="ForwardActivationBytes">The most a forward layer holds besides weights: every micro-batch's activation, the output
/// being made and the layer's workspace.</param>
/// <param name="BackwardWindowBytes">The k largest of a layer's weights plus the inputs the forward pass saved for it (one per
/// micro-batch; a decoder's layer 0 reads the labels instead).</param>
/// <param name="LabelsBytes">The labels of every micro-batch, on the device for the whole backward pass.</param>
/// <param name="Layer">The layer whose backward holds the most beside the window (its index).</param>
/// <param name="GradientBytes">That layer's float32 parameter gradients.</param>
/// <param name="ActivationGradientBytes">The activation gradients alive while it computes: the incoming ones still waiting, per
/// micro-batch, and the outgoing ones made so far.</param>
/// <param name="WorkspaceBytes">Its recompute's temporaries and output and their gradients (the head's loss included).</param>
public sealed record TrainingMemory(int Window, long ForwardWindowBytes, long ForwardActivationBytes, long BackwardWindowBytes, long LabelsBytes,
    int Layer, string LayerName, long GradientBytes, long ActivationGradientBytes, long WorkspaceBytes)
{
    public long ForwardBytes => ForwardWindowBytes + ForwardActivationBytes;

    public long BackwardBytes => BackwardWindowBytes + LabelsBytes + GradientBytes + ActivationGradientBytes + WorkspaceBytes;

    /// <summary>The step's need: the larger pass's.</summary>
    public long PeakBytes => Math.Max(ForwardBytes, BackwardBytes);

    /// <summary>What the need is made of, for a refusal: the terms of the pass that needs more.</summary>
    public string Describe() => BackwardBytes >= ForwardBytes
        ? $"the backward pass holds {BackwardWindowBytes:N0} for the window's weights and saved inputs, {GradientBytes:N0} for layer {Layer} "
            + $"({LayerName})'s float32 gradients, {ActivationGradientBytes:N0} for the activation gradients, {WorkspaceBytes:N0} for its "
            + $"recompute's workspace and {LabelsBytes:N0} for the labels"
        : $"the forward pass holds {ForwardWindowBytes:N0} for the window's weights and {ForwardActivationBytes:N0} for the activations "
            + "and the workspace";

    /// <summary>The need of a step of <paramref name="model"/> (built at the step's batch) split into
    /// <paramref name="microBatches"/> micro-batches, under a window of <paramref name="window"/> layers (the model's count: all
    /// resident). Every term an upper bound of what the passes reserve at once, so a step within it is never refused for device
    /// memory.</summary>
    public static TrainingMemory Of(LayeredModel model, int microBatches, int window)
    {
        int n = model.Layers.Count;
        if (n < 2) throw new ArgumentException("training streams a model of at least two layers (the head computes the loss)");
        if (microBatches < 1 || model.InputShape[0] % microBatches != 0)
            throw new FieldException(TrainingFields.MicroBatches, $"({microBatches}) must divide the batch ({model.InputShape[0]} rows)");
        if (window < 1 || window > n) throw new FieldException(FieldException.Window, $"must be from 1 to {n} (the model's layers); got {window}");
        long m = microBatches;
        var shapes = MicroShapes(model, microBatches);
        long Bytes(int i) => TensorBytes.Of(shapes[i].Shape, shapes[i].DType);
        long Grad(int i) => TrainingCosts.GradientBytes(shapes[i].Shape);
        bool labelsAreInput = ClassificationLoss.ObjectiveOf(model) == TrainingObjective.CausalLm;

        long forwardWindow = model.Layers.Take(n - 1).Select(l => l.Bytes).OrderDescending().Take(window).Sum();
        long forwardActivations = Enumerable.Range(0, n - 1)
            .Max(i => m * Math.Max(Bytes(i), Bytes(i + 1)) + Bytes(i + 1) + model.Layers[i].WorkspaceBytes(shapes[i].Shape));

        long Saved(int i) => i == 0 && labelsAreInput ? 0 : m * Bytes(i);
        long backwardWindow = Enumerable.Range(0, n).Select(i => model.Layers[i].Bytes + Saved(i)).OrderDescending().Take(window).Sum();
        long labels = labelsAreInput ? m * Bytes(0) : m * TensorBytes.Of([shapes[0].Shape[0]], ScalarType.Int64);
        long ActivationGradients(int i) =>
            i == n - 1 ? m * Grad(i) // the head: nothing comes in, one goes out per micro-batch
            : i == 0 ? m * Grad(1) // layer 0: the incoming ones only (a model's input has no gradient)
            : Math.Max(m * Grad(i + 1) + Grad(i), Grad(i + 1) + m * Grad(i)); // incoming ones replaced one by one by outgoing ones
        long Gradients(int i) => model.Layers[i].Parameters.Sum(p => TensorBytes.Of([.. p.Shape], ScalarType.Float32));
        long Workspace(int i) => TrainingCosts.BackwardWorkspaceBytes(model.Layers[i], shapes[i].Shape, shapes[i + 1]);
        int worst = Enumerable.Range(0, n).MaxBy(i => Gradients(i) + ActivationGradients(i) + Workspace(i));
        return new TrainingMemory(window, forwardWindow, forwardActivations, backwardWindow, labels, worst, model.Layers[worst].Name,
            Gradients(worst), ActivationGradients(worst), Workspace(worst));
    }

    /// <summary>The activation shapes of one micro-batch (the model's input with its rows divided), as the training passes see them.</summary>
    public static IReadOnlyList<(long[] Shape, ScalarType DType)> MicroShapes(LayeredModel model, int microBatches)
    {
        long[] input = [.. model.InputShape];
        input[0] /= microBatches;
        var list = new List<(long[] Shape, ScalarType DType)> { (input, model.InputDType) };
        foreach (var layer in model.Layers)
        {
            var (shape, dtype) = list[^1];
            list.Add((layer.OutputShape(shape), layer.OutputDType(dtype)));
        }
        return list;
    }
}
