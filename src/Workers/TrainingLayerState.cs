using Superpipeline.Engine.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>What a <see cref="LayerActor"/> holds while its layer trains: a float32 master copy of its weights as parameters,
/// their gradients accumulated over a step's micro-batches (host float32), and its own optimizer (torch.optim's SGD or AdamW,
/// with their state). The weights the actor hands to passes are never these tensors: after each optimizer step the actor
/// publishes fresh copies (<see cref="Publish"/>), so no device copy that shares host storage (the emulated link's aliasing,
/// a kept pinned layer) ever sees a tensor the optimizer writes. Used on the actor's thread only.</summary>
public sealed class TrainingLayerState : IDisposable
{
    readonly IReadOnlyList<(string Name, Parameter Param)> _params;
    readonly Tensor?[] _grads;
    readonly OptimizerHelper _optimizer;

    /// <summary>Copies <paramref name="weights"/> (float32 only: the optimizer updates them in place at float32 precision) into
    /// parameters and builds the optimizer over them. Throws naming the layer and tensor for another dtype.</summary>
    public TrainingLayerState(string layer, IReadOnlyList<(string Name, Tensor Tensor)> weights, OptimizerSettings optimizer)
    {
        foreach (var (name, t) in weights)
            if (t.dtype != ScalarType.Float32)
                throw new ArgumentException($"layer {layer}: {name} is stored as {t.dtype}; training needs float32 weights (a float32 checkpoint)");
        _params = [.. weights.Select(w => (w.Name, new Parameter(w.Tensor.detach().clone(), true)))];
        _grads = new Tensor?[_params.Count];
        _optimizer = optimizer.Create(_params.Select(p => p.Param));
    }

    /// <summary>Host bytes held for training: the master weights, the gradients and the optimizer's state per parameter.</summary>
    public long Bytes(OptimizerSettings optimizer) => _params.Sum(p => p.Param.NumberOfElements * 4) * (2 + optimizer.StateCopies);

    /// <summary>Adds <paramref name="grads"/> (host float32, by parameter name) to the accumulated gradients: the first
    /// micro-batch's is copied, later ones added in place, as autograd accumulates into .grad.</summary>
    public void Accumulate(IReadOnlyList<(string Name, Tensor Grad)> grads)
    {
        foreach (var (name, grad) in grads)
        {
            int i = IndexOf(name);
            if (!grad.shape.SequenceEqual(_params[i].Param.shape))
                throw new ArgumentException(
                    $"gradient of {name} is [{string.Join(", ", grad.shape)}], the parameter [{string.Join(", ", _params[i].Param.shape)}]");
            if (_grads[i] is { } held) held.add_(grad);
            else _grads[i] = grad.detach().clone();
        }
    }

    /// <summary>The 2-norm of each accumulated gradient (float32, grad.norm(2)), in parameter order; a parameter without one is left out.</summary>
    public IReadOnlyList<(string Name, float Norm)> Norms()
    {
        var list = new List<(string, float)>();
        for (int i = 0; i < _params.Count; i++)
        {
            if (_grads[i] is not { } g) continue;
            using var n = g.norm(2.0f);
            list.Add((_params[i].Name, n.item<float>()));
        }
        return list;
    }

    /// <summary>One optimizer step at <paramref name="learningRate"/>, the gradients multiplied first by the clip coefficient
    /// when there is one (as clip_grad_norm_ does, by a float32 scalar tensor); then the gradients are dropped.</summary>
    public void Step(double learningRate, float? clip)
    {
        using (no_grad())
        using (var coef = clip is { } c ? tensor(c, ScalarType.Float32) : null)
        {
            for (int i = 0; i < _params.Count; i++)
            {
                if (_grads[i] is not { } g) continue;
                if (coef is not null) g.mul_(coef);
                _params[i].Param.grad = g;
            }
        }
        foreach (var group in _optimizer.ParamGroups) group.LearningRate = learningRate;
        _optimizer.step(); // outside any dispose scope of ours: the optimizer's state tensors live with it
        Zero();
    }

    /// <summary>Drops the accumulated gradients (after a step, or when a step failed).</summary>
    public void Zero()
    {
        for (int i = 0; i < _params.Count; i++)
        {
            _params[i].Param.grad = null;
            _grads[i]?.Dispose();
            _grads[i] = null;
        }
    }

    /// <summary>Fresh host copies of the current weights, for passes to read (the caller owns them).</summary>
    public IReadOnlyList<(string Name, Tensor Tensor)> Publish() => [.. _params.Select(p => (p.Name, p.Param.detach().clone()))];

    int IndexOf(string name)
    {
        for (int i = 0; i < _params.Count; i++)
            if (_params[i].Name == name) return i;
        throw new ArgumentException($"no parameter {name} in this layer");
    }

    public void Dispose()
    {
        Zero();
        _optimizer.Dispose();
        foreach (var (_, p) in _params) p.Dispose();
    }
}
