using System.Collections.Immutable;
using System.Diagnostics;
using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;
using Superpipeline.Messages;
using Superpipeline.Messages.Serialization;
using Superpipeline.Workers;
using static Superpipeline.Messages.JobProtocol;
using static Superpipeline.Messages.StageProtocol;
using static Superpipeline.Messages.WorkerProtocol;

namespace Superpipeline.Coordinator;

/// <summary>The coordinator: keeps the device inventory that workers register, admits jobs into a bounded queue,
/// places each on the devices as contiguous pipeline stages, and answers every submitted job exactly once
/// (<see cref="JobSucceeded"/>, <see cref="JobFailed"/> or <see cref="JobRefused"/>). A resubmitted id is never
/// run twice. When a worker leaves (unreachable, removed, or silent past three heartbeats) the attempts that used
/// it are cancelled and the jobs placed again on what remains; answers of a stale attempt are ignored. In a
/// cluster it runs as a singleton; in one process (`run`) it is the same actor beside one node agent.</summary>
public sealed class JobManagerActor : ReceiveActor, IWithTimers
{
    private sealed record Sweep : INoSerializationVerificationNeeded
    {
        public static readonly Sweep Instance = new();
        Sweep() { }
    }

    sealed record Worker(IActorRef Agent, string Node, ImmutableArray<DeviceInfo> Devices, DateTime LastSeen);

    sealed class Job(SubmitJob submit, LayeredModel model)
    {
        public SubmitJob Submit { get; } = submit;
        public LayeredModel Model { get; } = model;
        public List<IActorRef> Clients { get; } = [];
        public int Attempt { get; set; }
        public IReadOnlyList<StagePlacement>? Placement { get; set; }
        public Dictionary<int, (string Node, PassReport Report)> Stages { get; } = [];
        public Stopwatch Clock { get; } = new();
        public IJobEvent? Answer { get; set; }
    }

    readonly SuperpipelineSettings _settings;
    readonly Dictionary<Address, Worker> _workers = [];
    readonly Dictionary<JobId, Job> _jobs = [];
    readonly LinkedList<JobId> _queue = new();
    readonly HashSet<JobId> _running = [];
    readonly ChunkAssembler _assembler;
    readonly ChunkingSender _sender;
    readonly ILoggingAdapter _log = Context.GetLogger();

    public JobManagerActor(SuperpipelineSettings settings)
    {
        _settings = settings;
        _assembler = new ChunkAssembler(Context.System);
        _sender = ChunkingSender.For(Context.System);
        Receive<MessageChunk>(c => { if (_assembler.Add(c) is { } whole) Self.Forward(whole); });
        Receive<RegisterWorker>(OnRegister);
        Receive<SubmitJob>(OnSubmit);
        Receive<JobProgress>(OnProgress);
        Receive<StageDone>(OnStageDone);
        Receive<StageOutput>(OnOutput);
        Receive<StageFailed>(OnStageFailed);
        Receive<ClusterEvent.UnreachableMember>(m => Lost(m.Member.Address, "unreachable"));
        Receive<ClusterEvent.MemberRemoved>(m => Lost(m.Member.Address, "removed"));
        Receive<ClusterEvent.IMemberEvent>(_ => { });
        Receive<Sweep>(_ => SweepSilentWorkers());
    }

    public ITimerScheduler Timers { get; set; } = null!;

    /// <summary>Runs on the host dispatcher: it builds models to check jobs and turns tensors into reports.</summary>
    public static Props Props(SuperpipelineSettings settings) =>
        Akka.Actor.Props.Create(() => new JobManagerActor(settings)).WithDispatcher(Dispatchers.Host);

    protected override void PreStart()
    {
        if (Context.System.Settings.ProviderClass.Contains("Cluster", StringComparison.Ordinal))
            Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents,
                typeof(ClusterEvent.UnreachableMember), typeof(ClusterEvent.MemberRemoved));
        Timers.StartPeriodicTimer("sweep", Sweep.Instance, _settings.Heartbeat);
    }

    protected override void PostStop()
    {
        if (Context.System.Settings.ProviderClass.Contains("Cluster", StringComparison.Ordinal))
            Cluster.Get(Context.System).Unsubscribe(Self);
    }

    void OnRegister(RegisterWorker r)
    {
        bool known = _workers.ContainsKey(r.Agent.Path.Address);
        _workers[r.Agent.Path.Address] = new Worker(r.Agent, r.Node, r.Devices, DateTime.UtcNow);
        if (!known)
        {
            _log.Info("worker {0} registered {1} device(s)", r.Node, r.Devices.Length);
            r.Agent.Tell(new WorkerRegistered(_workers.Count));
            Dispatch();
        }
    }

    void OnSubmit(SubmitJob submit)
    {
        if (_jobs.TryGetValue(submit.Id, out var existing))
        {
            if (existing.Answer is { } answer) _sender.Tell(Sender, (IProtocolMessage)answer, Self);
            else if (!existing.Clients.Contains(Sender)) existing.Clients.Add(Sender);
            return;
        }
        LayeredModel model;
        try
        {
            model = ModelCatalog.Create(submit.Model);
            if (!submit.Policy.Auto) StreamPolicy.Create(submit.Policy, model.Layers.Count);
        }
        catch (ArgumentException e)
        {
            Sender.Tell(new JobFailed(submit.Id, e.Message));
            return;
        }
        if (_workers.Count > 0 && Unplaceable(model) is { } why)
        {
            Sender.Tell(new JobRefused(submit.Id, why));
            return;
        }
        if (_queue.Count >= _settings.MaxQueuedJobs)
        {
            Sender.Tell(new JobRefused(submit.Id, $"the job queue is full ({_queue.Count} jobs waiting); submit again later"));
            return;
        }
        var job = new Job(submit, model);
        job.Clients.Add(Sender);
        _jobs[submit.Id] = job;
        _queue.AddLast(submit.Id);
        Sender.Tell(new JobAccepted(submit.Id));
        Dispatch();
    }

    /// <summary>Why no registered device can take the model, or null if one can.</summary>
    string? Unplaceable(LayeredModel model)
    {
        var largest = model.Layers.MaxBy(l => l.Bytes)!;
        long capacity = _workers.Values.SelectMany(w => w.Devices).Max(d => d.CapacityBytes);
        long need = largest.Bytes + model.ActivationBoundBytes();
        return need > capacity
            ? $"--device-memory {capacity:N0} bytes is below the largest layer, {largest.Index} ({largest.Name}) of {largest.Bytes:N0} bytes (with activations it needs {need:N0})"
            : null;
    }

    /// <summary>Places queued jobs while there is room to run them and devices to run them on.</summary>
    void Dispatch()
    {
        while (_running.Count < _settings.MaxRunningJobs && _queue.First is { } node && _workers.Count > 0)
        {
            var id = node.Value;
            _queue.RemoveFirst();
            var job = _jobs[id];
            var slots = _workers.Values.SelectMany(w => w.Devices.Select(d => new DeviceSlot(w.Agent, w.Node, d))).ToArray();
            try
            {
                var cost = ModelCost.From(job.Model);
                var policy = job.Submit.Policy.Auto ? new PolicySpec(null, null) : job.Submit.Policy;
                job.Placement = Placement.Place(cost, slots, job.Submit.Policy.Auto ? PlanFor(cost, slots) : policy);
            }
            catch (ArgumentException e)
            {
                Answer(job, new JobRefused(id, Unplaceable(job.Model) ?? e.Message));
                continue;
            }
            job.Attempt++;
            job.Stages.Clear();
            job.Clock.Restart();
            _running.Add(id);
            var placement = job.Placement;
            for (int s = placement.Count - 1; s >= 0; s--)
            {
                var p = placement[s];
                p.Slot.Agent.Tell(new StageAssignment(id, job.Attempt, s, placement.Count, job.Submit.Model, p.FirstLayer, p.LayerCount,
                    p.Slot.Device.Name, p.Policy, s + 1 < placement.Count ? placement[s + 1].Slot.Agent : null, Self));
            }
        }
    }

    /// <summary>--window auto across devices: the smallest device's budget decides one window for every stage.</summary>
    static PolicySpec PlanFor(ModelCost cost, IReadOnlyList<DeviceSlot> slots)
    {
        var smallest = slots.MinBy(s => s.Device.CapacityBytes)!.Device;
        var device = new DeviceCost(smallest.Name, smallest.CapacityBytes, (smallest.LinkGBps ?? 16) * 1e9, 1e11);
        return Planner.Choose(cost, device, smallest.CapacityBytes).Policy;
    }

    void OnProgress(JobProgress p)
    {
        if (_jobs.TryGetValue(p.Id, out var job) && job.Answer is null)
        {
            var progress = p.Progress with { Layers = job.Model.Layers.Count };
            foreach (var c in job.Clients) c.Tell(new JobProgress(p.Id, progress));
        }
    }

    bool Current(JobId id, int attempt, out Job job) =>
        _jobs.TryGetValue(id, out job!) && job.Answer is null && job.Attempt == attempt && _running.Contains(id);

    void OnStageDone(StageDone d)
    {
        if (Current(d.Job, d.Attempt, out var job)) job.Stages[d.Stage] = (d.Node, d.Report);
    }

    void OnStageFailed(StageFailed f)
    {
        if (Current(f.Job, f.Attempt, out var job))
        {
            Cancel(job);
            Answer(job, new JobFailed(f.Job, f.Reason));
        }
    }

    void OnOutput(StageOutput o)
    {
        if (!Current(o.Job, o.Attempt, out var job)) return;
        job.Clock.Stop();
        Answer(job, new JobSucceeded(o.Job, o.Output, Combine(job)));
    }

    /// <summary>One report for the whole job: every stage's layers in order, peak of the fullest device, the plan.</summary>
    PassReport Combine(Job job)
    {
        var placement = job.Placement!;
        var stages = placement.Select(p => (p, job.Stages.TryGetValue(p.Stage, out var s) ? s.Report : null)).ToArray();
        var timings = stages.SelectMany(s => s.Item2 is null ? [] : s.Item2.LayerTimings.Select(t => t with { Index = t.Index + s.p.FirstLayer })).ToImmutableArray();
        var plan = stages.Select(s => new StagePlan(s.p.Stage, s.p.Slot.Node, s.p.Slot.Device.Name, s.p.FirstLayer, s.p.LayerCount,
            s.Item2?.Window ?? 0, s.Item2?.Swap ?? 0, s.p.Bytes, s.p.Flops, s.Item2?.PeakDeviceBytes ?? 0, s.Item2?.WallSeconds ?? 0)).ToImmutableArray();
        var first = stages[0].Item2;
        return new PassReport(
            placement.Count == 1 ? placement[0].Slot.Device.Name : string.Join(",", placement.Select(p => $"{p.Slot.Node}/{p.Slot.Device.Name}")),
            job.Model.Layers.Count, first?.Window ?? 0, first?.Swap ?? 0, job.Model.Bytes,
            placement.Min(p => p.Slot.Device.CapacityBytes),
            stages.Max(s => s.Item2?.PeakDeviceBytes ?? 0),
            stages.Sum(s => s.Item2?.BytesTransferred ?? 0),
            placement.Count == 1 && first is not null ? first.WallSeconds : job.Clock.Elapsed.TotalSeconds,
            stages.Sum(s => s.Item2?.LowerBoundSeconds ?? 0),
            timings) { Stages = plan };
    }

    void Answer(Job job, IJobEvent answer)
    {
        job.Answer = answer;
        _running.Remove(job.Submit.Id);
        foreach (var c in job.Clients) _sender.Tell(c, (IProtocolMessage)answer, Self);
        if (answer is not JobSucceeded) _log.Info("job {0}: {1}", job.Submit.Id, answer);
        Dispatch();
    }

    void Cancel(Job job)
    {
        foreach (var agent in job.Placement?.Select(p => p.Slot.Agent).Distinct() ?? [])
            agent.Tell(new CancelAttempt(job.Submit.Id, job.Attempt));
    }

    /// <summary>A worker is gone: its devices leave the inventory, and the jobs running on it are placed again.</summary>
    void Lost(Address address, string why)
    {
        if (!_workers.Remove(address, out var worker)) return;
        _log.Warning("worker {0} is {1}; re-placing its jobs", worker.Node, why);
        foreach (var id in _running.ToArray())
        {
            var job = _jobs[id];
            if (job.Placement is null || !job.Placement.Any(p => p.Slot.Agent.Path.Address.Equals(address))) continue;
            Cancel(job);
            _running.Remove(id);
            _queue.AddFirst(id);
        }
        Dispatch();
    }

    void SweepSilentWorkers()
    {
        var deadline = DateTime.UtcNow - 3 * _settings.Heartbeat;
        foreach (var w in _workers.Values.Where(w => w.LastSeen < deadline).ToArray())
            Lost(w.Agent.Path.Address, "silent");
    }
}
