using System.Collections.Concurrent;
using Akka.Streams;
using Akka.Streams.Dsl;
using Superpipeline.Engine.Policy;

namespace Superpipeline.Workers;

/// <summary>What a pass does at each step, on a real device or in virtual time. Each method returns a task
/// that completes when the step is done (on the device, or at its virtual completion time).</summary>
public interface IPassBackend
{
    int Layers { get; }
    /// <summary>Layer <paramref name="layer"/> was admitted and is next to load: a backend may start work that does
    /// not hold device bytes (the real one asks the LayerActor for its weights), so the copy can start the moment
    /// the link frees.</summary>
    void Admitted(int layer, CancellationToken cancel);
    /// <summary>Puts the pass input on the device.</summary>
    Task BeginAsync(CancellationToken cancel);
    /// <summary>Loads layer <paramref name="layer"/>'s weights onto the device (reserving its bytes first).</summary>
    Task LoadAsync(int layer, CancellationToken cancel);
    /// <summary>Computes layer <paramref name="layer"/>, then evicts <paramref name="evictAfter"/> (possibly empty).</summary>
    Task ComputeAsync(int layer, IReadOnlyList<int> evictAfter, CancellationToken cancel);
    /// <summary>Brings the output back to the host.</summary>
    Task EndAsync(CancellationToken cancel);
    /// <summary>Frees whatever the pass still holds on the device. Called once, after every step it started has ended.</summary>
    Task FreeAllAsync();
}

/// <summary>One forward pass, streamed as ARCHITECTURE.md draws it: layer order → admission by the
/// <see cref="LoadGate"/> (k slots for Superpipeline) → load → buffer → compute → evict the group the compute
/// closes and return its slots. Demand flows upstream through Akka.Streams; the gate bounds what is resident.
/// The buffer holds as many loaded layers as the window allows, so the gate alone sets how far loads run ahead
/// (k − k' in steady state, more while a group is filling): the schedule is then exactly the one
/// <c>PassSimulator</c> computes. Whether the pass succeeds or fails, every step it started has ended and the
/// backend has freed everything before the returned task ends.</summary>
public static class PassStream
{
    public static async Task RunAsync(IPassBackend backend, LoadGate gate, IMaterializer materializer, CancellationToken stop = default)
    {
        var admission = new Admission(gate);
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(stop);
        using var onStop = stop.Register(admission.Fail); // a stopped pass ends at the next step, freeing what it holds
        var started = new ConcurrentQueue<Task>();
        Task Track(Task t) { started.Enqueue(t); return t; }
        try
        {
            await Track(backend.BeginAsync(cancel.Token)).ConfigureAwait(false);
            await Source.From(Enumerable.Range(0, backend.Layers))
                .SelectAsync(1, async layer =>
                {
                    await admission.AdmitAsync(layer, cancel.Token).ConfigureAwait(false);
                    backend.Admitted(layer, cancel.Token);
                    return layer;
                })
                .SelectAsync(1, async layer =>
                {
                    await Track(backend.LoadAsync(layer, cancel.Token)).ConfigureAwait(false);
                    return layer;
                })
                .Buffer(gate.MaxResidentLayers, OverflowStrategy.Backpressure)
                .SelectAsync(1, async layer =>
                {
                    var group = admission.GroupClosedBy(layer);
                    await Track(backend.ComputeAsync(layer, group, cancel.Token)).ConfigureAwait(false);
                    admission.Computed(layer, group);
                    return layer;
                })
                .RunWith(Sink.Ignore<int>(), materializer).ConfigureAwait(false);
            await Track(backend.EndAsync(cancel.Token)).ConfigureAwait(false);
        }
        catch
        {
            cancel.Cancel();
            admission.Fail();
            throw;
        }
        finally
        {
            foreach (var t in started)
            {
                try { await t.ConfigureAwait(false); }
                catch { /* the pass's own error is already on its way */ }
            }
            await backend.FreeAllAsync().ConfigureAwait(false);
        }
    }

    /// <summary>The gate behind a lock, with at most one waiter (the admission stage runs one layer at a time).
    /// Waiters resume synchronously on the thread that freed room, so virtual-time runs settle without hops.</summary>
    sealed class Admission(LoadGate gate)
    {
        readonly object _lock = new();
        (int Layer, TaskCompletionSource<int> Done)? _waiter;

        public Task<int> AdmitAsync(int layer, CancellationToken cancel)
        {
            lock (_lock)
            {
                cancel.ThrowIfCancellationRequested();
                if (gate.CanAdmit(layer))
                {
                    gate.Admit(layer);
                    return Task.FromResult(layer);
                }
                var done = new TaskCompletionSource<int>();
                _waiter = (layer, done);
                return done.Task;
            }
        }

        public IReadOnlyList<int> GroupClosedBy(int layer)
        {
            lock (_lock) return gate.GroupClosedBy(layer);
        }

        public void Computed(int layer, IReadOnlyList<int> evicted)
        {
            TaskCompletionSource<int>? wake = null;
            int admitted = -1;
            lock (_lock)
            {
                gate.Computed(layer, evicted);
                if (_waiter is { } w && gate.CanAdmit(w.Layer))
                {
                    gate.Admit(w.Layer);
                    (admitted, wake) = (w.Layer, w.Done);
                    _waiter = null;
                }
            }
            wake?.SetResult(admitted);
        }

        public void Fail()
        {
            TaskCompletionSource<int>? w;
            lock (_lock) { w = _waiter?.Done; _waiter = null; }
            w?.TrySetCanceled();
        }
    }
}
