using System.Collections.Immutable;
using Akka.Actor;
using Akka.Event;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Training;
using Superpipeline.Contracts;
using Superpipeline.Messages;
using Superpipeline.Messages.Serialization;
using static Superpipeline.Messages.GenerationProtocol;
using static Superpipeline.Messages.StageProtocol;
using static Superpipeline.Messages.WorkerProtocol;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>The worker side of a node: it owns the node's devices and their loaders, registers them with the
/// coordinator (again every heartbeat, so a coordinator that moved learns them), deploys LayerActors for the
/// stages placed here (reading their weights itself), and runs each stage when its input arrives. A stage's
/// output goes to the next stage's agent (in memory when that is this node) or, from the last stage, to the
/// coordinator; large activations travel chunked.
/// Each attempt placed here is a <see cref="StageAttempt"/> whose stop (on <see cref="CancelAttempt"/>) cancels its
/// passes. Deployments (<see cref="DeploymentPool"/>) live under the host weight budget: least recently used idle
/// ones are stopped to make room, and any idle past <c>superpipeline.worker.deployment-idle-timeout</c>.</summary>
public sealed class NodeAgentActor : ReceiveActor, IWithTimers
{
    private sealed record Heartbeat : INoSerializationVerificationNeeded
    {
        public static readonly Heartbeat Instance = new();
        Heartbeat() { }
    }

    /// <summary>Evict idle deployments and trim attempts that are over.</summary>
    private sealed record Tidy : INoSerializationVerificationNeeded
    {
        public static readonly Tidy Instance = new();
        Tidy() { }
    }

    private sealed record StageFinished(StageAttempt Attempt, StageAssignment Stage, object Answer) : INoSerializationVerificationNeeded;

    /// <summary>A generation stage's layer actors hold their weights (or failed to read them).</summary>
    private sealed record GenerationLoaded(GenerationStageSession Session, string? Error) : INoSerializationVerificationNeeded;

    /// <summary>A generation stage's pass for a step answered.</summary>
    private sealed record GenerationStepped(GenerationStageSession Session, GenerationStepInput Input, object Answer) : INoSerializationVerificationNeeded;

    /// <summary>A generation stage's caches are freed (on the device and in its layer actors).</summary>
    private sealed record GenerationFreed(GenerationStageSession Session, string? Error) : INoSerializationVerificationNeeded;

    /// <summary>In-process: ask for the agent's figures; the answer is <see cref="Status"/>.</summary>
    public sealed record GetStatus : INoSerializationVerificationNeeded
    {
        public static readonly GetStatus Instance = new();
        GetStatus() { }
    }

    /// <summary>Host weight bytes held now and at most so far, the budget (null: none), the deployments held (least
    /// recently used first) and how many attempts the agent keeps state for (tombstones included).</summary>
    public sealed record Status(long HostWeightBytes, long PeakHostWeightBytes, long? HostWeightBudget, ImmutableArray<DeploymentKey> Deployments,
        int Attempts) : INoSerializationVerificationNeeded;

    /// <summary>A stage waiting for room in the host weight budget.</summary>
    sealed record StageRef(StageAttempt Attempt, int Stage);

    readonly string _node;
    readonly IReadOnlyDictionary<string, Accelerator> _devices;
    readonly Dictionary<string, IActorRef> _loaders = [];
    readonly IActorRef _coordinator;
    readonly TimeSpan _heartbeat;
    readonly TimeSpan _askTimeout;
    readonly WorkerSettings _worker;
    readonly Dictionary<AttemptId, StageAttempt> _attempts = [];
    readonly Dictionary<GenerationStageId, GenerationStageSession> _generations = [];
    readonly DeploymentPool _deployments;
    readonly HostWeightBudget? _hostMemory; // the disk tier's reads share it (superpipeline.worker.host-memory)
    readonly Queue<StageRef> _waitingForHostMemory = new(); // first come, first deployed
    readonly Dictionary<IActorRef, DeploymentKey> _trainingStages = []; // open training stages, each a private deployment
    readonly Queue<TrainingProtocol.OpenTraining> _trainingWaiting = new(); // training stages waiting for room, first come first opened
    readonly ChunkingSender _sender;
    readonly ILoggingAdapter _log = Context.GetLogger();
    int _deploymentCounter;

    public NodeAgentActor(string node, IReadOnlyList<Accelerator> devices, IActorRef coordinator, SuperpipelineSettings settings)
    {
        _node = node;
        _devices = devices.ToDictionary(d => d.Name);
        _coordinator = coordinator;
        _heartbeat = settings.Heartbeat;
        _askTimeout = settings.AskTimeout;
        _worker = settings.Worker;
        _deployments = new DeploymentPool(_worker.HostWeightBudget, StopLayer);
        _hostMemory = _worker.HostMemory is { } hostMemory ? new HostWeightBudget(hostMemory) : null;
        _sender = ChunkingSender.For(Context.System);
        foreach (var d in devices)
            _loaders[d.Name] = Context.ActorOf(DeviceLoaderActor.Props(d, settings.AskTimeout), $"{d.Name.Replace(':', '-')}-loader");

        Receive<Heartbeat>(_ => Register());
        Receive<WorkerRegistered>(_ => { });
        Receive<MessageChunk>(ChunkAssembler.Receiver(Context));
        Receive<StageAssignment>(OnAssignment);
        Receive<StageInput>(OnInput);
        Receive<StageFinished>(OnFinished);
        Receive<CancelAttempt>(c => OnCancel(new AttemptId(c.Job, c.Attempt)));
        Receive<OpenGeneration>(OnOpenGeneration);
        Receive<GenerationLoaded>(OnGenerationLoaded);
        Receive<GenerationStepInput>(OnGenerationStep);
        Receive<GenerationStepped>(OnGenerationStepped);
        Receive<EndGeneration>(e => EndGenerations(new AttemptId(e.Job, e.Attempt), report: true));
        Receive<GenerationFreed>(OnGenerationFreed);
        Receive<TrainingProtocol.OpenTraining>(o => OpenTraining(o, first: false));
        Receive<Terminated>(t => OnTerminated(t.ActorRef));
        Receive<Tidy>(_ => OnTidy());
        Receive<GetStatus>(_ => Sender.Tell(new Status(_deployments.HostBytes, _deployments.PeakHostBytes, _deployments.Budget,
            [.. _deployments.Deployments.Select(d => d.Key)], _attempts.Count)));
    }

    public ITimerScheduler Timers { get; set; } = null!;

    /// <summary>Runs on the host dispatcher: it makes inputs and turns outputs into payloads.</summary>
    public static Props Props(string node, IReadOnlyList<Accelerator> devices, IActorRef coordinator, SuperpipelineSettings settings) =>
        Akka.Actor.Props.Create(() => new NodeAgentActor(node, devices, coordinator, settings)).WithDispatcher(Dispatchers.Host);

    protected override void PreStart()
    {
        Register();
        Timers.StartPeriodicTimer("heartbeat", Heartbeat.Instance, _heartbeat);
        // Often enough that nothing outlives its timeout by more than half the shorter of the two.
        long shortest = Math.Min(_worker.DeploymentIdleTimeout.Ticks, _worker.AttemptRetention.Ticks);
        Timers.StartPeriodicTimer("tidy", Tidy.Instance, TimeSpan.FromTicks(Math.Max(shortest / 2, TimeSpan.TicksPerMillisecond)));
    }

    protected override void PostStop()
    {
        foreach (var attempt in _attempts.Values) attempt.Cancel(Now); // their passes stop and free their device bytes
        _attempts.Clear();
        foreach (var session in _generations.Values) session.WantEnd(report: false); // the loader frees their caches as it stops
        _generations.Clear();
    }

    /// <summary>Registers once every device has been measured (once per device, <see cref="DeviceCalibration.MeasureOnceAsync"/>),
    /// so that the coordinator plans `--window auto` from the measured device; until then a heartbeat follows the measurement.</summary>
    void Register()
    {
        var measured = _devices.Values.Select(d => (Device: d, Cost: DeviceCalibration.MeasureOnceAsync(d))).ToArray();
        if (measured.Any(m => !m.Cost.IsCompleted))
        {
            Task.WhenAll(measured.Select(m => m.Cost)).ContinueWith(_ => Heartbeat.Instance, TaskScheduler.Default).PipeTo(Self);
            return;
        }
        _coordinator.Tell(new RegisterWorker(Self, _node, [.. measured.Select(m => new DeviceInfo(m.Device.Name, m.Device.Kind, m.Device.Memory.Capacity,
            m.Cost.IsCompletedSuccessfully ? m.Cost.Result : null))]));
    }

    DateTimeOffset Now => Context.System.Scheduler.Now;

    /// <summary>The attempt <paramref name="id"/>, made on its first message; null once it was cancelled (never resurrected).
    /// The same id placed by another <paramref name="coordinator"/> (one that restarted) is a new attempt: the old is stopped.</summary>
    StageAttempt? Live(AttemptId id, IActorRef? coordinator = null)
    {
        if (_attempts.TryGetValue(id, out var attempt))
        {
            if (coordinator is null || attempt.PlacedBy(coordinator)) return attempt.Cancelled ? null : attempt;
            _log.Info("attempt {0} placed again by another coordinator; the old one is stopped", id);
            attempt.Cancel(Now);
            _attempts.Remove(id);
            if (!attempt.AnyRunning) attempt.Dispose();
        }
        attempt = _attempts[id] = new StageAttempt(id, Now);
        if (coordinator is not null) attempt.PlacedBy(coordinator);
        return attempt;
    }

    void OnAssignment(StageAssignment a)
    {
        if (!_devices.ContainsKey(a.Device))
        {
            a.Coordinator.Tell(new StageFailed(a.Job, a.Attempt, a.Stage, $"node {_node} has no device {a.Device}"));
            return;
        }
        if (Live(new AttemptId(a.Job, a.Attempt), a.Coordinator) is not { } attempt)
        {
            _log.Debug("assignment of stage {0} of cancelled attempt {1} dropped", a.Stage, a.Attempt);
            return;
        }
        var known = attempt[a.Stage];
        if (known is { Phase: not StagePhase.WaitingForAssignment }) return; // a repeated assignment
        if (a.Stage == 0)
        {
            ImmutableArray<TensorPayload> inputs;
            try
            {
                var model = ModelCatalog.Create(a.Model); // a checkpoint or an ids file this node cannot read fails the stage
                inputs = [.. a.Seeds.Select(seed =>
                {
                    using var input = model.MakeInput(seed);
                    return TensorPayloads.From(input);
                })];
            }
            catch (Exception e) when (ModelCatalog.IsRefusal(e))
            {
                Fail(attempt, a, e.Message);
                return;
            }
            Start(attempt, a, inputs);
        }
        else if (known is { } early) Start(attempt, a, early.Input);
        else attempt.Set(StageState.Assigned(a), Now);
    }

    void OnInput(StageInput input)
    {
        if (Live(new AttemptId(input.Job, input.Attempt)) is not { } attempt)
        {
            _log.Debug("input of stage {0} of cancelled attempt {1} dropped", input.Stage, input.Attempt);
            return;
        }
        var stage = attempt[input.Stage];
        if (stage is { Phase: StagePhase.WaitingForInput, Assignment: { } a }) Start(attempt, a, input.Activations);
        else if (stage is null) attempt.Set(StageState.EarlyInput(input.Stage, input.Activations), Now);
    }

    void OnCancel(AttemptId id)
    {
        if (!_attempts.TryGetValue(id, out var attempt)) _attempts[id] = attempt = new StageAttempt(id, Now);
        attempt.Cancel(Now);
        EndGenerations(id, report: false);
    }

    /// <summary>Opens a stage of a training job: a <see cref="TrainingStageActor"/> child owning the stage's layer actors (their
    /// weights and optimizer state stay on this node), on the device's loader. Its host bytes (<see cref="TrainingStageActor.HostBytes"/>)
    /// are a private deployment under the host weight budget: idle deployments are stopped to make room, and without room the
    /// opening waits (first come, first opened) until stages release theirs; the job's coordinator bounds the wait. A refusal (an
    /// unknown device, a model or settings refused, more bytes than the whole budget) is answered at once; the stage actor answers
    /// the rest. The stage loads its checkpoint at float32 (<see cref="TrainingWeights.Spec"/>: F16/BF16 upcast on read), and its
    /// host bytes count float32 weights. Returns false when it must wait; <paramref name="first"/>: it is the head of the waiting openings.</summary>
    bool OpenTraining(TrainingProtocol.OpenTraining o, bool first)
    {
        o = o with { Model = TrainingWeights.Spec(o.Model) }; // a stage trains float32, whatever the checkpoint stores (upcast on read)
        void Refuse(string why) => o.Coordinator.Tell(new TrainingProtocol.TrainingStageFailed(o.Job, o.Attempt, o.Stage, -1, why));
        if (!_devices.TryGetValue(o.Device, out var device))
        {
            Refuse($"node {_node} has no device {o.Device}");
            return true;
        }
        long bytes;
        try
        {
            var stage = ModelCatalog.Create(o.Model).Slice(o.FirstLayer, o.LayerCount);
            OffloadPolicy.For(o.Policy, o.LayerCount);
            ModelCatalog.CheckWeights(o.Model, stage);
            bytes = TrainingStageActor.HostBytes(o.Model, stage, TrainingStageActor.Settings(o.Optimizer).Optimizer);
        }
        catch (Exception e) when (ModelCatalog.IsRefusal(e))
        {
            Refuse(e.Message);
            return true;
        }
        var key = DeploymentKey.Of(o.Model, o.FirstLayer, o.LayerCount) with { Session = $"training stage {o.Stage} of {o.Job.Value} (attempt {o.Attempt})" };
        if (_trainingStages.ContainsValue(key)) return true; // a repeated opening
        if (_deployments.TooLarge(key, bytes) is { } why)
        {
            Refuse(why + " (weights, their float32 master copy, gradients and optimizer state)");
            return true;
        }
        IActorRef? made = null;
        var taken = _deployments.TryAcquire(key, bytes, Now, first || NoneWaiting, () =>
        {
            made = Context.Watch(Context.ActorOf(TrainingStageActor.Props(o, _loaders[o.Device], device.WantsPinnedHost, _askTimeout),
                $"train-{o.Attempt}-{o.Stage}-{++_deploymentCounter}"));
            return ([made], [bytes], Task.CompletedTask);
        });
        if (taken is null)
        {
            if (!first)
            {
                _log.Info("{0} waits for {1:N0} bytes of room in the host weight budget", key, bytes);
                _trainingWaiting.Enqueue(o);
            }
            return false;
        }
        _trainingStages[made!] = key;
        return true;
    }

    /// <summary>No stage or training opening waits for room in the host weight budget: a new one may take what is free.</summary>
    bool NoneWaiting => _waitingForHostMemory.Count == 0 && _trainingWaiting.Count == 0;

    /// <summary>Opens a stage of a generation job: its layers deployed within the host weight budget (or it fails at once, it does
    /// not wait for room), then <see cref="GenerationReady"/> to the coordinator once they hold their weights.</summary>
    void OnOpenGeneration(OpenGeneration g)
    {
        var id = new GenerationStageId(new AttemptId(g.Job, g.Attempt), g.Stage);
        void Refuse(string why) => g.Coordinator.Tell(new StageFailed(g.Job, g.Attempt, g.Stage, why));
        if (!_devices.ContainsKey(g.Device))
        {
            Refuse($"node {_node} has no device {g.Device}");
            return;
        }
        if (_attempts.TryGetValue(id.Attempt, out var known) && known.Cancelled) return; // given up already: never resurrected
        if (_generations.TryGetValue(id, out var open))
        {
            if (open.Open.Coordinator.Equals(g.Coordinator))
            {
                if (open.Phase is GenerationStagePhase.Ready or GenerationStagePhase.Stepping)
                    g.Coordinator.Tell(new GenerationReady(g.Job, g.Attempt, g.Stage));
                return; // a repeated assignment
            }
            _log.Info("generation stage {0} of {1} opened again by another coordinator; the old session ends", g.Stage, id.Attempt);
            _generations.Remove(id); // no longer current: it ends, frees its caches and releases its deployment, and answers no one
            EndGeneration(open, report: false);
        }
        LayeredModel stage;
        OffloadPolicy policy;
        KvPlacement placement;
        ImmutableArray<long> layerBytes;
        try
        {
            stage = ModelCatalog.Create(g.Model).Slice(g.FirstLayer, g.LayerCount);
            policy = OffloadPolicy.For(g.Policy, g.LayerCount);
            ModelCatalog.CheckWeights(g.Model, stage);
            placement = GenerationSession.ParsePlacement(g.Kv);
            layerBytes = DeploymentWeights.LayerHostBytes(g.Model, stage, _hostMemory);
        }
        catch (Exception e) when (ModelCatalog.IsRefusal(e))
        {
            Refuse(e.Message);
            return;
        }
        var key = DeploymentKey.Of(g.Model, g.FirstLayer, g.LayerCount);
        long bytes = layerBytes.Sum();
        if (_deployments.TooLarge(key, bytes) is { } why)
        {
            Refuse(why);
            return;
        }
        var deployment = _deployments.TryAcquire(key, bytes, Now, NoneWaiting, () => Deploy(g.Model, stage, layerBytes));
        if (deployment is null)
        {
            Refuse($"node {_node} has no room in its host weight budget for layers {g.FirstLayer}..{g.FirstLayer + g.LayerCount - 1} now");
            return;
        }
        var session = _generations[id] = new GenerationStageSession(id, g, stage, policy, key, deployment.Layers, _loaders[g.Device], placement)
        {
            HostWeightPeak = DeploymentWeights.MeasurePass(deployment, _hostMemory), // over the whole session
        };
        var self = Self;
        deployment.Ready.ContinueWith(r =>
                new GenerationLoaded(session, r.IsCompletedSuccessfully ? null : r.Exception?.GetBaseException().Message ?? "cancelled"),
            TaskScheduler.Default).PipeTo(self);
    }

    void OnGenerationLoaded(GenerationLoaded m)
    {
        var session = m.Session;
        if (!Current(session) || session.Phase != GenerationStagePhase.Loading) return;
        var g = session.Open;
        if (m.Error is { } error)
        {
            g.Coordinator.Tell(new StageFailed(g.Job, g.Attempt, g.Stage, error));
            EndGeneration(session, report: false);
            return;
        }
        session.Loaded();
        g.Coordinator.Tell(new GenerationReady(g.Job, g.Attempt, g.Stage));
    }

    /// <summary>Runs one step on a stage: its layers as one generation pass over the session's caches on this node.</summary>
    void OnGenerationStep(GenerationStepInput s)
    {
        var id = new GenerationStageId(new AttemptId(s.Job, s.Attempt), s.Stage);
        if (!_generations.TryGetValue(id, out var session) || session.Phase != GenerationStagePhase.Ready || session.EndWanted)
        {
            _log.Debug("step {0} of generation stage {1} of {2} dropped: the stage is not ready", s.Step, s.Stage, id.Attempt);
            return;
        }
        session.Stepping();
        var input = TensorPayloads.ToTensor(s.Activations);
        var context = new Superpipeline.Engine.Generation.StepContext(TensorPayloads.ToTensor(s.Positions), TensorPayloads.ToTensor(s.Mask), s.Past,
            lastPositionOnly: true);
        var pass = new DeviceLoaderActor.RunPass(session.Stage, session.Layers, input, session.Policy)
        {
            Step = new GenerationStep(session.Session, context, session.Placement, session.Capacity), Stop = session.Stop,
            ResidentKey = session.Deployment, // pinned layers stay on the device from token to token, and for later jobs of the model
        };
        var self = Self;
        session.Loader.Ask<object>(pass, Timeout.InfiniteTimeSpan)
            .ContinueWith(t =>
            {
                input.Dispose();
                context.Dispose();
                var answer = t.IsCompletedSuccessfully
                    ? t.Result
                    : new DeviceLoaderActor.PassFailed(t.Exception?.GetBaseException().Message ?? "cancelled", t.Exception!);
                return new GenerationStepped(session, s, answer);
            }, TaskScheduler.Default)
            .PipeTo(self);
    }

    /// <summary>A step's pass answered: its activations go on to the next stage (the logits, from the last, to the coordinator);
    /// a failed step fails the attempt and ends the session.</summary>
    void OnGenerationStepped(GenerationStepped m)
    {
        var session = m.Session;
        var g = session.Open;
        if (m.Answer is DeviceLoaderActor.PassSucceeded ok)
        {
            session.Stepped(ok.Report);
            TensorPayload output;
            using (var first = ok.Outputs[0]) output = TensorPayloads.From(first);
            foreach (var extra in ok.Outputs.Skip(1)) extra.Dispose();
            if (!session.EndWanted && Current(session))
            {
                if (g.Stage == g.Stages - 1) _sender.Tell(g.Coordinator, new GenerationLogits(g.Job, g.Attempt, m.Input.Step, output), Self);
                else _sender.Tell(g.Next!, m.Input with { Stage = g.Stage + 1, Activations = output }, Self);
            }
        }
        else
        {
            session.Stepped(null);
            var reason = m.Answer is DeviceLoaderActor.PassFailed failed ? failed.Reason : $"unexpected answer {m.Answer}";
            if (!session.EndWanted)
            {
                _log.Warning("generation stage {0} of job {1} failed on {2}: {3}", g.Stage, g.Job, g.Device, reason);
                g.Coordinator.Tell(new StageFailed(g.Job, g.Attempt, g.Stage, reason));
            }
            session.WantEnd(report: false);
        }
        if (session.EndWanted) EndGeneration(session, session.ReportEnd);
    }

    /// <summary>Ends every generation stage of <paramref name="attempt"/> on this node (now, or once its running pass answers).</summary>
    void EndGenerations(AttemptId attempt, bool report)
    {
        foreach (var session in _generations.Values.Where(g => g.Id.Attempt == attempt).ToArray())
            EndGeneration(session, report);
    }

    void EndGeneration(GenerationStageSession session, bool report)
    {
        if (!session.WantEnd(report)) return; // a pass runs (it ends when the pass answers), or it is ending already
        session.Ending();
        var self = Self;
        GenerationSession.EndAsync(session.Loader, session.Layers, session.Stage, session.Session, session.Placement, _askTimeout)
            .ContinueWith(t => new GenerationFreed(session, t.IsCompletedSuccessfully ? null : t.Exception?.GetBaseException().Message),
                TaskScheduler.Default)
            .PipeTo(self);
    }

    /// <summary>A stage's caches are freed: its deployment is released and, when the coordinator ended it, it reports its figures.</summary>
    void OnGenerationFreed(GenerationFreed m)
    {
        var session = m.Session;
        if (m.Error is { } error) _log.Warning("generation stage {0} of {1}: freeing its caches failed: {2}", session.Id.Stage, session.Id.Attempt, error);
        _deployments.Release(session.Deployment, Now);
        if (Current(session))
        {
            _generations.Remove(session.Id);
            var g = session.Open;
            if (session.ReportEnd && m.Error is null)
                g.Coordinator.Tell(new GenerationEnded(g.Job, g.Attempt, g.Stage, session.Plan(_node, g.Device, g.FirstLayer), session.DeviceCapacityBytes));
        }
        session.Dispose();
        StartWaiting();
    }

    bool Current(GenerationStageSession session) => _generations.TryGetValue(session.Id, out var known) && ReferenceEquals(known, session);

    /// <summary>Runs the stage now if its deployment is (or can be made) resident within the host weight budget; else
    /// the stage waits for room. A stage that can never run here fails at once.</summary>
    void Start(StageAttempt attempt, StageAssignment a, ImmutableArray<TensorPayload> activations, bool first = false)
    {
        OffloadPolicy policy;
        LayeredModel stage;
        ImmutableArray<long> layerBytes;
        try
        {
            var model = ModelCatalog.Create(a.Model);
            stage = model.Slice(a.FirstLayer, a.LayerCount);
            policy = OffloadPolicy.For(a.Policy, a.LayerCount);
            ModelCatalog.CheckWeights(a.Model, stage);
            layerBytes = DeploymentWeights.LayerHostBytes(a.Model, stage, _hostMemory);
        }
        catch (Exception e) when (ModelCatalog.IsRefusal(e))
        {
            Fail(attempt, a, e.Message);
            return;
        }
        var key = DeploymentKey.Of(a.Model, a.FirstLayer, a.LayerCount);
        long bytes = layerBytes.Sum();
        if (_deployments.TooLarge(key, bytes) is { } why)
        {
            Fail(attempt, a, why);
            return;
        }
        var deployment = _deployments.TryAcquire(key, bytes, Now, first || NoneWaiting, () => Deploy(a.Model, stage, layerBytes));
        if (deployment is null)
        {
            var waiting = new StageState(a.Stage, StagePhase.WaitingForHostMemory, a, activations);
            if (attempt[a.Stage]?.Phase != StagePhase.WaitingForHostMemory) _waitingForHostMemory.Enqueue(new StageRef(attempt, a.Stage));
            attempt.Set(waiting, Now);
            return;
        }
        attempt.Set(new StageState(a.Stage, StagePhase.Running, a, default, key), Now);
        Run(attempt, a, stage, policy, deployment, activations);
    }

    void Run(StageAttempt attempt, StageAssignment a, LayeredModel stage, OffloadPolicy policy, Deployment deployment,
        ImmutableArray<TensorPayload> activations)
    {
        var (layers, ready) = (deployment.Layers, deployment.Ready);
        var inputs = activations.Select(TensorPayloads.ToTensor).ToArray();
        var coordinator = a.Coordinator;
        var self = Self;
        // Keyed by the deployment (model and layer range), so the stage's pinned layers stay on the device for the next job of it.
        var pass = new DeviceLoaderActor.RunPass(stage, layers, inputs, policy,
            p => { if (p.Phase == LayerPhase.Computed) coordinator.Tell(StageProgress.Of(a, p), self); })
        { Stop = attempt.Stop, ResidentKey = deployment.Key };
        var loader = _loaders[a.Device];
        var hostPeak = DeploymentWeights.MeasurePass(deployment, _hostMemory);
        // The pass starts once every LayerActor holds its host weights: its wall time measures the pass, not reading the checkpoint.
        ready.ContinueWith(r => r.IsCompletedSuccessfully
                ? loader.Ask<object>(pass, Timeout.InfiniteTimeSpan)
                : Task.FromException<object>(r.Exception!.GetBaseException()), TaskScheduler.Default)
            .Unwrap()
            .ContinueWith(t =>
            {
                foreach (var i in inputs) i.Dispose();
                long peakHost = hostPeak();
                var answer = t.IsCompletedSuccessfully
                    ? t.Result is DeviceLoaderActor.PassSucceeded ok ? ok with { Report = ok.Report with { PeakHostWeightBytes = peakHost } } : t.Result
                    : new DeviceLoaderActor.PassFailed(t.Exception?.GetBaseException().Message ?? "cancelled", t.Exception!);
                return new StageFinished(attempt, a, answer);
            }, TaskScheduler.Default)
            .PipeTo(self);
    }

    void OnFinished(StageFinished f)
    {
        var a = f.Stage;
        var attempt = f.Attempt;
        if (attempt[a.Stage] is { Deployment: { } key }) _deployments.Release(key, Now);
        attempt.Set(attempt[a.Stage]!.Finished(), Now);
        if (f.Answer is DeviceLoaderActor.PassSucceeded ok)
        {
            var output = ok.Outputs.Select(t => { using (t) return TensorPayloads.From(t); }).ToImmutableArray();
            if (!attempt.Cancelled)
            {
                a.Coordinator.Tell(new StageDone(a.Job, a.Attempt, a.Stage, _node, ok.Report with { Device = a.Device }));
                if (a.Stage == a.Stages - 1) _sender.Tell(a.Coordinator, new StageOutput(a.Job, a.Attempt, output), Self);
                else _sender.Tell(a.Next!, new StageInput(a.Job, a.Attempt, a.Stage + 1, output), Self);
            }
        }
        else if (f.Answer is DeviceLoaderActor.PassFailed failed)
        {
            if (attempt.Cancelled) _log.Debug("stage {0} of cancelled attempt {1} stopped: {2}", a.Stage, attempt.Id, failed.Reason);
            else
            {
                _log.Warning("stage {0} of job {1} failed on {2}: {3}", a.Stage, a.Job, a.Device, failed.Reason);
                a.Coordinator.Tell(new StageFailed(a.Job, a.Attempt, a.Stage, failed.Reason));
            }
        }
        Forget(attempt);
        StartWaiting();
    }

    void Fail(StageAttempt attempt, StageAssignment a, string reason)
    {
        attempt.Set(new StageState(a.Stage, StagePhase.Finished, a, default), Now);
        a.Coordinator.Tell(new StageFailed(a.Job, a.Attempt, a.Stage, reason));
        Forget(attempt);
    }

    /// <summary>An attempt none of whose stages here will run again is dropped, unless it was cancelled: that one stays
    /// as a tombstone until <see cref="OnTidy"/> trims it.</summary>
    void Forget(StageAttempt attempt)
    {
        bool current = _attempts.TryGetValue(attempt.Id, out var known) && ReferenceEquals(known, attempt);
        if (!current)
        {
            if (!attempt.AnyRunning) attempt.Dispose(); // replaced by a new attempt of the same id: its last pass ended
            return;
        }
        if (attempt.Cancelled || !attempt.AllFinished) return;
        _attempts.Remove(attempt.Id);
        attempt.Dispose();
    }

    /// <summary>Starts the stages waiting for host memory, first come first, while their deployments fit.</summary>
    void StartWaiting()
    {
        while (_trainingWaiting.TryPeek(out var opening))
        {
            if (!OpenTraining(opening, first: true)) return; // still no room
            _trainingWaiting.Dequeue();
        }
        while (_waitingForHostMemory.TryPeek(out var next))
        {
            var attempt = next.Attempt;
            if (attempt[next.Stage] is not { Phase: StagePhase.WaitingForHostMemory } stage)
            {
                _waitingForHostMemory.Dequeue(); // cancelled meanwhile
                continue;
            }
            Start(attempt, stage.Assignment!, stage.Input, first: true);
            if (attempt[next.Stage]?.Phase == StagePhase.WaitingForHostMemory) return; // still no room
            _waitingForHostMemory.Dequeue();
        }
    }

    void OnTerminated(IActorRef actor)
    {
        if (_trainingStages.Remove(actor, out var training)) _deployments.Ended(training); // its weights and optimizer state went with it
        else if (!_deployments.Stopped(actor)) return;
        StartWaiting();
    }

    void OnTidy()
    {
        var now = Now;
        if (_deployments.EvictIdle(now, _worker.DeploymentIdleTimeout) > 0) _log.Debug("stopped idle deployments");
        var over = _attempts.Values
            .Where(t => !t.AnyRunning && (t.Cancelled || t.OnlyEarlyInputs) && now - t.Since >= _worker.AttemptRetention)
            .ToArray();
        foreach (var attempt in over)
        {
            _attempts.Remove(attempt.Id);
            attempt.Dispose();
        }
    }

    /// <summary>LayerActors for a stage's layers on this node, watched so that their bytes count until they have stopped.</summary>
    (ImmutableArray<IActorRef> Layers, ImmutableArray<long> LayerBytes, Task Ready) Deploy(ModelSpec spec, LayeredModel stage,
        ImmutableArray<long> layerBytes)
    {
        int n = ++_deploymentCounter;
        var weights = DeploymentWeights.Source(spec, stage, _hostMemory);
        bool pin = _devices.Values.Any(d => d.WantsPinnedHost);
        var layers = stage.Layers.Select(l => Context.ActorOf(LayerActor.Props(l, weights, pin), $"m{n}-layer-{l.Index}")).ToImmutableArray();
        // Disk-tier LayerActors hold nothing to wait for: each pass reads the layers it admits.
        var ready = weights is DiskTierWeights ? Task.CompletedTask
            : Task.WhenAll(layers.Select(l => l.Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, _askTimeout)));
        if (weights is IDisposable source) ready.ContinueWith(_ => source.Dispose(), TaskScheduler.Default); // a checkpoint's open files
        return (layers, layerBytes, ready);
    }

    void StopLayer(IActorRef layer)
    {
        Context.Watch(layer);
        Context.Stop(layer);
    }
}
