namespace Superpipeline.Engine.Checkpoints;

/// <summary>The host bytes that weights read from disk (the disk tier) may hold at once, shared by every layer a node reads.
/// A read asks for its layer's bytes before it starts and holds them until the device copy is made (disposing its lease).
/// Requests are served in arrival order: a later, smaller one never overtakes an earlier one, so the layer the window needs
/// first is read first and a pass cannot wait on a layer queued behind its own later ones. Thread-safe.</summary>
public sealed class HostWeightBudget
{
    readonly Lock _gate = new();
    readonly LinkedList<(long Bytes, TaskCompletionSource<IDisposable> Granted)> _waiting = new();
    readonly List<Meter> _meters = [];
    long _held;
    long _peak;

    public HostWeightBudget(long capacityBytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacityBytes, 1);
        Capacity = capacityBytes;
    }

    /// <summary>Most bytes held at once.</summary>
    public long Capacity { get; }

    /// <summary>Bytes held now by reads in progress and by weights read but not yet copied to a device.</summary>
    public long Held { get { lock (_gate) return _held; } }

    /// <summary>The most bytes ever held at once.</summary>
    public long Peak { get { lock (_gate) return _peak; } }

    /// <summary>Waits (first come, first served) until <paramref name="bytes"/> fit beside what is held, then takes them; dispose
    /// the result to give them back. A request above <see cref="Capacity"/> can never fit and is refused at once, naming
    /// <paramref name="what"/>.</summary>
    public Task<IDisposable> AcquireAsync(long bytes, string what, CancellationToken cancel = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        if (bytes > Capacity)
            throw new ArgumentException($"{what} needs {bytes:N0} bytes of host memory, more than the host memory of {Capacity:N0} bytes for weights");
        LinkedListNode<(long, TaskCompletionSource<IDisposable>)> node;
        lock (_gate)
        {
            cancel.ThrowIfCancellationRequested();
            if (_waiting.Count == 0 && _held + bytes <= Capacity) return Task.FromResult(Take(bytes));
            node = _waiting.AddLast((bytes, new TaskCompletionSource<IDisposable>(TaskCreationOptions.RunContinuationsAsynchronously)));
        }
        var granted = node.Value.Item2;
        if (cancel.CanBeCanceled)
        {
            var registration = cancel.Register(() =>
            {
                lock (_gate)
                {
                    if (node.List is null) return; // granted meanwhile: the lease is the caller's to dispose
                    _waiting.Remove(node);
                    GrantWaiting(); // the first waiter may have been the one that did not fit
                }
                granted.TrySetCanceled(cancel);
            });
            granted.Task.ContinueWith(_ => registration.Dispose(), TaskScheduler.Default);
        }
        return granted.Task;
    }

    /// <summary>Starts measuring the most bytes held from now until the meter is disposed.</summary>
    public Meter Measure()
    {
        lock (_gate)
        {
            var meter = new Meter(this, _held);
            _meters.Add(meter);
            return meter;
        }
    }

    IDisposable Take(long bytes)
    {
        _held += bytes;
        _peak = Math.Max(_peak, _held);
        foreach (var m in _meters) m.Saw(_held);
        return new Lease(this, bytes);
    }

    void Release(long bytes)
    {
        lock (_gate)
        {
            _held -= bytes;
            GrantWaiting();
        }
    }

    void GrantWaiting()
    {
        while (_waiting.First is { } first && _held + first.Value.Bytes <= Capacity)
        {
            _waiting.RemoveFirst();
            first.Value.Granted.TrySetResult(Take(first.Value.Bytes)); // continuations run asynchronously, outside the lock
        }
    }

    /// <summary>The most bytes held while it was open.</summary>
    public sealed class Meter : IDisposable
    {
        readonly HostWeightBudget _budget;
        long _peak;

        internal Meter(HostWeightBudget budget, long held) { _budget = budget; _peak = held; }

        public long Peak { get { lock (_budget._gate) return _peak; } }

        internal void Saw(long held) => _peak = Math.Max(_peak, held);

        public void Dispose() { lock (_budget._gate) _budget._meters.Remove(this); }
    }

    sealed class Lease(HostWeightBudget budget, long bytes) : IDisposable
    {
        int _released;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0) budget.Release(bytes);
        }
    }
}
