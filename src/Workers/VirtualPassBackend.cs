using System.Collections.Immutable;
using Akka.Actor;
using Superpipeline.Engine.Simulation;
using Superpipeline.Contracts;
using Superpipeline.Messages;

namespace Superpipeline.Workers;

/// <summary>A pass on a virtual-time device: no tensors move; each step's completion is scheduled on the Akka
/// scheduler at the time the cost model gives (link bandwidth and latency for transfers, FLOPs over the compute
/// rate for compute), and bytes are accounted in a <see cref="MemoryLog"/>. Run by the same
/// <see cref="PassStream"/> as real passes. Under TestKit's TestScheduler a test advances time to
/// <see cref="NextDue"/> until the pass completes; a whole 80-layer pass then takes milliseconds.</summary>
public sealed class VirtualPassBackend : IPassBackend
{
    readonly ModelCost _model;
    readonly DeviceCost _device;
    readonly IScheduler _scheduler;
    readonly MemoryLog _memory = new();
    readonly PriorityQueue<(double T, DateTimeOffset Due, Action AtCompletion, TaskCompletionSource Done), (double, long)> _pending = new();
    readonly double[] _loadStart, _loadEnd, _computeStart, _computeEnd, _evictAt;
    readonly object _lock = new();
    DateTimeOffset _origin;
    double _now;        // logical time of the event being processed, in seconds since the pass began
    double _linkFree;
    long _seq;
    bool _draining;
    long _transferred;
    double _end;

    readonly IReadOnlySet<int> _warm;

    /// <param name="warm">Pinned layers already on the device when the pass begins (a later pass of the job): their bytes
    /// count from the start and their load moves nothing, as in <see cref="PassSimulator"/>.</param>
    public VirtualPassBackend(ModelCost model, DeviceCost device, IScheduler scheduler, IReadOnlySet<int>? warm = null)
    {
        _warm = warm ?? new HashSet<int>();
        _model = model;
        _device = device.Validated();
        _scheduler = scheduler;
        int n = model.Layers.Length;
        _loadStart = new double[n]; _loadEnd = new double[n]; _computeStart = new double[n]; _computeEnd = new double[n];
        _evictAt = Enumerable.Repeat(-1.0, n).ToArray();
    }

    public int Layers => _model.Layers.Length;

    /// <summary>Advances a manual scheduler (TestKit's TestScheduler) to the next pending step, which completes
    /// inside <paramref name="advanceTo"/>. Returns false when no step is pending. A step requested from another
    /// thread while the clock moved may have had its wake-up registered late (the scheduler takes relative delays);
    /// an overdue step gets a fresh wake-up one tick ahead. Drains are idempotent, so spare wake-ups are harmless.</summary>
    public bool AdvanceToNext(Action<DateTimeOffset> advanceTo)
    {
        DateTimeOffset target;
        lock (_lock)
        {
            if (!_pending.TryPeek(out var step, out _)) return false;
            var now = _scheduler.Now;
            if (step.Due > now) target = step.Due;
            else
            {
                target = now + TimeSpan.FromTicks(1);
                _scheduler.Advanced.ScheduleOnce(TimeSpan.FromTicks(1), Drain);
            }
        }
        advanceTo(target);
        return true;
    }

    public void Admitted(int layer, CancellationToken cancel) { } // nothing to fetch: costs only

    public Task BeginAsync(CancellationToken cancel)
    {
        _origin = _scheduler.Now;
        foreach (var w in _warm) _memory.Reserve(0, _model.Layers[w].Bytes, $"pinned layer {w} ({_model.Layers[w].Name}) weights");
        _memory.Reserve(0, _model.InputBytes, "the pass input");
        _transferred += _model.InputBytes;
        _linkFree = _device.TransferSeconds(_model.InputBytes);
        return At(_linkFree, () => { });
    }

    public Task LoadAsync(int layer, CancellationToken cancel)
    {
        var cost = _model.Layers[layer];
        double start = Math.Max(_now, _linkFree);
        if (_warm.Contains(layer))
        {
            _loadStart[layer] = _loadEnd[layer] = start;
            return Task.CompletedTask;
        }
        _memory.Reserve(start, cost.Bytes, $"layer {layer} ({cost.Name}) weights");
        _transferred += cost.Bytes;
        _loadStart[layer] = start;
        _loadEnd[layer] = _linkFree = start + _device.TransferSeconds(cost.Bytes);
        return At(_loadEnd[layer], () => { });
    }

    public Task ComputeAsync(int layer, IReadOnlyList<int> evictAfter, CancellationToken cancel)
    {
        var cost = _model.Layers[layer];
        double start = _now;
        _memory.Reserve(start, cost.OutputBytes, $"the output of layer {layer} ({cost.Name})");
        _memory.Reserve(start, cost.WorkspaceBytes, $"the workspace of layer {layer} ({cost.Name})");
        _computeStart[layer] = start;
        _computeEnd[layer] = start + _device.ComputeSeconds(cost.Flops);
        return At(_computeEnd[layer], () =>
        {
            _memory.Free(_now, cost.WorkspaceBytes, $"the workspace of layer {layer}");
            _memory.Free(_now, _model.InputBytesOf(layer), $"the input of layer {layer}");
            foreach (var e in evictAfter)
            {
                _memory.Free(_now, _model.Layers[e].Bytes, $"layer {e} weights");
                _evictAt[e] = _now;
            }
        });
    }

    public Task EndAsync(CancellationToken cancel)
    {
        long outBytes = _model.Layers[^1].OutputBytes;
        _end = _now + _device.TransferSeconds(outBytes);
        return At(_end, () => _memory.Free(_now, outBytes, "the pass output"));
    }

    /// <summary>State for diagnostics: logical clock, pending steps and the next one.</summary>
    public string Describe()
    {
        lock (_lock)
            return $"logical time {_now:R} s, {_pending.Count} steps pending"
                + (_pending.TryPeek(out var s, out _) ? $", next at {s.T:R} s (due {s.Due:O})" : "");
    }

    public Task FreeAllAsync() => Task.CompletedTask; // nothing real is held; the memory log keeps the record

    /// <summary>Completes a task at logical time <paramref name="t"/>. A wake-up is scheduled on the Akka
    /// scheduler for the tick it falls in; each wake-up completes every due step in logical-time order (the
    /// scheduler's ticks are 100 ns, coarser than the cost model, and it runs one tick's work in the order it was
    /// scheduled). Continuations run synchronously with the logical clock set to the step's time.</summary>
    Task At(double t, Action atCompletion)
    {
        var done = new TaskCompletionSource();
        var due = _origin + TimeSpan.FromTicks((long)Math.Ceiling(t * TimeSpan.TicksPerSecond));
        lock (_lock)
        {
            _pending.Enqueue((t, due, atCompletion, done), (t, _seq++));
            // A step already due wakes one tick later: the test scheduler drops work added to the tick it is running.
            var delay = due - _scheduler.Now;
            _scheduler.Advanced.ScheduleOnce(delay > TimeSpan.Zero ? delay : TimeSpan.FromTicks(1), Drain);
        }
        return done.Task;
    }

    void Drain()
    {
        lock (_lock)
        {
            if (_draining) return; // the running drain picks up steps that fall due meanwhile
            _draining = true;
        }
        try
        {
            while (true)
            {
                (double T, DateTimeOffset Due, Action AtCompletion, TaskCompletionSource Done) step;
                lock (_lock)
                {
                    if (!_pending.TryPeek(out step, out _) || step.Due > _scheduler.Now) return;
                    _pending.Dequeue();
                }
                _now = step.T;
                step.AtCompletion();
                step.Done.SetResult();
            }
        }
        finally { lock (_lock) _draining = false; }
    }

    /// <summary>The pass as measured in virtual time, in the same shape as a simulated one.</summary>
    public SimulatedPass Result(string policy) =>
        SimulatedPass.From(policy, _model, _device, _end, _transferred, _memory, _loadStart, _loadEnd, _computeStart, _computeEnd, _evictAt);
}
