using System.Collections.Concurrent;
using System.Collections.Immutable;
using System.Diagnostics;
using Akka.Actor;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Generation;
using Superpipeline.Engine.Models;
using Superpipeline.Contracts;
using Superpipeline.Messages;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>A pass on a real device: weights are asked of each LayerActor and copied on the device's transfer
/// thread; layers compute on its compute thread; all bytes go through the device's exact accounting. A generation step
/// (<see cref="GenerationStep"/>) runs the layers' step forward over its KV caches: on the device for the session
/// (<see cref="DeviceKvSession"/>), or brought from the LayerActor with the weights and written back after the compute.</summary>
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
    readonly GenerationStep? _step;
    readonly DeviceKvSession? _kvSession;
    readonly ConcurrentDictionary<int, Task<LayerActor.HostKv>> _kvAsked = new();
    readonly ConcurrentDictionary<int, (KvBuffer Host, DeviceTensors Past)> _kvBrought = new(); // host placement, per loaded layer
    DeviceTensors? _stepTensors;
    StepContext? _deviceStep;
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
        Action<LayerProgress>? progress, TimeSpan askTimeout, GenerationStep? step = null, DeviceKvSession? kvSession = null,
        IReadOnlySet<int>? pinned = null, IReadOnlyDictionary<int, DeviceTensors>? warm = null, Action<int, DeviceTensors>? keep = null)
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
        if (step is not null && (inputs.Count != 1 || step.Context.Batch != inputs[0].shape[0] || step.Context.Tokens != inputs[0].shape[1]))
            throw new ArgumentException($"a generation step takes one input of [{step.Context.Batch}, {step.Context.Tokens}, ...] (ids, or activations)");
        if (step is { Placement: KvPlacement.Device } && kvSession is null)
            throw new ArgumentException("a generation step with its KV cache on the device needs the session's caches");
        // A generation step's input follows the step ([B, T] prefill, [B, 1] decode), and so does its dtype (a family's prefill may
        // carry more than ids: LLaVA's float [B, T, 1 + H]; the first layer's shape check refuses what it cannot take); the model's
        // own shape and dtype are for plain passes.
        var inputShape = step is null ? model.InputShape : inputs[0].shape;
        var inputDType = step is null ? model.InputDType : inputs[0].dtype;
        foreach (var input in inputs)
            if (!input.shape.SequenceEqual(inputShape) || input.dtype != inputDType)
                throw new ArgumentException(
                    $"input must be {inputDType}[{string.Join(", ", inputShape)}], got {input.dtype}[{string.Join(", ", input.shape)}]");
        _device = device;
        _model = model;
        _layerActors = layerActors;
        _inputs = inputs;
        _microBatches = new Activation?[inputs.Count];
        _progress = progress ?? (_ => { });
        _askTimeout = askTimeout;
        _step = step;
        _kvSession = kvSession;
        _activations = step is null ? model.ActivationShapes() : StepShapes(model, inputShape, inputDType, step.Context);
        _workspace = step is null
            ? [.. model.Layers.Select((l, i) => l.WorkspaceBytes(_activations[i].Shape))]
            : [.. model.Layers.Select((l, i) => l.WorkspaceBytes(_activations[i].Shape, step.Context))];
        int n = model.Layers.Count;
        _loadStart = new double[n]; _loadSeconds = new double[n]; _computeStart = new double[n]; _computeSeconds = new double[n];
        _evictAt = Enumerable.Repeat(-1.0, n).ToArray();
        // A generation session's passes measure from before the session (its device caches count); kept pinned layers count in
        // this pass's peak.
        _reservedBefore = kvSession?.BaselineBytes ?? device.Memory.Reserved - _warm.Values.Sum(w => w.Bytes);
        device.Memory.ResetPeak();
    }

    static IReadOnlyList<(long[] Shape, ScalarType DType)> StepShapes(LayeredModel model, long[] input, ScalarType inputDType, StepContext step)
    {
        var list = new List<(long[], ScalarType)> { (input, inputDType) };
        foreach (var layer in model.Layers)
        {
            var (shape, dtype) = list[^1];
            list.Add((layer.OutputShape(shape, step), layer.OutputDType(dtype)));
        }
        return list;
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
            if (_step is { } step)
            {
                _stepTensors = _device.Upload([("positions", step.Context.Positions), ("mask", step.Context.AttentionMask)],
                    "the generation step's positions and mask");
                Interlocked.Add(ref _bytesTransferred, _stepTensors.Bytes);
                _deviceStep = new StepContext(_stepTensors["positions"], _stepTensors["mask"], step.Context.PastLength, step.Context.LastPositionOnly);
            }
            return 0;
        });
    }

    /// <summary>The last weights asked for: each ask is made once the one before it has been answered, so the layer actors read
    /// (the disk tier) and take host budget in layer order. Asked at once, the actors could take the budget in any order, and a
    /// later layer's read could hold bytes an earlier layer's read waits for, while that later layer's load waits for the earlier
    /// one: a deadlock until the ask times out (it happened with window all, which admits every layer at once).</summary>
    Task _lastAsk = Task.CompletedTask;

    public void Admitted(int layer, CancellationToken cancel)
    {
        if (!_warm.ContainsKey(layer)) // a kept pinned layer is already on the device: no weights to ask for
        {
            var ask = _lastAsk.ContinueWith(
                _ => _layerActors[layer].Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, _askTimeout, cancel),
                CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default).Unwrap();
            _weights[layer] = ask;
            _lastAsk = ask;
        }
        if (_step is { Placement: KvPlacement.Host } step && _model.Layers[layer].Kv is not null)
            _kvAsked[layer] = _layerActors[layer].Ask<LayerActor.HostKv>(
                new LayerActor.GetKv(step.Session, step.Context.Batch, step.Capacity), _askTimeout, cancel);
    }

    public async Task LoadAsync(int layer, CancellationToken cancel)
    {
        if (_warm.ContainsKey(layer))
        {
            var warmKv = _kvAsked.TryRemove(layer, out var warmAsked) ? await warmAsked.ConfigureAwait(false) : null;
            await _device.OnTransferThread(() =>
            {
                cancel.ThrowIfCancellationRequested();
                _loadStart[layer] = Now;
                if (warmKv is not null) BringKv(layer, _model.Layers[layer], warmKv.Cache); // its weights stayed, its host KV comes in
                _loadSeconds[layer] = Now - _loadStart[layer];
                _progress(new LayerProgress(layer, Layers, LayerPhase.Loaded, Now));
                return 0;
            }).ConfigureAwait(false);
            return;
        }
        if (!_weights.TryRemove(layer, out var asked)) throw new InvalidOperationException($"layer {layer} was loaded before it was admitted");
        var weights = await asked.ConfigureAwait(false);
        var hostKv = _kvAsked.TryRemove(layer, out var kvAsked) ? await kvAsked.ConfigureAwait(false) : null;
        using var lease = weights.Lease; // read from disk for this load (the disk tier): dropped once the device copy is made
        await _device.OnTransferThread(() =>
        {
            cancel.ThrowIfCancellationRequested();
            var def = _model.Layers[layer];
            double start = Now;
            var placed = _device.Upload(weights.Tensors, $"layer {layer} ({def.Name}) weights");
            placed.WeightsVersion = weights.Version; // a kept copy is reused only while the layer's weights stay this version
            _resident[layer] = placed;
            Interlocked.Add(ref _bytesTransferred, placed.TransferredBytes); // the stored dtype's bytes: what crossed the link
            if (hostKv is not null) BringKv(layer, def, hostKv.Cache);
            _loadStart[layer] = start;
            _loadSeconds[layer] = Now - start;
            _progress(new LayerProgress(layer, Layers, LayerPhase.Loaded, Now));
            return 0;
        }).ConfigureAwait(false);
    }

    /// <summary>Host placement, on the transfer thread: the filled part of the layer's host cache goes to the device beside its
    /// weights (reserved with them in mind: freed when the layer is evicted).</summary>
    void BringKv(int layer, Layer def, KvBuffer host)
    {
        var (keys, values) = host.Prefix(host.Filled);
        using (keys)
        using (values)
        {
            var past = _device.Upload([("keys", keys), ("values", values)], $"the KV cache of layer {layer} ({def.Name})");
            _kvBrought[layer] = (host, past);
            Interlocked.Add(ref _bytesTransferred, past.Bytes);
        }
    }

    /// <summary>The cache a step forward of <paramref name="layer"/> uses; null for a plain pass or a layer without one.</summary>
    KvCache? CacheFor(int layer, Layer def, Tensor input)
    {
        if (_step is null || def.Kv is not { } layout) return null;
        if (_step.Placement == KvPlacement.Device)
            return _kvSession!.For(layer, def.Name, layout, _step.Context.Batch, _step.Capacity, input, _device.Memory);
        if (!_kvBrought.TryGetValue(layer, out var brought))
            throw new InvalidOperationException($"layer {layer} ({def.Name}) computed before its KV cache was brought in");
        return new KvPast(brought.Past["keys"], brought.Past["values"]);
    }

    Tensor Forward(int layer, Layer def, Tensor input)
    {
        if (_step is null) return def.Forward(_resident[layer].Tensors, input);
        var cache = CacheFor(layer, def, input);
        var y = def.Forward(_resident[layer].Tensors, input, _deviceStep!, cache);
        if (cache is KvPast { NewKeys: { } k, NewValues: { } v } && _kvBrought.TryGetValue(layer, out var brought))
            brought.Host.Write(_device.ToHost(k), _device.ToHost(v)); // the pass's entries go back to the layer's host cache
        return y;
    }

    void Evict(int layer)
    {
        if (_resident.TryRemove(layer, out var placed)) placed.Dispose();
        if (_kvBrought.TryRemove(layer, out var brought)) brought.Past.Dispose();
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
                var y = Forward(layer, def, _microBatches[m]!.Tensor);
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
            Evict(e);
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
        foreach (var layer in _weights.Keys.ToArray()) // asked at admission, never loaded: a disk-tier read is dropped when it lands
            if (_weights.TryRemove(layer, out var asked))
                asked.ContinueWith(t => { if (t.IsCompletedSuccessfully) t.Result.Lease?.Dispose(); }, TaskScheduler.Default);
        // A pass that succeeded hands its pinned layers to the keeper (when it has one); every other byte is freed.
        bool succeeded = Outputs is not null;
        foreach (var layer in _resident.Keys.ToArray())
            if (succeeded && _keep is not null && _pinned.Contains(layer) && _resident.TryRemove(layer, out var placed)) _keep(layer, placed);
        foreach (var layer in _resident.Keys.Concat(_kvBrought.Keys).ToArray()) Evict(layer);
        _stepTensors?.Dispose();
        _stepTensors = null;
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
