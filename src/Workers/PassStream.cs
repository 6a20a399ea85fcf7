using System.Collections.Concurrent;
using System.Collections.Immutable;
using System.Diagnostics;
using Akka.Actor;
using Akka.Streams;
using Akka.Streams.Dsl;
using Superpipeline.Engine;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Messages;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>One forward pass on one device, streamed as ARCHITECTURE.md draws it:
/// layer order → acquire one of k slots → ask the LayerActor and copy host→device (transfer thread) →
/// buffer of k − k' → compute on the device thread → every k' computed layers, free their bytes and slots.
/// Demand flows upstream through Akka.Streams; the slot pool bounds residency whatever the stages buffer.
/// Whether the pass succeeds or fails, every byte it reserved is freed before the returned task ends.</summary>
public sealed class PassStream
{
    readonly IDevice _device;
    readonly LayeredModel _model;
    readonly IReadOnlyList<IActorRef> _layerActors;
    readonly StreamPolicy _policy;
    readonly Action<LayerProgress> _progress;
    readonly TimeSpan _askTimeout;
    readonly IReadOnlyList<(long[] Shape, ScalarType DType)> _activations;

    readonly SemaphoreSlim _slots;
    readonly CancellationTokenSource _cancel = new();
    readonly ConcurrentDictionary<int, DeviceTensors> _resident = new();
    readonly ConcurrentBag<Task> _started = [];
    readonly Stopwatch _clock = new();
    readonly double[] _loadStart, _loadSeconds, _computeStart, _computeSeconds, _evictAt;
    readonly List<int> _computedNotEvicted = []; // compute thread only
    long _bytesTransferred;
    Activation? _activation; // compute thread only (and the final clean-up, which runs there too)

    PassStream(IDevice device, LayeredModel model, IReadOnlyList<IActorRef> layerActors, StreamPolicy policy, Action<LayerProgress> progress, TimeSpan askTimeout)
    {
        if (layerActors.Count != model.Layers.Count)
            throw new ArgumentException($"{layerActors.Count} layer actors for {model.Layers.Count} layers");
        _device = device;
        _model = model;
        _layerActors = layerActors;
        _policy = policy;
        _progress = progress;
        _askTimeout = askTimeout;
        _activations = model.ActivationShapes();
        _slots = new SemaphoreSlim(policy.Window, policy.Window);
        int n = model.Layers.Count;
        _loadStart = new double[n]; _loadSeconds = new double[n]; _computeStart = new double[n]; _computeSeconds = new double[n];
        _evictAt = Enumerable.Repeat(-1.0, n).ToArray();
    }

    /// <summary>Runs the pass; returns the output as a host tensor (the caller owns it) and the pass report.</summary>
    public static Task<(Tensor Output, PassReport Report)> Run(IDevice device, LayeredModel model, IReadOnlyList<IActorRef> layerActors,
        Tensor input, StreamPolicy policy, IMaterializer materializer, Action<LayerProgress>? progress = null, TimeSpan? askTimeout = null) =>
        new PassStream(device, model, layerActors, policy, progress ?? (_ => { }), askTimeout ?? TimeSpan.FromSeconds(30)).RunAsync(input, materializer);

    async Task<(Tensor, PassReport)> RunAsync(Tensor input, IMaterializer materializer)
    {
        var expected = _model.InputShape;
        if (!input.shape.SequenceEqual(expected) || input.dtype != _model.InputDType)
            throw new ArgumentException($"input must be {_model.InputDType}[{string.Join(", ", expected)}], got {input.dtype}[{string.Join(", ", input.shape)}]");

        long reservedBefore = _device.Memory.Reserved;
        _device.Memory.ResetPeak();
        _clock.Start();
        try
        {
            _activation = await Track(_device.OnTransferThread(() => UploadInput(input)));
            var loaded = Source.From(Enumerable.Range(0, _model.Layers.Count))
                .SelectAsync(1, AcquireSlot)
                .SelectAsync(1, Load);
            if (_policy.PrefetchDepth > 0)
                loaded = loaded.Buffer(_policy.PrefetchDepth, OverflowStrategy.Backpressure);
            await loaded
                .SelectAsync(1, i => Track(_device.OnComputeThread(() => Compute(i))))
                .RunWith(Sink.Ignore<int>(), materializer);
            var output = await Track(_device.OnComputeThread(() => _device.ToHost(_activation!.Tensor)));
            _clock.Stop();
            return (output, Report(reservedBefore));
        }
        catch
        {
            _cancel.Cancel();
            throw;
        }
        finally
        {
            await FreeEverything();
        }
    }

    async Task<int> AcquireSlot(int layer)
    {
        await _slots.WaitAsync(_cancel.Token);
        return layer;
    }

    async Task<int> Load(int layer)
    {
        var weights = await Track(_layerActors[layer].Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, _askTimeout, _cancel.Token));
        return await Track(_device.OnTransferThread(() => Upload(layer, weights)));
    }

    Activation UploadInput(Tensor input)
    {
        var placed = _device.Upload([("input", input)], "the pass input");
        Interlocked.Add(ref _bytesTransferred, placed.Bytes);
        return new Activation(placed["input"], placed);
    }

    int Upload(int layer, LayerActor.HostWeights weights)
    {
        _cancel.Token.ThrowIfCancellationRequested();
        var def = _model.Layers[layer];
        double start = _clock.Elapsed.TotalSeconds;
        var placed = _device.Upload(weights.Tensors, $"layer {layer} ({def.Name}) weights");
        _resident[layer] = placed;
        Interlocked.Add(ref _bytesTransferred, placed.Bytes);
        _loadStart[layer] = start;
        _loadSeconds[layer] = _clock.Elapsed.TotalSeconds - start;
        _progress(new LayerProgress(layer, _model.Layers.Count, LayerPhase.Loaded, _clock.Elapsed.TotalSeconds));
        return layer;
    }

    int Compute(int layer)
    {
        _cancel.Token.ThrowIfCancellationRequested();
        var def = _model.Layers[layer];
        var (shape, dtype) = _activations[layer + 1];
        double start = _clock.Elapsed.TotalSeconds;
        var reservation = _device.ReserveFor(shape, dtype, $"the output of layer {layer} ({def.Name})");
        Tensor output;
        try
        {
            using var scope = NewDisposeScope();
            using var noGrad = inference_mode();
            var y = def.Forward(_resident[layer].Tensors, _activation!.Tensor);
            if (!y.shape.SequenceEqual(shape) || y.dtype != dtype)
                throw new InvalidOperationException($"layer {layer} ({def.Name}) produced {y.dtype}[{string.Join(",", y.shape)}], expected {dtype}[{string.Join(",", shape)}]");
            output = y.MoveToOuterDisposeScope();
        }
        catch
        {
            reservation.Dispose();
            throw;
        }
        _activation.Dispose();
        _activation = new Activation(output, reservation);
        _computeStart[layer] = start;
        _computeSeconds[layer] = _clock.Elapsed.TotalSeconds - start;
        _progress(new LayerProgress(layer, _model.Layers.Count, LayerPhase.Computed, _clock.Elapsed.TotalSeconds));

        _computedNotEvicted.Add(layer);
        if (_computedNotEvicted.Count == _policy.Swap || layer == _model.Layers.Count - 1)
            EvictGroup();
        return layer;
    }

    /// <summary>Frees the k' layers just computed and returns their slots: the next k' loads may start.</summary>
    void EvictGroup()
    {
        foreach (var layer in _computedNotEvicted)
        {
            if (_resident.TryRemove(layer, out var placed)) placed.Dispose();
            _evictAt[layer] = _clock.Elapsed.TotalSeconds;
            _progress(new LayerProgress(layer, _model.Layers.Count, LayerPhase.Evicted, _evictAt[layer]));
        }
        _slots.Release(_computedNotEvicted.Count);
        _computedNotEvicted.Clear();
    }

    Task<T> Track<T>(Task<T> task)
    {
        _started.Add(task);
        return task;
    }

    /// <summary>Waits for every load and compute this pass started (they finish or see the cancellation),
    /// then frees whatever is still on the device, on the compute thread.</summary>
    async Task FreeEverything()
    {
        try { await Task.WhenAll(_started); } catch { /* the pass's error is already on its way */ }
        await _device.OnComputeThread(() =>
        {
            foreach (var layer in _resident.Keys.ToArray())
                if (_resident.TryRemove(layer, out var placed)) placed.Dispose();
            _activation?.Dispose();
            _activation = null;
            return 0;
        });
        _cancel.Dispose();
        _slots.Dispose();
    }

    PassReport Report(long reservedBefore)
    {
        int n = _model.Layers.Count;
        var timings = Enumerable.Range(0, n).Select(i => new LayerTiming(i, _model.Layers[i].Name, _model.Layers[i].Bytes,
            _loadStart[i], _loadSeconds[i], _computeStart[i], _computeSeconds[i], _evictAt[i])).ToImmutableArray();
        double lowerBound = Math.Max(_loadSeconds.Sum(), _computeSeconds.Sum());
        return new PassReport(_device.Name, n, _policy.Window, _policy.Swap, _model.Bytes, _device.Memory.Capacity,
            _device.Memory.Peak - reservedBefore, Interlocked.Read(ref _bytesTransferred), _clock.Elapsed.TotalSeconds, lowerBound, timings);
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
