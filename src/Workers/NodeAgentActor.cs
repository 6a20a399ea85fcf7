using System.Collections.Immutable;
using Akka.Actor;
using Akka.Event;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Contracts;
using Superpipeline.Messages;
using Superpipeline.Messages.Serialization;
using static Superpipeline.Messages.StageProtocol;
using static Superpipeline.Messages.WorkerProtocol;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>The worker side of a node: it owns the node's devices and their loaders, registers them with the
/// coordinator (again every heartbeat, so a coordinator that moved learns them), deploys LayerActors for the
/// stages placed here (reading their weights itself), and runs each stage when its input arrives. A stage's
/// output goes to the next stage's agent (in memory when that is this node) or, from the last stage, to the
/// coordinator; large activations travel chunked.</summary>
public sealed class NodeAgentActor : ReceiveActor, IWithTimers
{
    private sealed record Heartbeat : INoSerializationVerificationNeeded
    {
        public static readonly Heartbeat Instance = new();
        Heartbeat() { }
    }

    private sealed record StageFinished(StageAssignment Stage, object Answer) : INoSerializationVerificationNeeded;

    readonly string _node;
    readonly IReadOnlyDictionary<string, IDevice> _devices;
    readonly Dictionary<string, IActorRef> _loaders = [];
    readonly IActorRef _coordinator;
    readonly TimeSpan _heartbeat;
    readonly TimeSpan _askTimeout;
    readonly Dictionary<(JobId, int, int), StageAssignment> _assigned = [];
    readonly Dictionary<(JobId, int, int), ImmutableArray<TensorPayload>> _early = []; // inputs that beat their assignment here
    readonly Dictionary<(ModelSpec, int, int), (IActorRef[] Layers, Task Ready)> _deployments = [];
    readonly HashSet<(JobId, int)> _cancelled = [];
    readonly Dictionary<(JobId, int), CancellationTokenSource> _stops = []; // per attempt with a stage here
    readonly ChunkAssembler _assembler;
    readonly ChunkingSender _sender;
    readonly ILoggingAdapter _log = Context.GetLogger();
    int _deploymentCounter;

    public NodeAgentActor(string node, IReadOnlyList<IDevice> devices, IActorRef coordinator, SuperpipelineSettings settings)
    {
        _node = node;
        _devices = devices.ToDictionary(d => d.Name);
        _coordinator = coordinator;
        _heartbeat = settings.Heartbeat;
        _askTimeout = settings.AskTimeout;
        _assembler = new ChunkAssembler(Context.System);
        _sender = ChunkingSender.For(Context.System);
        foreach (var d in devices)
            _loaders[d.Name] = Context.ActorOf(DeviceLoaderActor.Props(d, settings.AskTimeout), $"{d.Name.Replace(':', '-')}-loader");

        Receive<Heartbeat>(_ => Register());
        Receive<WorkerRegistered>(_ => { });
        Receive<MessageChunk>(ChunkAssembler.Receiver(Context));
        Receive<StageAssignment>(OnAssignment);
        Receive<StageInput>(OnInput);
        Receive<StageFinished>(OnFinished);
        Receive<CancelAttempt>(c =>
        {
            _cancelled.Add((c.Job, c.Attempt));
            if (_stops.Remove((c.Job, c.Attempt), out var stop)) { stop.Cancel(); stop.Dispose(); }
            foreach (var key in _assigned.Keys.Where(k => k.Item1 == c.Job && k.Item2 == c.Attempt).ToArray()) _assigned.Remove(key);
        });
    }

    public ITimerScheduler Timers { get; set; } = null!;

    /// <summary>Runs on the host dispatcher: it makes inputs and turns outputs into payloads.</summary>
    public static Props Props(string node, IReadOnlyList<IDevice> devices, IActorRef coordinator, SuperpipelineSettings settings) =>
        Akka.Actor.Props.Create(() => new NodeAgentActor(node, devices, coordinator, settings)).WithDispatcher(Dispatchers.Host);

    protected override void PreStart()
    {
        Register();
        Timers.StartPeriodicTimer("heartbeat", Heartbeat.Instance, _heartbeat);
    }

    void Register() => _coordinator.Tell(new RegisterWorker(Self, _node,
        [.. _devices.Values.Select(d => new DeviceInfo(d.Name, d.Kind, d.Memory.Capacity, d.LinkBytesPerSecond / 1e9))]));

    void OnAssignment(StageAssignment a)
    {
        if (!_devices.ContainsKey(a.Device))
        {
            a.Coordinator.Tell(new StageFailed(a.Job, a.Attempt, a.Stage, $"node {_node} has no device {a.Device}"));
            return;
        }
        var key = (a.Job, a.Attempt, a.Stage);
        _assigned[key] = a;
        if (a.Stage == 0)
        {
            var model = ModelCatalog.Create(a.Model);
            var inputs = a.Seeds.Select(seed =>
            {
                using var input = model.MakeInput(seed);
                return TensorPayloads.From(input);
            }).ToImmutableArray();
            Run(a, inputs);
        }
        else if (_early.Remove(key, out var early)) Run(a, early);
    }

    void OnInput(StageInput input)
    {
        var key = (input.Job, input.Attempt, input.Stage);
        if (_assigned.TryGetValue(key, out var a)) Run(a, input.Activations);
        else _early[key] = input.Activations;
    }

    void Run(StageAssignment a, ImmutableArray<TensorPayload> activations)
    {
        if (_cancelled.Contains((a.Job, a.Attempt))) { _assigned.Remove((a.Job, a.Attempt, a.Stage)); return; }
        StreamPolicy policy;
        LayeredModel stage;
        try
        {
            var model = ModelCatalog.Create(a.Model);
            stage = model.Slice(a.FirstLayer, a.LayerCount);
            policy = StreamPolicy.Create(a.Policy, a.LayerCount);
        }
        catch (ArgumentException e)
        {
            a.Coordinator.Tell(new StageFailed(a.Job, a.Attempt, a.Stage, e.Message));
            return;
        }
        var (layers, ready) = Deploy(a.Model, a.FirstLayer, stage);
        var inputs = activations.Select(TensorPayloads.ToTensor).ToArray();
        var coordinator = a.Coordinator;
        var self = Self;
        int offset = a.FirstLayer;
        if (!_stops.TryGetValue((a.Job, a.Attempt), out var stopSource)) _stops[(a.Job, a.Attempt)] = stopSource = new CancellationTokenSource();
        var pass = new DeviceLoaderActor.RunPass(stage, layers, inputs, policy,
            p => { if (p.Phase == LayerPhase.Computed) coordinator.Tell(StageProgress.Of(a, p), self); })
        { Stop = stopSource.Token };
        var loader = _loaders[a.Device];
        // The pass starts once every LayerActor holds its host weights: its wall time measures the pass, not reading the checkpoint.
        ready.ContinueWith(r => r.IsCompletedSuccessfully ? loader.Ask<object>(pass, Timeout.InfiniteTimeSpan) : Task.FromException<object>(r.Exception!.GetBaseException()), TaskScheduler.Default)
            .Unwrap()
            .ContinueWith(t =>
            {
                foreach (var i in inputs) i.Dispose();
                return new StageFinished(a, t.IsCompletedSuccessfully ? t.Result : new DeviceLoaderActor.PassFailed(t.Exception?.GetBaseException().Message ?? "cancelled", t.Exception!));
            }, TaskScheduler.Default)
            .PipeTo(self);
    }

    void OnFinished(StageFinished f)
    {
        var a = f.Stage;
        _assigned.Remove((a.Job, a.Attempt, a.Stage));
        if (!_assigned.Keys.Any(k => k.Item1 == a.Job && k.Item2 == a.Attempt) && _stops.Remove((a.Job, a.Attempt), out var stop)) stop.Dispose();
        if (f.Answer is DeviceLoaderActor.PassSucceeded ok)
        {
            var output = ok.Outputs.Select(t => { using (t) return TensorPayloads.From(t); }).ToImmutableArray();
            if (_cancelled.Contains((a.Job, a.Attempt))) return;
            a.Coordinator.Tell(new StageDone(a.Job, a.Attempt, a.Stage, _node, ok.Report with { Device = a.Device }));
            if (a.Stage == a.Stages - 1) _sender.Tell(a.Coordinator, new StageOutput(a.Job, a.Attempt, output), Self);
            else _sender.Tell(a.Next!, new StageInput(a.Job, a.Attempt, a.Stage + 1, output), Self);
        }
        else if (f.Answer is DeviceLoaderActor.PassFailed failed)
        {
            _log.Warning("stage {0} of job {1} failed on {2}: {3}", a.Stage, a.Job, a.Device, failed.Reason);
            a.Coordinator.Tell(new StageFailed(a.Job, a.Attempt, a.Stage, failed.Reason));
        }
    }

    /// <summary>LayerActors for a stage's layers, made once per model and layer range on this node.</summary>
    (IActorRef[] Layers, Task Ready) Deploy(ModelSpec spec, int first, LayeredModel stage)
    {
        var key = (spec with { Batch = 0 }, first, stage.Layers.Count);
        if (_deployments.TryGetValue(key, out var existing)) return existing;
        int n = ++_deploymentCounter;
        var weights = ModelCatalog.Weights(spec);
        bool pin = _devices.Values.Any(d => d.WantsPinnedHost);
        var layers = stage.Layers.Select(l => Context.ActorOf(LayerActor.Props(l, weights, pin), $"m{n}-layer-{l.Index}")).ToArray();
        var ready = Task.WhenAll(layers.Select(l => l.Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, _askTimeout)));
        return _deployments[key] = (layers, ready);
    }
}
