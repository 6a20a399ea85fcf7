using System.Collections.Immutable;
using Superpipeline.Contracts;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Training;

namespace Superpipeline.Engine.Simulation;

/// <summary>The training planner's answer (<see cref="TrainingPlanner.Choose"/>): the window, its step's device need (the
/// predicted peak, <see cref="TrainingMemory"/>), the simulated seconds of its forward and backward passes, and how many (k, k')
/// it simulated.</summary>
public sealed record TrainingPlan(PolicySpec Policy, TrainingMemory Memory, double ForwardSeconds, double BackwardSeconds, int Simulated)
{
    /// <summary>k; the model's layers for window = all.</summary>
    public int Window => Memory.Window;

    /// <summary>k'; the model's layers for window = all.</summary>
    public int Swap => Policy.Swap ?? Memory.Window;

    /// <summary>The most device bytes a step of this plan can hold.</summary>
    public long PeakBytes => Memory.PeakBytes;

    /// <summary>Predicted seconds of one step's two passes (the optimizer step on the host is not counted).</summary>
    public double StepSeconds => ForwardSeconds + BackwardSeconds;
}

/// <summary><c>train --window auto</c>: the largest window whose step need (<see cref="TrainingMemory"/>, the bytes the training
/// passes reserve) fits the device, and the k' with which the cost model predicts the fastest step. The need does not depend on
/// k' and grows with k, so for every k' the largest window that fits is the same one (as <see cref="Planner.ChooseWithPins"/>
/// takes the largest fitting window per k'); a bigger device never gets a smaller window. A step is two passes simulated by
/// <see cref="PassSimulator"/> under the same gate the training passes use: the forward (layers 0 .. n−2, every micro-batch's
/// compute per layer), and the backward in reverse order (the weights again with the saved inputs, recompute and backward ≈ 3×
/// the forward's FLOPs, and the parameter gradients' copies to the host on the compute thread). Pinned layers are not planned
/// (the simulation models no pins): a pin lasts one step (the weights change after every one), where it saves the backward
/// pass's load of the layer; a user may give them.</summary>
public static class TrainingPlanner
{
    /// <param name="model">The model built at the step's batch (rows per step).</param>
    /// <param name="microBatches">The micro-batches each step's batch is split into.</param>
    /// <param name="device">The device's capacity, link and compute rate (calibrated, or from a catalog GPU).</param>
    /// <exception cref="FieldException">Naming <see cref="FieldException.DeviceMemory"/> when not even window 1 fits, with the need
    /// and what it is made of.</exception>
    public static TrainingPlan Choose(LayeredModel model, int microBatches, DeviceCost device)
    {
        int n = model.Layers.Count;
        var smallest = CheckFits(model, microBatches, device.CapacityBytes);
        var fits = smallest;
        for (int k = n; k > 1; k--) // the need grows with k: the first that fits from the top is the largest
        {
            var need = TrainingMemory.Of(model, microBatches, k);
            if (need.PeakBytes <= device.CapacityBytes)
            {
                fits = need;
                break;
            }
        }
        int window = fits.Window, simulated = 0;
        if (window == n)
        {
            var (forward, backward) = StepSeconds(model, microBatches, device, PolicySpec.Resident);
            return new TrainingPlan(PolicySpec.Resident, fits, forward, backward, 1);
        }
        TrainingPlan? best = null;
        for (int s = 1; s <= window; s++)
        {
            var spec = new PolicySpec(window, s);
            var (forward, backward) = StepSeconds(model, microBatches, device, spec);
            simulated++;
            if (best is null || forward + backward < best.StepSeconds) best = new TrainingPlan(spec, fits, forward, backward, 0); // a tie: the smaller k'
        }
        return best! with { Simulated = simulated };
    }

    /// <summary>Refuses a device of <paramref name="capacityBytes"/> that cannot train at all (window 1's need does not fit), in one
    /// line naming <see cref="FieldException.DeviceMemory"/>, the need and its terms; returns window 1's need when it fits.</summary>
    public static TrainingMemory CheckFits(LayeredModel model, int microBatches, long capacityBytes)
    {
        var need = TrainingMemory.Of(model, microBatches, 1);
        return need.PeakBytes <= capacityBytes ? need
            : throw new FieldException(FieldException.DeviceMemory, $"{capacityBytes:N0} bytes is below the {need.PeakBytes:N0} bytes training needs at "
                + $"window 1 ({microBatches} micro-batch(es) of {model.InputShape[0] / microBatches} rows): {need.Describe()}");
    }

    /// <summary>The simulated seconds of a step's forward and backward passes under <paramref name="spec"/> (see the class).</summary>
    public static (double Forward, double Backward) StepSeconds(LayeredModel model, int microBatches, DeviceCost device, PolicySpec spec)
    {
        int n = model.Layers.Count;
        var policy = OffloadPolicy.For(spec, n);
        var shapes = TrainingMemory.MicroShapes(model, microBatches);
        long m = microBatches;
        long Bytes(int i) => TensorBytes.Of(shapes[i].Shape, shapes[i].DType);
        bool labelsAreInput = ClassificationLoss.ObjectiveOf(model) == TrainingObjective.CausalLm;
        double Flops(int i) => m * model.Layers[i].Flops(shapes[i].Shape);
        long Gradients(int i) => model.Layers[i].Parameters.Sum(p => TensorBytes.Of([.. p.Shape], TorchSharp.torch.ScalarType.Float32));

        var forward = new ModelCost(model.Name, m * Bytes(0), [.. Enumerable.Range(0, n - 1).Select(i => new LayerCost(model.Layers[i].Name,
            model.Layers[i].Bytes, Flops(i), m * Bytes(i + 1), model.Layers[i].WorkspaceBytes(shapes[i].Shape)))]);
        long labels = labelsAreInput ? m * Bytes(0) : m * sizeof(long) * shapes[0].Shape[0];
        var backward = new ModelCost(model.Name, labels, [.. Enumerable.Range(0, n).Reverse().Select(i => new LayerCost(model.Layers[i].Name,
            model.Layers[i].Bytes + (i == 0 && labelsAreInput ? 0 : m * Bytes(i)),
            3 * Flops(i) + device.FlopsPerSecond * (m * Gradients(i)) / device.LinkBytesPerSecond,
            i == 0 ? 0 : m * TrainingCosts.GradientBytes(shapes[i].Shape), 0))]);
        return (Simulate(forward, device, policy), Simulate(backward, device, policy));
    }

    static double Simulate(ModelCost pass, DeviceCost device, OffloadPolicy policy)
    {
        long[] bytes = [.. pass.Layers.Select(l => l.Bytes)];
        var pinned = policy.IsResident ? Enumerable.Range(0, bytes.Length).ToImmutableSortedSet() : ImmutableSortedSet<int>.Empty;
        return PassSimulator.Run(pass, device, new WindowGate(policy, bytes, pinned)).MakespanSeconds;
    }
}
