using Akka.Actor;
using Akka.Event;
using Superpipeline.Engine.Generation;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>Owns one layer's host weights (pinned when the device is CUDA), in the dtype they are stored in. It reads them
/// from the weight source when it starts, on the host dispatcher (never Akka's default one), hands references to the device
/// loader in-process (weights never cross the network) and frees them when it stops.
/// With the disk tier (<see cref="DiskTierWeights"/>) it keeps nothing: each <see cref="GetWeights"/> reads the layer's
/// tensors from the checkpoint within the node's host budget, and the answer owns them (<see cref="HostWeights.Lease"/>).</summary>
public sealed class LayerActor : ReceiveActor
{
    /// <summary>Ask for the layer's host weights; the answer is <see cref="HostWeights"/>.</summary>
    public sealed record GetWeights : INoSerializationVerificationNeeded
    {
        public static readonly GetWeights Instance = new();
        GetWeights() { }
    }

    /// <summary>In-process only: references to host tensors, in their stored dtype. Without a <see cref="Lease"/> they are owned
    /// by the layer actor and valid while it lives; with one (the disk tier) they were read for this answer alone: the receiver
    /// disposes the lease once it has copied them, which frees them and gives their bytes back to the host budget.</summary>
    public sealed record HostWeights(int Layer, IReadOnlyList<(string Name, Tensor Tensor)> Tensors) : INoSerializationVerificationNeeded
    {
        public IDisposable? Lease { get; init; }

        /// <summary>Which weights these are: 0 as loaded, one more after each optimizer step. A device copy made from an
        /// older version is stale (<see cref="GetVersion"/>).</summary>
        public long Version { get; init; }
    }

    /// <summary>Ask for the version of the layer's weights (<see cref="HostWeights.Version"/>) without them; the answer is
    /// <see cref="WeightsVersion"/>. The device loader asks it before reusing a kept device copy.</summary>
    public sealed record GetVersion : INoSerializationVerificationNeeded
    {
        public static readonly GetVersion Instance = new();
        GetVersion() { }
    }

    public sealed record WeightsVersion(int Layer, long Version) : INoSerializationVerificationNeeded;

    // Training (in-process): the layer's gradients and optimizer state live here, beside its weights (TrainingLayerState).

    /// <summary>Start training the layer with <paramref name="Optimizer"/>: a float32 master copy of the weights and the optimizer's
    /// state are made (refused for weights held narrower, a checkpoint not loaded at float32, or with the disk tier). The answer is
    /// <see cref="TrainingReady"/>.</summary>
    public sealed record StartTraining(OptimizerSettings Optimizer) : INoSerializationVerificationNeeded;

    /// <param name="HostBytes">Host bytes the layer now holds for training (master weights, gradients, optimizer state).</param>
    public sealed record TrainingReady(int Layer, long HostBytes) : INoSerializationVerificationNeeded;

    /// <summary>Add one micro-batch's parameter gradients (host float32, by parameter name) to the step's; the sender keeps
    /// owning the tensors (they are copied or added). The answer is <see cref="GradientsAccumulated"/>.</summary>
    public sealed record AccumulateGradients(IReadOnlyList<(string Name, Tensor Grad)> Grads) : INoSerializationVerificationNeeded;

    public sealed record GradientsAccumulated(int Layer) : INoSerializationVerificationNeeded;

    /// <summary>Report the 2-norm of each accumulated gradient (for clipping by global norm); the answer is <see cref="GradNorms"/>.</summary>
    public sealed record GetGradNorms : INoSerializationVerificationNeeded
    {
        public static readonly GetGradNorms Instance = new();
        GetGradNorms() { }
    }

    public sealed record GradNorms(int Layer, IReadOnlyList<(string Name, float Norm)> Norms) : INoSerializationVerificationNeeded;

    /// <summary>Apply the optimizer step at <paramref name="LearningRate"/>, multiplying the gradients by <paramref name="Clip"/> first
    /// when given, then drop the gradients and publish the new weights. The answer is <see cref="StepApplied"/>.</summary>
    public sealed record ApplyStep(double LearningRate, float? Clip) : INoSerializationVerificationNeeded;

    public sealed record StepApplied(int Layer, long Version) : INoSerializationVerificationNeeded;

    /// <summary>Drop the accumulated gradients (a step that failed); the answer is <see cref="GradientsZeroed"/>.</summary>
    public sealed record ZeroGradients : INoSerializationVerificationNeeded
    {
        public static readonly ZeroGradients Instance = new();
        ZeroGradients() { }
    }

    public sealed record GradientsZeroed(int Layer) : INoSerializationVerificationNeeded;

    /// <summary>Ask for copies of the layer's optimizer state ("{parameter}.{slot}", <see cref="OptimizerSlots"/>); the answer is
    /// <see cref="OptimizerState"/>, whose tensors the receiver owns.</summary>
    public sealed record GetOptimizerState : INoSerializationVerificationNeeded
    {
        public static readonly GetOptimizerState Instance = new();
        GetOptimizerState() { }
    }

    public sealed record OptimizerState(int Layer, IReadOnlyList<(string Name, Tensor Tensor)> Tensors) : INoSerializationVerificationNeeded;

    /// <summary>Replace the layer's optimizer state (after <see cref="StartTraining"/>) with <paramref name="State"/>, by
    /// "{parameter}.{slot}"; copied, the sender keeps owning the tensors. Refused, changing nothing, when a slot is missing or of
    /// another shape. The answer is <see cref="OptimizerStateLoaded"/>.</summary>
    public sealed record LoadOptimizerState(IReadOnlyDictionary<string, Tensor> State) : INoSerializationVerificationNeeded;

    public sealed record OptimizerStateLoaded(int Layer) : INoSerializationVerificationNeeded;

    /// <summary>Ask for the layer's host KV cache in generation session <paramref name="Session"/> (host placement), made
    /// zeroed with <paramref name="Capacity"/> entries for <paramref name="Batch"/> rows on first ask; the answer is
    /// <see cref="HostKv"/>.</summary>
    public sealed record GetKv(Guid Session, long Batch, long Capacity) : INoSerializationVerificationNeeded;

    /// <summary>In-process only: the layer's host KV cache for a session, owned by the layer actor until the session ends.</summary>
    public sealed record HostKv(int Layer, KvBuffer Cache) : INoSerializationVerificationNeeded;

    /// <summary>The session has ended (or failed): free the layer's host KV cache for it. The answer is <see cref="KvEnded"/>.</summary>
    public sealed record EndKv(Guid Session) : INoSerializationVerificationNeeded;

    public sealed record KvEnded(int Layer, Guid Session) : INoSerializationVerificationNeeded;

    readonly Dictionary<Guid, KvBuffer> _kv = [];
    readonly Layer _layer;
    readonly IWeightSource _source;
    readonly bool _pin;
    HostWeights? _weights;
    TrainingLayerState? _training;

    public LayerActor(Layer layer, IWeightSource source, bool pin)
    {
        _layer = layer;
        _source = source;
        _pin = pin;
        if (source is DiskTierWeights disk)
        {
            Receive<GetWeights>(_ => Read(disk));
            // An answer whose asker gave up (a cancelled or timed-out ask) lands in dead letters: free it there.
            Receive<DeadLetter>(d => { if (d.Message is HostWeights { Lease: { } lease } w && w.Layer == _layer.Index) lease.Dispose(); });
        }
        else Receive<GetWeights>(_ => Sender.Tell(_weights));
        Receive<GetKv>(OnGetKv);
        Receive<EndKv>(m => OnEndKv(m.Session));
        Receive<GetVersion>(_ => Sender.Tell(new WeightsVersion(_layer.Index, _weights?.Version ?? 0)));
        Receive<StartTraining>(m => Answer(() => OnStartTraining(m.Optimizer)));
        Receive<AccumulateGradients>(m => Answer(() =>
        {
            Training().Accumulate(m.Grads);
            return new GradientsAccumulated(_layer.Index);
        }));
        Receive<GetGradNorms>(_ => Answer(() => new GradNorms(_layer.Index, Training().Norms())));
        Receive<ApplyStep>(m => Answer(() => OnApplyStep(m.LearningRate, m.Clip)));
        Receive<GetOptimizerState>(_ => Answer(() => new OptimizerState(_layer.Index, Training().ExportState())));
        Receive<LoadOptimizerState>(m => Answer(() =>
        {
            Training().ImportState(m.State);
            return new OptimizerStateLoaded(_layer.Index);
        }));
        Receive<ZeroGradients>(_ => Answer(() =>
        {
            _training?.Zero();
            return new GradientsZeroed(_layer.Index);
        }));
    }

    /// <summary>Answers with <paramref name="work"/>'s result, or a failure carrying its error (the asker's task fails with it).</summary>
    void Answer(Func<object> work)
    {
        object answer;
        try
        {
            answer = work();
        }
        catch (Exception e) // a refusal or a TorchSharp error: the asker fails with it; the actor keeps its state
        {
            answer = new Status.Failure(e);
        }
        Sender.Tell(answer);
    }

    TrainingLayerState Training() =>
        _training ?? throw new InvalidOperationException($"layer {_layer.Index} ({_layer.Name}) is not training (no StartTraining)");

    TrainingReady OnStartTraining(OptimizerSettings optimizer)
    {
        if (_weights is null)
            throw new InvalidOperationException($"layer {_layer.Index} ({_layer.Name}) keeps no host weights (the disk tier); training needs them in memory");
        _training?.Dispose();
        _training = new TrainingLayerState($"{_layer.Index} ({_layer.Name})", _weights.Tensors, optimizer);
        return new TrainingReady(_layer.Index, _training.Bytes(optimizer));
    }

    /// <summary>The optimizer step, then the new weights published as fresh tensors under the next version; the old ones are
    /// freed (a device copy sharing their storage keeps it alive until it is dropped).</summary>
    StepApplied OnApplyStep(double learningRate, float? clip)
    {
        var training = Training();
        training.Step(learningRate, clip);
        var fresh = training.Publish();
        if (_pin) fresh = [.. fresh.Select(w => (w.Name, Pinned(w.Tensor)))];
        var old = _weights!;
        _weights = new HostWeights(_layer.Index, fresh) { Version = old.Version + 1 };
        foreach (var (_, t) in old.Tensors) t.Dispose();
        return new StepApplied(_layer.Index, _weights.Version);
    }

    static Tensor Pinned(Tensor t)
    {
        var pinned = t.pin_memory();
        t.Dispose();
        return pinned;
    }

    public static Props Props(Layer layer, IWeightSource source, bool pin) =>
        Akka.Actor.Props.Create(() => new LayerActor(layer, source, pin)).WithDispatcher(Dispatchers.Host);

    protected override void PreStart()
    {
        if (_source is DiskTierWeights)
        {
            Context.System.EventStream.Subscribe(Self, typeof(DeadLetter));
            return;
        }
        var loaded = _source.Load(_layer);
        var list = new List<(string, Tensor)>(_layer.Parameters.Count);
        foreach (var spec in _layer.Parameters)
        {
            var t = loaded[spec.Name];
            if (_pin)
            {
                var pinned = t.pin_memory();
                t.Dispose();
                t = pinned;
            }
            list.Add((spec.Name, t));
        }
        _weights = new HostWeights(_layer.Index, list);
        long bytes = list.Sum(w => w.Item2.NumberOfElements * w.Item2.ElementSize);
        Context.GetLogger().Debug("layer {0} ({1}): {2:N0} host bytes", _layer.Index, _layer.Name, bytes);
    }

    /// <summary>Reads the layer from disk for one asker (the read waits for room in the host budget; other asks are served
    /// meanwhile). Not pinned: a read is copied once and dropped.</summary>
    void Read(DiskTierWeights disk)
    {
        int index = _layer.Index;
        disk.ReadAsync(_layer).PipeTo(Sender, success: read => new HostWeights(index,
            [.. _layer.Parameters.Select(p => (p.Name, read.Tensors[p.Name]))]) { Lease = read });
    }

    void OnGetKv(GetKv m)
    {
        if (_layer.Kv is not { } layout)
        {
            Sender.Tell(new Status.Failure(new InvalidOperationException($"layer {_layer.Index} ({_layer.Name}) keeps no KV cache")));
            return;
        }
        if (!_kv.TryGetValue(m.Session, out var cache))
            _kv[m.Session] = cache = KvBuffer.Allocate(layout, m.Batch, m.Capacity, ScalarType.Float32, CPU);
        Sender.Tell(new HostKv(_layer.Index, cache));
    }

    void OnEndKv(Guid session)
    {
        if (_kv.Remove(session, out var cache)) cache.Dispose();
        Sender.Tell(new KvEnded(_layer.Index, session));
    }

    protected override void PostStop()
    {
        foreach (var cache in _kv.Values) cache.Dispose();
        _kv.Clear();
        _training?.Dispose();
        _training = null;
        Context.System.EventStream.Unsubscribe(Self);
        if (_weights is null) return;
        foreach (var (_, t) in _weights.Tensors) t.Dispose();
        _weights = null;
    }
}
