using System.Diagnostics;
using Superpipeline.Contracts;
using Superpipeline.Engine;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using static TorchSharp.torch;

namespace Superpipeline.Coordinator.Bench;

/// <summary>One pass of the hand-written loop: its wall seconds (first upload to output on host), the output's SHA-256,
/// the sum of the layers' compute, the compute thread's idle time between layers, and when the first compute started.</summary>
public sealed record HandPass(double Seconds, string Sha256, double ComputeSeconds, double GapSeconds, double FirstComputeAt);

/// <summary>The reference the engine's overhead is measured against: a resident pass written by hand with TorchSharp on
/// the same device, with nothing around it. Its host weights and input are made once, on a device thread (as the
/// LayerActors hold theirs before a pass starts), and freed on dispose.</summary>
public sealed class HandLoop : IAsyncDisposable
{
    readonly Accelerator _device;
    readonly LayeredModel _model;
    readonly (string Name, Tensor Host)[][] _weights;
    readonly Tensor _input;

    HandLoop(Accelerator device, LayeredModel model, (string Name, Tensor Host)[][] weights, Tensor input, int torchThreads)
    {
        _device = device;
        _model = model;
        _weights = weights;
        _input = input;
        TorchThreads = torchThreads;
    }

    /// <summary>TorchSharp's intra-op threads, as the device threads see them.</summary>
    public int TorchThreads { get; }

    public static async Task<HandLoop> CreateAsync(Accelerator device, ModelSpec spec, LayeredModel model)
    {
        var source = ModelCatalog.Weights(spec);
        var (weights, input, threads) = await device.OnTransferThread(() =>
        {
            var w = model.Layers.Select(l =>
            {
                var loaded = source.Load(l);
                return l.Parameters.Select(p => (p.Name, loaded[p.Name])).ToArray();
            }).ToArray();
            return (w, model.MakeInput(spec.Seed), get_num_threads());
        });
        return new HandLoop(device, model, weights, input, threads);
    }

    /// <summary>The hand-written loop: the work of a resident pass with nothing around it. Every upload (input, then
    /// each layer) is queued on the transfer thread at once, as a plain program would; one compute-thread item runs the
    /// layers in order, each as soon as its weights are on the device, frees the weights after the last layer, and
    /// copies the output to host. The stopwatch covers what the engine's wall time covers (first upload to output on host).</summary>
    public async Task<HandPass> PassAsync()
    {
        var (device, model, weights, input) = (_device, _model, _weights, _input);
        int n = model.Layers.Count;
        var clock = Stopwatch.StartNew();
        var placedInput = device.OnTransferThread(() => device.Upload([("input", input)], "the hand loop's input"));
        var uploads = new Task<DeviceTensors>[n];
        for (int i = 0; i < n; i++)
        {
            int layer = i;
            uploads[i] = device.OnTransferThread(() => device.Upload(weights[layer], $"hand loop layer {layer}"));
        }
        try
        {
            return await device.OnComputeThread(() =>
            {
                var inputOnDevice = placedInput.GetAwaiter().GetResult();
                Tensor x = inputOnDevice["input"];
                Tensor? produced = null;
                double computeSeconds = 0, gapSeconds = 0, firstComputeAt = 0, lastEnd = 0;
                try
                {
                    for (int i = 0; i < n; i++)
                    {
                        var w = uploads[i].GetAwaiter().GetResult();
                        Tensor y;
                        double start = clock.Elapsed.TotalSeconds;
                        if (i == 0) firstComputeAt = start; else gapSeconds += start - lastEnd;
                        {
                            using var scope = NewDisposeScope();
                            using var _ = inference_mode();
                            y = model.Layers[i].Forward(w.Tensors, x).MoveToOuterDisposeScope();
                        }
                        lastEnd = clock.Elapsed.TotalSeconds;
                        computeSeconds += lastEnd - start;
                        if (produced is null) inputOnDevice.Dispose(); else produced.Dispose();
                        produced = y;
                        x = y;
                    }
                    foreach (var u in uploads) u.Result.Dispose();
                    using var onHost = device.ToHost(x);
                    double seconds = clock.Elapsed.TotalSeconds;
                    return new HandPass(seconds, TensorBytes.Sha256(onHost), computeSeconds, gapSeconds, firstComputeAt);
                }
                finally
                {
                    produced?.Dispose();
                    inputOnDevice.Dispose();
                }
            });
        }
        finally
        {
            // On any failure, whatever was uploaded is freed too (DeviceTensors.Dispose is idempotent).
            foreach (var u in uploads.Prepend(placedInput))
            {
                try { (await u).Dispose(); } catch { /* the failure is already on its way */ }
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _device.OnTransferThread(() =>
        {
            foreach (var layer in _weights) foreach (var (_, t) in layer) t.Dispose();
            _input.Dispose();
            return 0;
        });
    }
}
