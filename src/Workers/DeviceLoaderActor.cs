using System.Collections.Concurrent;
using Akka.Actor;
using Akka.Event;
using Akka.Streams;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Contracts;
using Superpipeline.Messages;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>The loader/executor of one device. It runs one pass at a time as a <see cref="PassStream"/>;
/// passes that arrive meanwhile wait in its queue (never dropped) and run in arrival order. Every request
/// gets exactly one answer: <see cref="PassSucceeded"/> or <see cref="PassFailed"/>.
/// <para>Pinned layers (<see cref="OffloadPolicy.PinnedSet"/>) load once: after a pass that succeeded they stay on the device,
/// keyed by <see cref="RunPass.ResidentKey"/> and layer index, and a later pass of the same key that pins them reuses them
/// (nothing crosses the link for them). A pass of another model, or one that does not pin them, releases them before it
/// starts (least recently used first). A pass that fails releases its pinned layers with the rest, so a failure leaves
/// nothing of its own reserved.</para></summary>
public sealed class DeviceLoaderActor : ReceiveActor
{
    /// <summary>In-process: run <paramref name="Model"/> on <paramref name="Input"/> (a host tensor the caller keeps owning).
    /// <paramref name="Progress"/>, when given, is called (from device threads) for each layer event; it must only pass the record on.</summary>
    /// <paramref name="Inputs"/> are micro-batches: each layer, once loaded, computes every one of them before it is evicted,
    /// so one weight load serves them all (FlexGen-style), while each micro-batch keeps its own shape and bits.
    public sealed record RunPass(LayeredModel Model, IReadOnlyList<IActorRef> LayerActors, IReadOnlyList<Tensor> Inputs, OffloadPolicy Policy,
        Action<LayerProgress>? Progress = null) : INoSerializationVerificationNeeded
    {
        public RunPass(LayeredModel model, IReadOnlyList<IActorRef> layerActors, Tensor input, OffloadPolicy policy, Action<LayerProgress>? progress = null)
            : this(model, layerActors, new[] { input }, policy, progress) { }

        /// <summary>Stops the pass (queued or running) at its next step; it then fails and frees what it holds.</summary>
        public CancellationToken Stop { get; init; }

        /// <summary>Makes the pass one step of a generation session: its input is that step's token ids ([B, T] prefill,
        /// [B, 1] decode) and every layer runs its step forward over the session's KV caches. When such a pass fails, the
        /// session's device caches are freed with it.</summary>
        public GenerationStep? Step { get; init; }

        /// <summary>The model's identity for keeping its pinned layers (<see cref="OffloadPolicy.PinnedSet"/>) on the device
        /// after the pass succeeds: a later pass with an equal key and the same layer pinned reuses them instead of loading
        /// them (the node agent gives its <see cref="DeploymentKey"/>, so jobs of the same model share them). Null: pinned
        /// layers are freed when the pass ends, like the rest.</summary>
        public object? ResidentKey { get; init; }

        /// <summary>Makes the pass a training pass (<see cref="TrainingPassBackend"/>): the forward of a training step, saving each
        /// layer's input, or its backward, in reverse layer order. <see cref="Inputs"/> are then the step's micro-batches (as in
        /// <see cref="TrainingPass.Batch"/>); the answer is <see cref="PassSucceeded"/> with no outputs. A training pass neither
        /// reuses nor keeps pinned layers (the weights change after every step): kept layers are released before it starts.</summary>
        public TrainingPass? Training { get; init; }
    }

    /// <summary>Frees generation session <paramref name="Session"/>'s KV caches on this device (nothing when it holds none);
    /// send it when the session ends, after its last pass has answered. The answer is <see cref="SessionEnded"/>.</summary>
    public sealed record EndSession(Guid Session) : INoSerializationVerificationNeeded;

    public sealed record SessionEnded(Guid Session) : INoSerializationVerificationNeeded;

    /// <summary>The pass's output as a host tensor, now owned by the receiver, and its report.</summary>
    public sealed record PassSucceeded(IReadOnlyList<Tensor> Outputs, PassReport Report) : INoSerializationVerificationNeeded
    {
        /// <summary>The first (or only) micro-batch's output.</summary>
        public Tensor Output => Outputs[0];
    }
    public sealed record PassFailed(string Reason, Exception Cause) : INoSerializationVerificationNeeded;

    private sealed record Finished(IActorRef ReplyTo, object Answer) : INoSerializationVerificationNeeded;

    readonly Accelerator _device;
    readonly TimeSpan _askTimeout;
    readonly IMaterializer _materializer;
    readonly Queue<(RunPass Pass, IActorRef ReplyTo)> _waiting = new();
    readonly ConcurrentDictionary<Guid, DeviceKvSession> _sessions = new(); // device KV caches of live generation sessions
    readonly KeptLayers _kept = new();

    public DeviceLoaderActor(Accelerator device, TimeSpan askTimeout)
    {
        _device = device;
        _askTimeout = askTimeout;
        _materializer = Context.Materializer();
        Idle();
    }

    protected override void PostStop()
    {
        foreach (var id in _sessions.Keys.ToArray()) FreeSession(id).Wait(_askTimeout);
        _kept.ReleaseAll();
    }

    public static Props Props(Accelerator device, TimeSpan askTimeout) =>
        Akka.Actor.Props.Create(() => new DeviceLoaderActor(device, askTimeout)).WithMailbox(Dispatchers.LoaderMailbox);

    void Idle()
    {
        Receive<RunPass>(p => Start(p, Sender));
        Receive<EndSession>(m => OnEndSession(m.Session));
    }

    void Busy()
    {
        Receive<RunPass>(p => _waiting.Enqueue((p, Sender)));
        Receive<EndSession>(m => OnEndSession(m.Session));
        Receive<Finished>(f =>
        {
            f.ReplyTo.Tell(f.Answer);
            if (_waiting.TryDequeue(out var next)) Start(next.Pass, next.ReplyTo);
            else Become(Idle);
        });
    }

    void Start(RunPass pass, IActorRef replyTo)
    {
        var log = Context.GetLogger();
        Become(Busy);
        Run(pass).ContinueWith(t =>
            {
                if (t.IsCompletedSuccessfully) return new Finished(replyTo, t.Result);
                var error = t.Exception?.GetBaseException() ?? new TaskCanceledException("the pass was cancelled");
                log.Warning("pass on {0} failed: {1}", _device.Name, error.Message);
                return new Finished(replyTo, new PassFailed(Describe(error), error));
            }, TaskScheduler.Default)
            .PipeTo(Self);
    }

    async Task<object> Run(RunPass pass)
    {
        int n = pass.Model.Layers.Count;
        var pinned = pass.Policy.PinnedSet(n);
        if (pass.Training is { } training) return await RunTraining(pass, training, pinned).ConfigureAwait(false);
        // Pinned layers kept from earlier passes of this model are taken out for the pass; everything else kept (another
        // model's layers, or layers this pass does not pin) is released first, least recently used first.
        var warm = await _device.OnComputeThread(() => _kept.TakeFor(pass.ResidentKey, pinned)).ConfigureAwait(false);
        warm = await DropStale(warm, pass.LayerActors).ConfigureAwait(false);
        var keep = pass.ResidentKey is { } key ? (Action<int, DeviceTensors>)((layer, weights) => _kept.Keep(key, layer, weights)) : null;
        // A session's first pass records the bytes held before it (kept layers it reuses aside), so its passes' peaks include
        // the caches it keeps.
        long before = _device.Memory.Reserved - warm.Values.Sum(w => w.Bytes);
        var session = pass.Step is { } step ? _sessions.GetOrAdd(step.Session, id => new DeviceKvSession(id, before)) : null;
        DevicePassBackend backend;
        try
        {
            backend = new DevicePassBackend(_device, pass.Model, pass.LayerActors, pass.Inputs, pass.Progress, _askTimeout, pass.Step, session,
                pinned, warm, keep);
            pass.Stop.ThrowIfCancellationRequested();
        }
        catch
        {
            // The pass never started, so it frees nothing itself: release the kept layers it took out, and its session.
            await _device.OnComputeThread(() => { foreach (var w in warm.Values) w.Dispose(); return 0; }).ConfigureAwait(false);
            if (session is not null) await FreeSession(session.Id).ConfigureAwait(false);
            throw;
        }
        try
        {
            var gate = new WindowGate(pass.Policy, pass.Model.Layers.Select(l => l.Bytes).ToArray(), pinned);
            await PassStream.RunAsync(backend, gate, _materializer, pass.Stop).ConfigureAwait(false);
            return new PassSucceeded(backend.Outputs!, backend.Report(pass.Policy.Window, pass.Policy.Swap));
        }
        catch when (session is not null)
        {
            await FreeSession(session.Id).ConfigureAwait(false); // a failed step ends its session: nothing stays on the device
            throw;
        }
    }

    /// <summary>Kept layers whose weights changed since they were copied (an optimizer step published a new version) are freed:
    /// the pass loads them again.</summary>
    async Task<IReadOnlyDictionary<int, DeviceTensors>> DropStale(IReadOnlyDictionary<int, DeviceTensors> warm, IReadOnlyList<IActorRef> actors)
    {
        if (warm.Count == 0) return warm;
        var fresh = new Dictionary<int, DeviceTensors>(warm);
        try
        {
            foreach (var (layer, kept) in warm)
            {
                var now = await actors[layer].Ask<LayerActor.WeightsVersion>(LayerActor.GetVersion.Instance, _askTimeout).ConfigureAwait(false);
                if (now.Version == kept.WeightsVersion) continue;
                fresh.Remove(layer);
                await _device.OnComputeThread(() => { kept.Dispose(); return 0; }).ConfigureAwait(false);
            }
            return fresh;
        }
        catch
        {
            await _device.OnComputeThread(() => { foreach (var w in fresh.Values) w.Dispose(); return 0; }).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>A training pass: nothing kept is reused (released first), nothing is kept after.</summary>
    async Task<object> RunTraining(RunPass pass, TrainingPass training, IReadOnlySet<int> pinned)
    {
        var released = await _device.OnComputeThread(() => _kept.TakeFor(null, pinned)).ConfigureAwait(false);
        if (released.Count != 0) throw new InvalidOperationException("kept layers were handed to a training pass");
        var backend = new TrainingPassBackend(_device, pass.Model, pass.LayerActors, training, _askTimeout, pinned);
        pass.Stop.ThrowIfCancellationRequested();
        var gate = new WindowGate(pass.Policy, backend.StepBytes, backend.PinnedSteps(pinned));
        await PassStream.RunAsync(backend, gate, _materializer, pass.Stop).ConfigureAwait(false);
        return new PassSucceeded([], backend.Report(pass.Policy.Window, pass.Policy.Swap));
    }

    void OnEndSession(Guid session)
    {
        var replyTo = Sender;
        FreeSession(session).ContinueWith(_ => new SessionEnded(session), TaskScheduler.Default).PipeTo(replyTo);
    }

    /// <summary>Frees a session's device caches on the compute thread, where its passes use them.</summary>
    Task FreeSession(Guid id) => _sessions.TryRemove(id, out var session)
        ? _device.OnComputeThread(() => { session.Dispose(); return 0; })
        : Task.CompletedTask;

    /// <summary>Pinned layers' device weights kept between passes, by model identity and layer index, with when each was last
    /// used. Only the loader's pass (one at a time) and its stop touch it; the lock covers a stop during a pass.</summary>
    sealed class KeptLayers
    {
        readonly Dictionary<(object Key, int Layer), (DeviceTensors Weights, long Used)> _layers = [];
        long _clock;
        bool _stopped;

        /// <summary>Takes out the kept layers a pass of <paramref name="key"/> pinning <paramref name="pinned"/> reuses, after
        /// releasing every other kept layer, least recently used first.</summary>
        public IReadOnlyDictionary<int, DeviceTensors> TakeFor(object? key, IReadOnlySet<int> pinned)
        {
            lock (_layers)
            {
                var taken = new Dictionary<int, DeviceTensors>();
                foreach (var (k, v) in _layers.OrderBy(e => e.Value.Used).ToList())
                {
                    _layers.Remove(k);
                    if (key is not null && k.Key.Equals(key) && pinned.Contains(k.Layer)) taken[k.Layer] = v.Weights;
                    else v.Weights.Dispose();
                }
                return taken;
            }
        }

        public void Keep(object key, int layer, DeviceTensors weights)
        {
            lock (_layers)
            {
                if (_stopped)
                {
                    weights.Dispose();
                    return;
                }
                if (_layers.Remove((key, layer), out var old)) old.Weights.Dispose();
                _layers[(key, layer)] = (weights, ++_clock);
            }
        }

        public void ReleaseAll()
        {
            lock (_layers)
            {
                _stopped = true;
                foreach (var v in _layers.Values) v.Weights.Dispose();
                _layers.Clear();
            }
        }
    }

    /// <summary>One line for a person: the exception's own message, which names what was wrong.</summary>
    static string Describe(Exception e) => e switch
    {
        AskTimeoutException => $"a layer actor did not answer in time: {e.Message}",
        _ => e.Message.Split('\n')[0],
    };
}
