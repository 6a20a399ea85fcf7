using System.Collections.Concurrent;
using System.Collections.Immutable;
using System.Diagnostics;
using Akka.Actor;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using Superpipeline.Contracts;
using Superpipeline.Messages;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>A pass on a real device: weights are asked of each LayerActor and copied on the device's transfer
/// thread; layers compute on its compute thread; all bytes go through the device's exact accounting.</summary>
public sealed class DevicePassBackend : IPassBackend
{
    readonly Accelerator _device;
    readonly LayeredModel _model;
    readonly IReadOnlyList<IActorRef> _layerActors;
    readonly IReadOnlyList<Tensor> _inputs;
    readonly Action<LayerProgress> _progress;
    readonly TimeSpan _askTimeout;
    readonly IReadOnlyList<(long[] Shape, ScalarType DType)> _activations;
    readonly long[] _workspace; // per layer: its temporaries while it computes one micro-batch
    readonly ConcurrentDictionary<int, DeviceTensors> _resident = new();
    readonly ConcurrentDictionary<int, Task<LayerActor.HostWeights>> _weights = new();
    readonly Stopwatch _clock = new();
    readonly double[] _loadStart, _loadSeconds, _computeStart, _computeSeconds, _evictAt;
    readonly long _reservedBefore;
    long _bytesTransferred;
    Activation?[] _microBatches; // one per micro-batch; touched on the device threads only, one step at a time

    readonly IReadOnlySet<int> _pinned;
    readonly IReadOnlyDictionary<int, DeviceTensors> _warm;
    readonly Action<int, DeviceTensors>? _keep;

    /// <param name="pinned">Layers never evicted during the pass (<see cref="Superpipeline.Engine.Policy.LoadGate.Pinned"/>).</param>
    /// <param name="warm">Pinned layers' weights already on the device (kept from an earlier pass): the pass owns them from
    /// now on, uses them instead of loading, and counts their bytes in its peak.</param>
    /// <param name="keep">Where the pinned layers' weights go when the pass succeeds; null, or a failed pass: they are freed.</param>
    public DevicePassBackend(Accelerator device, LayeredModel model, IReadOnlyList<IActorRef> layerActors, IReadOnlyList<Tensor> inputs,
        Action<LayerProgress>? progress, TimeSpan askTimeout, IReadOnlySet<int>? pinned = null,
        IReadOnlyDictionary<int, DeviceTensors>? warm = null, Action<int, DeviceTensors>? keep = null)
    {
        _pinned = pinned ?? new HashSet<int>();
        _warm = warm ?? new Dictionary<int, DeviceTensors>();
        _keep = keep;
        foreach (var (layer, placed) in _warm)
        {
            if (!_pinned.Contains(layer)) throw new ArgumentException($"layer {layer} is kept on the device but not pinned", nameof(warm));
            _resident[layer] = placed; // owned by the pass from here: freed or kept by FreeAllAsync, whatever happens next
        }
        if (layerActors.Count != model.Layers.Count)
            throw new ArgumentException($"{layerActors.Count} layer actors for {model.Layers.Count} layers");
        if (inputs.Count == 0) throw new ArgumentException("a pass needs at least one input");
        foreach (var input in inputs)
            if (!input.shape.SequenceEqual(model.InputShape) || input.dtype != model.InputDType)
                throw new ArgumentException(
                    $"input must be {model.InputDType}[{string.Join(", ", model.InputShape)}], got {input.dtype}[{string.Join(", ", input.shape)}]");
        _device = device;
        _model = model;
        _layerActors = layerActors;
        _inputs = inputs;
        _microBatches = new Activation?[inputs.Count];
        _progress = progress ?? (_ => { });
        _askTimeout = askTimeout;
        _activations = model.ActivationShapes();
        _workspace = [.. model.Layers.Select((l, i) => l.WorkspaceBytes(_activations[i].Shape))];
        int n = model.Layers.Count;
        _loadStart = new double[n]; _loadSeconds = new double[n]; _computeStart = new double[n]; _computeSeconds = new double[n];
        _evictAt = Enumerable.Repeat(-1.0, n).ToArray();
        _reservedBefore = device.Memory.Reserved - _warm.Values.Sum(w => w.Bytes); // kept pinned layers count in this pass's peak
        device.Memory.ResetPeak();
    }

    public int Layers => _model.Layers.Count;

    /// <summary>The outputs (one per input) on the host once the pass succeeded; the caller owns them.</summary>
    public IReadOnlyList<Tensor>? Outputs { get; private set; }

    public Task BeginAsync(CancellationToken cancel)
    {
        _clock.Start();
        return _device.OnTransferThread(() =>
        {
            for (int m = 0; m < _inputs.Count; m++)
            {
                var placed = _device.Upload([("input", _inputs[m])], _inputs.Count == 1 ? "the pass input" : $"the input of micro-batch {m}");
                Interlocked.Add(ref _bytesTransferred, placed.Bytes);
                _microBatches[m] = new Activation(placed["input"], placed);
            }
            return 0;
        });
    }

    public void Admitted(int layer, CancellationToken cancel)
    {
        if (_warm.ContainsKey(layer)) return; // already on the device: nothing to ask for
        _weights[layer] = _layerActors[layer].Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, _askTimeout, cancel);
    }

    public async Task LoadAsync(int layer, CancellationToken cancel)
    {
        if (_warm.ContainsKey(layer))
        {
            cancel.ThrowIfCancellationRequested();
            _loadStart[layer] = Now;
            _progress(new LayerProgress(layer, Layers, LayerPhase.Loaded, Now));
            return;
        }
        if (!_weights.TryRemove(layer, out var asked)) throw new InvalidOperationException($"layer {layer} was loaded before it was admitted");
        var weights = await asked.ConfigureAwait(false);
        await _device.OnTransferThread(() =>
        {
            cancel.ThrowIfCancellationRequested();
            var def = _model.Layers[layer];
            double start = Now;
            var placed = _device.Upload(weights.Tensors, $"layer {layer} ({def.Name}) weights");
            _resident[layer] = placed;
            Interlocked.Add(ref _bytesTransferred, placed.Bytes);
            _loadStart[layer] = start;
            _loadSeconds[layer] = Now - start;
            _progress(new LayerProgress(layer, Layers, LayerPhase.Loaded, Now));
            return 0;
        }).ConfigureAwait(false);
    }

    public Task ComputeAsync(int layer, IReadOnlyList<int> evictAfter, CancellationToken cancel) => _device.OnComputeThread(() =>
    {
        cancel.ThrowIfCancellationRequested();
        var def = _model.Layers[layer];
        var (shape, dtype) = _activations[layer + 1];
        double start = Now;
        for (int m = 0; m < _microBatches.Length; m++)
        {
            var reservation = _device.ReserveFor(shape, dtype, $"the output of layer {layer} ({def.Name})");
            Tensor output;
            try
            {
                // The forward's temporaries live until its scope ends; their bytes are held exactly as long.
                using var workspace = _device.Memory.Reserve(_workspace[layer], $"the workspace of layer {layer} ({def.Name})");
                using var scope = NewDisposeScope();
                using var noGrad = inference_mode();
                var y = def.Forward(_resident[layer].Tensors, _microBatches[m]!.Tensor);
                if (!y.shape.SequenceEqual(shape) || y.dtype != dtype)
                    throw new InvalidOperationException(
                        $"layer {layer} ({def.Name}) produced {y.dtype}[{string.Join(",", y.shape)}], expected {dtype}[{string.Join(",", shape)}]");
                output = y.MoveToOuterDisposeScope();
            }
            catch
            {
                reservation.Dispose();
                throw;
            }
            _microBatches[m]!.Dispose();
            _microBatches[m] = new Activation(output, reservation);
        }
        _computeStart[layer] = start;
        _computeSeconds[layer] = Now - start;
        _progress(new LayerProgress(layer, Layers, LayerPhase.Computed, Now));
        double evictAt = Now; // one time for the group, so the report shows which layers left together
        foreach (var e in evictAfter)
        {
            if (_resident.TryRemove(e, out var placed)) placed.Dispose();
            _evictAt[e] = evictAt;
            _progress(new LayerProgress(e, Layers, LayerPhase.Evicted, evictAt));
        }
        return 0;
    });

    public Task EndAsync(CancellationToken cancel) => _device.OnComputeThread(() =>
    {
        Outputs = _microBatches.Select(a => _device.ToHost(a!.Tensor)).ToArray();
        _clock.Stop();
        return 0;
    });

    public Task FreeAllAsync() => _device.OnComputeThread(() =>
    {
        // A pass that succeeded hands its pinned layers to the keeper (when it has one); every other byte is freed.
        bool succeeded = Outputs is not null;
        foreach (var layer in _resident.Keys.ToArray())
            if (_resident.TryRemove(layer, out var placed))
            {
                if (succeeded && _keep is not null && _pinned.Contains(layer)) _keep(layer, placed);
                else placed.Dispose();
            }
        for (int m = 0; m < _microBatches.Length; m++)
        {
            _microBatches[m]?.Dispose();
            _microBatches[m] = null;
        }
        return 0;
    });

    double Now => _clock.Elapsed.TotalSeconds;

    public PassReport Report(int window, int swap)
    {
        int n = Layers;
        var timings = Enumerable.Range(0, n).Select(i => new LayerTiming(i, _model.Layers[i].Name, _model.Layers[i].Bytes,
            _loadStart[i], _loadSeconds[i], _computeStart[i], _computeSeconds[i], _evictAt[i])).ToImmutableArray();
        return new PassReport(_device.Name, n, window, swap, _model.Bytes, _device.Memory.Capacity,
            _device.Memory.Peak - _reservedBefore, Interlocked.Read(ref _bytesTransferred), _clock.Elapsed.TotalSeconds,
            PassReport.LowerBound(timings), timings)
        {
            Pinned = [.. _pinned.Order()],
            PinnedReused = _warm.Count,
        };
    }

    /// <summary>The live activation on the device with the bytes it holds.</summary>
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
