using System.Collections.Concurrent;
using System.Collections.Immutable;
using System.Diagnostics;
using Akka.Actor;
using Superpipeline.Contracts;
using Superpipeline.Engine;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Training;
using Superpipeline.Messages;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>Which way a training pass streams the layers.</summary>
public enum TrainingDirection
{
    /// <summary>Layers 0 .. n−2 in order (the head is left to the backward pass, which recomputes it with the loss), each layer's
    /// input saved to the host.</summary>
    Forward,
    /// <summary>Layers n−1 .. 0: step j of the pass is layer n−1−j.</summary>
    Backward,
}

/// <summary>One training step's micro-batches and what its forward pass saves for its backward pass: each layer's input, on the
/// host (a copy the pass makes as the activation is produced; <see cref="SavedBytes"/> counts them), and the pinned layers' device
/// weights (<see cref="DeviceWeights"/>). Owned by the step.</summary>
public sealed class TrainingBatch : IDisposable
{
    readonly Tensor?[][] _saved;

    /// <param name="ids">The model's input per micro-batch on the host: int64 [rows, seq] ids (and, shifted, their own labels), or an
    /// image classifier's pixels. The caller keeps them.</param>
    /// <param name="labels">An image classifier's int64 labels [rows] per micro-batch (the caller keeps them); null for a decoder.</param>
    public TrainingBatch(LayeredModel model, IReadOnlyList<Tensor> ids, IReadOnlyList<Tensor>? labels = null)
    {
        if (ids.Count == 0) throw new ArgumentException("a training step needs at least one micro-batch");
        if (labels is not null && labels.Count != ids.Count) throw new ArgumentException($"{labels.Count} label parts for {ids.Count} micro-batches");
        Ids = ids;
        Labels = labels ?? ids;
        Objective = labels is null ? TrainingObjective.CausalLm : TrainingObjective.Classification;
        _saved = [.. ids.Select(_ => new Tensor?[model.Layers.Count + 1])]; // [Count]: a stage's output (a stage not ending with the head)
        Losses = new float[ids.Count];
        InputGradients = new Tensor?[ids.Count];
    }

    /// <summary>A pipeline stage after the first: the activation entering its first layer, per micro-batch (host; the caller keeps
    /// them). Null: the stage starts at layer 0 and takes the ids.</summary>
    public IReadOnlyList<Tensor>? StageInputs { get; init; }

    /// <summary>False for a pipeline stage before the last: its forward pass runs all its layers (the output is <see cref="Output"/>)
    /// and its backward pass starts from <see cref="OutputGradients"/> instead of the loss.</summary>
    public bool EndsWithHead { get; init; } = true;

    /// <summary>A stage not ending with the head: the gradient of its output per micro-batch (host; set before the backward pass,
    /// the caller keeps them).</summary>
    public IReadOnlyList<Tensor>? OutputGradients { get; set; }

    /// <summary>A stage with <see cref="StageInputs"/>: the gradient of its input per micro-batch (host), set by the backward pass.</summary>
    public Tensor?[] InputGradients { get; }

    /// <summary>A stage not ending with the head: its output for micro-batch <paramref name="micro"/> (host), set by the forward pass.</summary>
    public Tensor? Output(int micro) => _saved[micro][^1];

    public IReadOnlyList<Tensor> Ids { get; }

    /// <summary>What the head's loss compares its logits with, per micro-batch: the ids themselves, or the class labels.</summary>
    public IReadOnlyList<Tensor> Labels { get; }

    public TrainingObjective Objective { get; }

    /// <summary>True when the labels are the input (a decoder's ids): the backward pass then uploads them once, as the labels.</summary>
    internal bool LabelsAreInput => Objective == TrainingObjective.CausalLm;

    /// <summary>The loss of each micro-batch (unscaled), set by the backward pass.</summary>
    public float[] Losses { get; }

    /// <summary>The device weights of the pinned layers (every layer under window all) the forward pass leaves on the device for
    /// the backward pass of the same step, by model layer: the optimizer has not stepped in between, so they are still the
    /// weights, and the backward pass takes them instead of loading them again. Their bytes stay reserved on the device until
    /// the backward pass takes them; <see cref="Dispose"/> frees any it did not (a step that failed in between).</summary>
    internal ConcurrentDictionary<int, DeviceTensors> DeviceWeights { get; } = new();

    /// <summary>Host bytes of the saved inputs.</summary>
    public long SavedBytes => _saved.Sum(m => m.Sum(t => t is null ? 0 : TensorBytes.Of(t)));

    /// <summary>The input of <paramref name="layer"/> for micro-batch <paramref name="micro"/>: the ids for layer 0, else what the
    /// forward pass saved.</summary>
    internal Tensor Input(int micro, int layer) => layer == 0 ? StageInputs?[micro] ?? Ids[micro]
        : _saved[micro][layer] ?? throw new InvalidOperationException($"layer {layer}'s input of micro-batch {micro} was not saved by a forward pass");

    internal void Save(int micro, int layer, Tensor host)
    {
        _saved[micro][layer]?.Dispose();
        _saved[micro][layer] = host;
    }

    public void Dispose()
    {
        foreach (var layer in DeviceWeights.Keys.ToArray())
            if (DeviceWeights.TryRemove(layer, out var kept)) kept.Dispose();
        foreach (var m in _saved)
            for (int i = 0; i < m.Length; i++)
            {
                m[i]?.Dispose();
                m[i] = null;
            }
        for (int m = 0; m < InputGradients.Length; m++)
        {
            InputGradients[m]?.Dispose();
            InputGradients[m] = null;
        }
    }
}

/// <summary>What makes a <see cref="DeviceLoaderActor.RunPass"/> a training pass: the step's <see cref="TrainingBatch"/>, the
/// direction, and for the backward pass where each layer's parameter gradients go (<paramref name="Gradients"/>: the layer and,
/// per micro-batch, host float32 tensors by parameter name; the pass frees them once the returned task ends).</summary>
public sealed record TrainingPass(TrainingBatch Batch, TrainingDirection Direction,
    Func<int, IReadOnlyList<IReadOnlyList<(string Name, Tensor Grad)>>, Task>? Gradients = null) : INoSerializationVerificationNeeded;

/// <summary>A training pass on a real device, streamed by the same <see cref="PassStream"/> as inference under (k, k'). Forward:
/// as an inference pass (no grad), each activation copied to the host as the next layer's saved input. Backward: step j is layer
/// n−1−j; its load brings the layer's weights and its saved inputs; its compute recomputes the forward from the saved input with
/// grad-tracked weights (and an input that requires grad), the head with its loss (<see cref="TrainingBatch.Objective"/>), backpropagates the gradient coming
/// from the layer after, keeps the input's gradient on the device for the layer before, and copies the parameter gradients to
/// the host for the layer's actor. Every byte goes through the device's accounting; <see cref="FreeAllAsync"/> frees all of
/// them whether the pass succeeded or not.</summary>
public sealed class TrainingPassBackend : IPassBackend
{
    readonly Accelerator _device;
    readonly LayeredModel _model;
    readonly IReadOnlyList<IActorRef> _layerActors;
    readonly TrainingPass _pass;
    readonly TimeSpan _askTimeout;
    readonly IReadOnlyList<(long[] Shape, ScalarType DType)> _activations;
    readonly ConcurrentDictionary<int, DeviceTensors> _resident = new();
    readonly ConcurrentDictionary<int, DeviceTensors> _savedOnDevice = new();
    readonly ConcurrentDictionary<int, Task<LayerActor.HostWeights>> _weights = new();
    readonly Activation?[] _carried; // forward: the activation per micro-batch; backward: the gradient coming into the next layer
    readonly Stopwatch _clock = new();
    readonly double[] _loadStart, _loadSeconds, _computeStart, _computeSeconds, _evictAt;
    readonly long _reservedBefore;
    readonly IReadOnlySet<int> _pinned;
    DeviceTensors? _labels;
    long _bytesTransferred;
    Task _lastAsk = Task.CompletedTask;

    /// <param name="pinned">The model layers the pass's policy pins (<see cref="OffloadPolicy.PinnedSet"/>): a forward pass leaves
    /// them on the device for the backward pass (<see cref="TrainingBatch.DeviceWeights"/>).</param>
    public TrainingPassBackend(Accelerator device, LayeredModel model, IReadOnlyList<IActorRef> layerActors, TrainingPass pass, TimeSpan askTimeout,
        IReadOnlySet<int>? pinned = null)
    {
        if (layerActors.Count != model.Layers.Count)
            throw new ArgumentException($"{layerActors.Count} layer actors for {model.Layers.Count} layers");
        if (model.Layers.Count < 2) throw new ArgumentException("training streams a model of at least two layers (the head computes the loss)");
        var first = pass.Batch.Ids[0];
        foreach (var ids in pass.Batch.Ids)
            if (!ids.shape.SequenceEqual(first.shape)
                || pass.Batch.StageInputs is null && (ids.dtype != model.InputDType || ids.dim() != model.InputShape.Length))
                throw new ArgumentException(
                    $"micro-batches must all be {model.InputDType}[{string.Join(", ", first.shape)}], got {ids.dtype}[{string.Join(", ", ids.shape)}]");
        if (pass.Direction == TrainingDirection.Backward && pass.Gradients is null)
            throw new ArgumentException("a backward pass needs somewhere to send the gradients");
        _device = device;
        _model = model;
        _layerActors = layerActors;
        _pass = pass;
        _askTimeout = askTimeout;
        _activations = ActivationShapes(model, pass.Batch.StageInputs?[0].shape ?? first.shape); // a micro-batch's rows, not the model's batch
        _carried = new Activation?[pass.Batch.Ids.Count];
        int n = model.Layers.Count;
        _loadStart = new double[n]; _loadSeconds = new double[n]; _computeStart = new double[n]; _computeSeconds = new double[n];
        _evictAt = Enumerable.Repeat(-1.0, n).ToArray();
        _pinned = pinned ?? new HashSet<int>();
        // The weights a forward pass left for this backward pass belong to the step: its peak counts them.
        _reservedBefore = device.Memory.Reserved - (Backward ? pass.Batch.DeviceWeights.Values.Sum(w => w.Bytes) : 0);
        device.Memory.ResetPeak();
    }

    static IReadOnlyList<(long[] Shape, ScalarType DType)> ActivationShapes(LayeredModel model, long[] input)
    {
        var list = new List<(long[], ScalarType)> { (input, model.InputDType) };
        foreach (var layer in model.Layers)
        {
            var (shape, dtype) = list[^1];
            list.Add((layer.OutputShape(shape), layer.OutputDType(dtype)));
        }
        return list;
    }

    bool Backward => _pass.Direction == TrainingDirection.Backward;

    int Micro => _carried.Length;

    public int Layers => Backward || !_pass.Batch.EndsWithHead ? _model.Layers.Count : _model.Layers.Count - 1;

    /// <summary>A stage after the first: layer 0's input is an activation (saved, and given a gradient), not the ids.</summary>
    bool StageInput => _pass.Batch.StageInputs is not null;

    /// <summary>The layer step <paramref name="step"/> of this pass streams.</summary>
    public int LayerAt(int step) => Backward ? _model.Layers.Count - 1 - step : step;

    /// <summary>Each step's layer bytes, for the gate (in the pass's order).</summary>
    public IReadOnlyList<long> StepBytes => [.. Enumerable.Range(0, Layers).Select(s => _model.Layers[LayerAt(s)].Bytes)];

    /// <summary>The steps of <paramref name="pinnedLayers"/> this pass streams.</summary>
    public IReadOnlySet<int> PinnedSteps(IReadOnlySet<int> pinnedLayers) =>
        Enumerable.Range(0, Layers).Where(s => pinnedLayers.Contains(LayerAt(s))).ToHashSet();

    public Task BeginAsync(CancellationToken cancel)
    {
        _clock.Start();
        return _device.OnTransferThread(() =>
        {
            var ids = _pass.Batch.Ids;
            if (!Backward)
            {
                for (int m = 0; m < Micro; m++)
                {
                    var placed = _device.Upload([("input", _pass.Batch.Input(m, 0))], $"the input of micro-batch {m}");
                    Interlocked.Add(ref _bytesTransferred, placed.Bytes);
                    _carried[m] = new Activation(placed["input"], placed);
                }
            }
            else
            {
                _labels = _device.Upload([.. _pass.Batch.Labels.Select((t, m) => ($"{m}", t))], "the labels");
                Interlocked.Add(ref _bytesTransferred, _labels.Bytes);
                for (int m = 0; m < Micro && _pass.Batch.OutputGradients is { } outGrads; m++)
                {
                    var placed = _device.Upload([("grad", outGrads[m])], $"the output gradient of micro-batch {m}");
                    Interlocked.Add(ref _bytesTransferred, placed.Bytes);
                    _carried[m] = new Activation(placed["grad"], placed);
                }
            }
            return 0;
        });
    }

    public void Admitted(int step, CancellationToken cancel)
    {
        int layer = LayerAt(step);
        if (Backward && _pass.Batch.DeviceWeights.ContainsKey(layer)) return; // on the device since the forward pass: nothing to ask
        var ask = _lastAsk.ContinueWith(
            _ => _layerActors[layer].Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, _askTimeout, cancel),
            CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default).Unwrap();
        _weights[layer] = ask;
        _lastAsk = ask;
    }

    public async Task LoadAsync(int step, CancellationToken cancel)
    {
        int layer = LayerAt(step);
        LayerActor.HostWeights? weights = null;
        if (!(Backward && _pass.Batch.DeviceWeights.ContainsKey(layer)))
        {
            if (!_weights.TryRemove(layer, out var asked)) throw new InvalidOperationException($"layer {layer} was loaded before it was admitted");
            weights = await asked.ConfigureAwait(false);
        }
        using var lease = weights?.Lease;
        await _device.OnTransferThread(() =>
        {
            cancel.ThrowIfCancellationRequested();
            var def = _model.Layers[layer];
            double start = Now;
            if (weights is null)
            {
                // Left on the device by the forward pass: taken, so the pass frees it with its own.
                if (!_pass.Batch.DeviceWeights.TryRemove(layer, out var kept)) throw new InvalidOperationException($"layer {layer}'s kept weights are gone");
                _resident[layer] = kept;
            }
            else
            {
                var placed = _device.Upload(weights.Tensors, $"layer {layer} ({def.Name}) weights");
                _resident[layer] = placed;
                Interlocked.Add(ref _bytesTransferred, placed.TransferredBytes);
            }
            if (Backward)
            {
                // The saved inputs come back with the weights; layer 0's are the ids, already on the device as the labels (a
                // classifier's pixels are not, nor a later stage's input activations: they come back as saved inputs).
                if (layer > 0 || StageInput || !_pass.Batch.LabelsAreInput)
                {
                    var saved = _device.Upload([.. Enumerable.Range(0, Micro).Select(m => ($"{m}", _pass.Batch.Input(m, layer)))],
                        $"the saved inputs of layer {layer} ({def.Name})");
                    _savedOnDevice[layer] = saved;
                    Interlocked.Add(ref _bytesTransferred, saved.Bytes);
                }
            }
            _loadStart[layer] = start;
            _loadSeconds[layer] = Now - start;
            return 0;
        }).ConfigureAwait(false);
    }

    public async Task ComputeAsync(int step, IReadOnlyList<int> evictAfter, CancellationToken cancel)
    {
        int layer = LayerAt(step);
        var grads = await _device.OnComputeThread(() =>
        {
            cancel.ThrowIfCancellationRequested();
            double start = Now;
            var result = Backward ? BackwardLayer(layer) : ForwardLayer(layer);
            _computeStart[layer] = start;
            _computeSeconds[layer] = Now - start;
            double evictAt = Now;
            foreach (var e in evictAfter)
            {
                int evicted = LayerAt(e);
                if (_resident.TryRemove(evicted, out var placed)) placed.Dispose();
                _evictAt[evicted] = evictAt;
            }
            return result;
        }).ConfigureAwait(false);
        if (grads is null) return;
        try
        {
            await _pass.Gradients!(layer, grads).ConfigureAwait(false);
        }
        finally
        {
            foreach (var micro in grads)
                foreach (var (_, g) in micro) g.Dispose();
        }
    }

    /// <summary>Every micro-batch through <paramref name="layer"/> without grad; the output is saved to the host as the next
    /// layer's input and stays on the device as the activation.</summary>
    IReadOnlyList<IReadOnlyList<(string, Tensor)>>? ForwardLayer(int layer)
    {
        var def = _model.Layers[layer];
        var (inShape, _) = _activations[layer];
        var (shape, dtype) = _activations[layer + 1];
        for (int m = 0; m < Micro; m++)
        {
            var reservation = _device.ReserveFor(shape, dtype, $"the output of layer {layer} ({def.Name})");
            Tensor output;
            try
            {
                using var workspace = _device.Memory.Reserve(def.WorkspaceBytes(inShape), $"the workspace of layer {layer} ({def.Name})");
                using var scope = NewDisposeScope();
                using var noGrad = no_grad(); // not inference mode: the saved copies are read again under autograd
                var y = def.Forward(_resident[layer].Tensors, _carried[m]!.Tensor);
                CheckShape(layer, def, y, shape, dtype);
                output = y.MoveToOuterDisposeScope();
                _pass.Batch.Save(m, layer + 1, _device.ToHost(y).DetachFromDisposeScope());
            }
            catch
            {
                reservation.Dispose();
                throw;
            }
            _carried[m]!.Dispose();
            _carried[m] = new Activation(output, reservation);
        }
        return null;
    }

    /// <summary>Every micro-batch's backward through <paramref name="layer"/>: recompute from the saved input with grad-tracked
    /// weights, backpropagate (from the loss for the head), keep the input's gradient, return the parameter gradients on the host.</summary>
    IReadOnlyList<IReadOnlyList<(string, Tensor)>> BackwardLayer(int layer)
    {
        var def = _model.Layers[layer];
        bool head = layer == _model.Layers.Count - 1 && _pass.Batch.EndsWithHead, inputGrad = layer > 0 || StageInput;
        var (inShape, _) = _activations[layer];
        var output = _activations[layer + 1];
        long workspaceBytes = TrainingCosts.BackwardWorkspaceBytes(def, inShape, output);
        long paramGradBytes = def.Parameters.Sum(p => TensorBytes.Of([.. p.Shape], ScalarType.Float32));
        var all = new List<IReadOnlyList<(string, Tensor)>>(Micro);
        try
        {
            for (int m = 0; m < Micro; m++)
            {
                var x = inputGrad || !_pass.Batch.LabelsAreInput ? _savedOnDevice[layer][$"{m}"] : _labels![$"{m}"];
                var inGradReservation = inputGrad
                    ? _device.Memory.Reserve(TrainingCosts.GradientBytes(inShape), $"the input gradient of layer {layer} ({def.Name})")
                    : null;
                Tensor? inGrad = null;
                try
                {
                    using var paramGrads = _device.Memory.Reserve(paramGradBytes, $"the parameter gradients of layer {layer} ({def.Name})");
                    using var workspace = _device.Memory.Reserve(workspaceBytes, $"the backward workspace of layer {layer} ({def.Name})");
                    using var scope = NewDisposeScope();
                    using var grad = enable_grad();
                    var names = def.Parameters.Select(p => p.Name).ToArray();
                    var w = names.ToDictionary(n => n, n => _resident[layer][n].detach().requires_grad_(true), StringComparer.Ordinal);
                    var xin = inputGrad ? x.detach().requires_grad_(true) : x;
                    var y = def.Forward(w, xin);
                    CheckShape(layer, def, y, output.Shape, output.DType);
                    var wrt = names.Select(n => w[n]).Concat(inputGrad ? [xin] : []).ToArray();
                    IList<Tensor> grads;
                    if (head)
                    {
                        var loss = TrainingLoss.Of(_pass.Batch.Objective, y, _labels![$"{m}"]);
                        float value = loss.item<float>();
                        if (!float.IsFinite(value))
                            throw new TrainingLossException($"the loss of micro-batch {m} is {value}; training stops before this step's update");
                        _pass.Batch.Losses[m] = value;
                        grads = autograd.grad([Micro > 1 ? loss / Micro : loss], wrt);
                    }
                    else
                    {
                        grads = autograd.grad([y], wrt, [_carried[m]!.Tensor]);
                    }
                    var host = names.Select((n, i) => (n, _device.ToHost(grads[i]).DetachFromDisposeScope())).ToArray();
                    all.Add(host);
                    if (inputGrad) inGrad = grads[^1].detach().MoveToOuterDisposeScope();
                }
                catch
                {
                    inGradReservation?.Dispose();
                    throw;
                }
                _carried[m]?.Dispose();
                _carried[m] = inGrad is null ? null : new Activation(inGrad, inGradReservation!);
                if (layer == 0 && _carried[m] is { } stageInputGrad) // a stage's input gradient goes to the host, for the previous stage
                {
                    using (var copy = NewDisposeScope()) _pass.Batch.InputGradients[m] = _device.ToHost(stageInputGrad.Tensor).DetachFromDisposeScope();
                    stageInputGrad.Dispose();
                    _carried[m] = null;
                }
            }
        }
        catch
        {
            foreach (var micro in all)
                foreach (var (_, g) in micro) g.Dispose();
            throw;
        }
        if (_savedOnDevice.TryRemove(layer, out var saved)) saved.Dispose(); // done with: its bytes go back before the next layer
        return all;
    }

    static void CheckShape(int layer, Layer def, Tensor y, long[] shape, ScalarType dtype)
    {
        if (!y.shape.SequenceEqual(shape) || y.dtype != dtype)
            throw new InvalidOperationException(
                $"layer {layer} ({def.Name}) produced {y.dtype}[{string.Join(",", y.shape)}], expected {dtype}[{string.Join(",", shape)}]");
    }

    /// <summary>Every step ran. A forward pass hands its pinned layers' device weights to the step (<see cref="TrainingBatch.DeviceWeights"/>)
    /// for its backward pass, instead of freeing them.</summary>
    public Task EndAsync(CancellationToken cancel) => _device.OnComputeThread(() =>
    {
        _clock.Stop();
        if (!Backward)
            foreach (var layer in _pinned)
                if (_resident.TryRemove(layer, out var placed)) _pass.Batch.DeviceWeights[layer] = placed;
        Succeeded = true;
        return 0;
    });

    /// <summary>True once every step ran.</summary>
    public bool Succeeded { get; private set; }

    public Task FreeAllAsync() => _device.OnComputeThread(() =>
    {
        foreach (var layer in _weights.Keys.ToArray())
            if (_weights.TryRemove(layer, out var asked))
                asked.ContinueWith(t => { if (t.IsCompletedSuccessfully) t.Result.Lease?.Dispose(); }, TaskScheduler.Default);
        foreach (var layer in _resident.Keys.ToArray())
            if (_resident.TryRemove(layer, out var placed)) placed.Dispose();
        foreach (var layer in _savedOnDevice.Keys.ToArray())
            if (_savedOnDevice.TryRemove(layer, out var saved)) saved.Dispose();
        for (int m = 0; m < _carried.Length; m++)
        {
            _carried[m]?.Dispose();
            _carried[m] = null;
        }
        _labels?.Dispose();
        _labels = null;
        return 0;
    });

    double Now => _clock.Elapsed.TotalSeconds;

    public PassReport Report(int window, int swap)
    {
        var timings = Enumerable.Range(0, Layers).Select(LayerAt).Select(i => new LayerTiming(i, _model.Layers[i].Name, _model.Layers[i].Bytes,
            _loadStart[i], _loadSeconds[i], _computeStart[i], _computeSeconds[i], _evictAt[i])).ToImmutableArray();
        return new PassReport(_device.Name, Layers, window, swap, _model.Bytes, _device.Memory.Capacity,
            _device.Memory.Peak - _reservedBefore, Interlocked.Read(ref _bytesTransferred), _clock.Elapsed.TotalSeconds,
            PassReport.LowerBound(timings), timings) { MicroBatches = Micro };
    }

    sealed class Activation(Tensor tensor, IDisposable reservation) : IDisposable
    {
        public Tensor Tensor { get; } = tensor;
        public void Dispose()
        {
            Tensor.Dispose();
            reservation.Dispose();
        }
    }
}

/// <summary>The loss came out NaN or infinite: the step is abandoned before its update.</summary>
public sealed class TrainingLossException(string message) : InvalidOperationException(message);
