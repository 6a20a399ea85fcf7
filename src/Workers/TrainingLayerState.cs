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
    readonly OptimizerSettings _settings;

    /// <summary>Copies <paramref name="weights"/> (float32 only: the optimizer updates them in place at float32 precision; a
    /// float16 or bfloat16 checkpoint is loaded upcast, <see cref="TrainingWeights"/>) into parameters and builds the optimizer over
    /// them. Throws naming the layer and tensor for weights held in another dtype (a checkpoint loaded as stored).</summary>
    public TrainingLayerState(string layer, IReadOnlyList<(string Name, Tensor Tensor)> weights, OptimizerSettings optimizer)
    {
        foreach (var (name, t) in weights)
            if (t.dtype != ScalarType.Float32)
                throw new ArgumentException($"layer {layer}: {name} is held as {t.dtype}; training needs float32 weights (a checkpoint loaded at float32)");
        _params = [.. weights.Select(w => (w.Name, new Parameter(w.Tensor.detach().clone(), true)))];
        _grads = new Tensor?[_params.Count];
        _optimizer = optimizer.Create(_params.Select(p => p.Param));
        _settings = optimizer;
    }

    /// <summary>Host bytes held for training: the master weights, the gradients and the optimizer's state per parameter.</summary>
    public long Bytes(OptimizerSettings optimizer) => optimizer.TrainingBytes(_params.Sum(p => p.Param.NumberOfElements * 4));

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

    /// <summary>Copies of the optimizer's state, named "{parameter}.{slot}" as <see cref="TrainingCheckpoint"/> saves it: AdamW's
    /// step (int64, 0-d), exp_avg and exp_avg_sq; SGD's momentum_buffer once a step made it (none without momentum). The caller
    /// owns the copies.</summary>
    public IReadOnlyList<(string Name, Tensor Tensor)> ExportState()
    {
        var list = new List<(string, Tensor)>();
        var states = _optimizer.state_dict().State;
        for (int i = 0; i < _params.Count; i++)
        {
            string name = _params[i].Name;
            switch (states[i])
            {
                case AdamW.State a:
                    list.Add((OptimizerSlots.Name(name, OptimizerSlots.Step), tensor(a.step, ScalarType.Int64).DetachFromDisposeScope()));
                    list.Add((OptimizerSlots.Name(name, OptimizerSlots.ExpAvg), a.exp_avg.detach().clone().DetachFromDisposeScope()));
                    list.Add((OptimizerSlots.Name(name, OptimizerSlots.ExpAvgSq), a.exp_avg_sq.detach().clone().DetachFromDisposeScope()));
                    break;
                case SGD.State { momentum_buffer: { } buffer }:
                    list.Add((OptimizerSlots.Name(name, OptimizerSlots.MomentumBuffer), buffer.detach().clone().DetachFromDisposeScope()));
                    break;
            }
        }
        return list;
    }

    /// <summary>Replaces the optimizer's state with <paramref name="state"/> (names as <see cref="ExportState"/> gives them; copied,
    /// the caller keeps owning the tensors). Every slot this optimizer keeps must be there with its parameter's shape: throws
    /// naming the first one missing or of another shape, before changing anything.</summary>
    public void ImportState(IReadOnlyDictionary<string, Tensor> state)
    {
        var slots = OptimizerSlots.Of(_settings);
        foreach (var (name, param) in _params)
            foreach (var slot in slots)
            {
                string key = OptimizerSlots.Name(name, slot);
                if (!state.TryGetValue(key, out var t)) throw new ArgumentException($"the optimizer state holds no {key}");
                long[] want = slot == OptimizerSlots.Step ? [] : param.shape;
                var dtype = slot == OptimizerSlots.Step ? ScalarType.Int64 : ScalarType.Float32;
                if (!t.shape.SequenceEqual(want) || t.dtype != dtype)
                    throw new ArgumentException($"the optimizer state's {key} is {t.dtype}[{string.Join(", ", t.shape)}], "
                        + $"the parameter's {dtype}[{string.Join(", ", want)}]");
            }
        var states = _optimizer.state_dict().State;
        using (no_grad())
        {
            for (int i = 0; i < _params.Count; i++)
            {
                string name = _params[i].Name;
                switch (states[i])
                {
                    case AdamW.State a:
                        a.step = state[OptimizerSlots.Name(name, OptimizerSlots.Step)].item<long>();
                        a.exp_avg = Replace(a.exp_avg, state[OptimizerSlots.Name(name, OptimizerSlots.ExpAvg)]);
                        a.exp_avg_sq = Replace(a.exp_avg_sq, state[OptimizerSlots.Name(name, OptimizerSlots.ExpAvgSq)]);
                        break;
                    case SGD.State s when slots.Contains(OptimizerSlots.MomentumBuffer):
                        s.momentum_buffer = Replace(s.momentum_buffer, state[OptimizerSlots.Name(name, OptimizerSlots.MomentumBuffer)]);
                        break;
                }
            }
        }
    }

    static Tensor Replace(Tensor? held, Tensor loaded)
    {
        held?.Dispose();
        return loaded.detach().clone().DetachFromDisposeScope();
    }

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
