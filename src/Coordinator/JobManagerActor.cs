using System.Collections.Immutable;
using System.Diagnostics;
using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;
using Superpipeline.Contracts;
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
        public IJobEvent? Answer { get; set; }
    }

    /// <summary>One placed pass through the stages, carrying one job or several coalesced as micro-batches.</summary>
    sealed class Run(JobId id, int attempt, IReadOnlyList<Job> jobs, IReadOnlyList<StagePlacement> placement)
    {
        public JobId Id { get; } = id;
        public int Attempt { get; } = attempt;
        public IReadOnlyList<Job> Jobs { get; } = jobs;
        public IReadOnlyList<StagePlacement> Placement { get; } = placement;
        public Dictionary<int, (string Node, PassReport Report)> Stages { get; } = [];
        public Stopwatch Clock { get; } = Stopwatch.StartNew();
        public LayeredModel Model => Jobs[0].Model;
    }

    readonly SuperpipelineSettings _settings;
    readonly Dictionary<Address, Worker> _workers = [];
    readonly Dictionary<JobId, Job> _jobs = [];
    readonly LinkedList<JobId> _queue = new();
    readonly Dictionary<JobId, Run> _running = [];
    readonly Queue<JobId> _answered = new(); // oldest answered first: records beyond the limit are forgotten
    int _attempts;
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

    /// <summary>In a cluster the manager follows membership; in one process (`run`) only heartbeats.</summary>
    bool InCluster => Context.System.Settings.ProviderClass.Contains("Cluster", StringComparison.Ordinal);

    protected override void PreStart()
    {
        if (InCluster)
            Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents,
                typeof(ClusterEvent.UnreachableMember), typeof(ClusterEvent.MemberRemoved));
        Timers.StartPeriodicTimer("sweep", Sweep.Instance, _settings.Heartbeat);
    }

    protected override void PostStop()
    {
        if (InCluster)
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
            if (existing.Submit != submit)
            {
                Sender.Tell(new JobRefused(submit.Id, $"job id {submit.Id} was already used for a different job; choose a new id"));
                return;
            }
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
        long need = largest.Bytes + ModelCost.From(model).ActivationBoundBytes();
        return need > capacity
            ? $"--device-memory {capacity:N0} bytes is below the largest layer, {largest.Index} ({largest.Name}) of {largest.Bytes:N0} bytes (with activations it needs {need:N0})"
            : null;
    }

    /// <summary>Places queued jobs while there is room to run them and devices to run them on. Queued jobs of the same
    /// model (same weights) and policy are coalesced into one run, up to the micro-batch limit, so that each layer's
    /// weights are loaded once for all of them (their inputs may differ); runs are pipelined through the stages.</summary>
    void Dispatch()
    {
        while (_running.Count < _settings.MaxRunningJobs && _queue.First is { } node && _workers.Count > 0)
        {
            var first = _jobs[node.Value];
            _queue.RemoveFirst();
            var model = first.Submit.Model;
            var batch = new List<Job> { first };
            for (var n = _queue.First; n is not null && batch.Count < _settings.MaxMicroBatches;)
            {
                var next = n.Next;
                var candidate = _jobs[n.Value];
                if (candidate.Submit.Model == model && candidate.Submit.Policy == first.Submit.Policy)
                {
                    batch.Add(candidate);
                    _queue.Remove(n);
                }
                n = next;
            }
            var slots = _workers.Values.SelectMany(w => w.Devices.Select(d => new DeviceSlot(w.Agent, w.Node, d))).ToArray();
            IReadOnlyList<StagePlacement> placement;
            try
            {
                var cost = ModelCost.From(first.Model);
                placement = Placement.Place(cost, slots, first.Submit.Policy.Auto ? PlanFor(cost, slots) : first.Submit.Policy);
            }
            catch (ArgumentException e)
            {
                foreach (var job in batch) Answer(job, new JobRefused(job.Submit.Id, Unplaceable(job.Model) ?? e.Message));
                continue;
            }
            var run = new Run(first.Submit.Id, ++_attempts, batch, placement);
            _running[run.Id] = run;
            var seeds = batch.Select(j => j.Submit.InputSeed ?? j.Submit.Model.Seed).ToImmutableArray();
            for (int s = placement.Count - 1; s >= 0; s--)
            {
                var p = placement[s];
                p.Slot.Agent.Tell(new StageAssignment(run.Id, run.Attempt, s, placement.Count, first.Submit.Model, seeds, p.FirstLayer, p.LayerCount,
                    p.Slot.Device.Name, p.Policy, s + 1 < placement.Count ? placement[s + 1].Slot.Agent : null, Self));
            }
        }
    }

    /// <summary>--window auto across devices: the smallest device's budget decides one window for every stage.</summary>
    static PolicySpec PlanFor(ModelCost cost, IReadOnlyList<DeviceSlot> slots)
    {
        var smallest = slots.MinBy(s => s.Device.CapacityBytes)!.Device;
        if (smallest.MeasuredFlopsPerSecond is not { } flops || smallest.MeasuredLinkBytesPerSecond is not { } link)
            throw new ArgumentException($"device {smallest.Name} was registered without a measured compute rate and link, so window auto cannot plan for it");
        var device = new DeviceCost(smallest.Name, smallest.CapacityBytes, link, flops).Validated();
        return Planner.Choose(cost, device, smallest.CapacityBytes).Policy;
    }

    void OnProgress(JobProgress p)
    {
        if (!_running.TryGetValue(p.Id, out var run) || !run.Placement.Any(s => s.Slot.Agent.Equals(Sender))) return; // not from a stage of the current run
        var progress = p.Progress with { Layers = run.Model.Layers.Count };
        foreach (var job in run.Jobs)
            foreach (var c in job.Clients) c.Tell(new JobProgress(job.Submit.Id, progress));
    }

    bool Current(JobId id, int attempt, out Run run) => _running.TryGetValue(id, out run!) && run.Attempt == attempt;

    void OnStageDone(StageDone d)
    {
        if (Current(d.Job, d.Attempt, out var run)) run.Stages[d.Stage] = (d.Node, d.Report);
    }

    void OnStageFailed(StageFailed f)
    {
        if (!Current(f.Job, f.Attempt, out var run)) return;
        Cancel(run);
        _running.Remove(run.Id);
        foreach (var job in run.Jobs) Answer(job, new JobFailed(job.Submit.Id, f.Reason));
    }

    void OnOutput(StageOutput o)
    {
        if (!Current(o.Job, o.Attempt, out var run)) return;
        run.Clock.Stop();
        _running.Remove(run.Id);
        if (o.Outputs.Length != run.Jobs.Count)
        {
            foreach (var job in run.Jobs) Answer(job, new JobFailed(job.Submit.Id, $"the last stage returned {o.Outputs.Length} outputs for {run.Jobs.Count} jobs"));
            return;
        }
        var report = Combine(run);
        for (int i = 0; i < run.Jobs.Count; i++)
            Answer(run.Jobs[i], new JobSucceeded(run.Jobs[i].Submit.Id, o.Outputs[i], report));
    }

    /// <summary>One report for the whole job: every stage's layers in order, peak of the fullest device, the plan.</summary>
    PassReport Combine(Run run)
    {
        var placement = run.Placement;
        var stages = placement.Select(p => (p, run.Stages.TryGetValue(p.Stage, out var s) ? s.Report : null)).ToArray();
        var timings = stages.SelectMany(s => s.Item2 is null ? [] : s.Item2.LayerTimings.Select(t => t with { Index = t.Index + s.p.FirstLayer })).ToImmutableArray();
        var plan = stages.Select(s => new StagePlan(s.p.Stage, s.p.Slot.Node, s.p.Slot.Device.Name, s.p.FirstLayer, s.p.LayerCount,
            s.Item2?.Window ?? 0, s.Item2?.Swap ?? 0, s.p.Bytes, s.p.Flops, s.Item2?.PeakDeviceBytes ?? 0, s.Item2?.WallSeconds ?? 0)).ToImmutableArray();
        var first = stages[0].Item2;
        return new PassReport(
            placement.Count == 1 ? placement[0].Slot.Device.Name : string.Join(",", placement.Select(p => $"{p.Slot.Node}/{p.Slot.Device.Name}")),
            run.Model.Layers.Count, first?.Window ?? 0, first?.Swap ?? 0, run.Model.Bytes,
            placement.Min(p => p.Slot.Device.CapacityBytes),
            stages.Max(s => s.Item2?.PeakDeviceBytes ?? 0),
            stages.Sum(s => s.Item2?.BytesTransferred ?? 0),
            placement.Count == 1 && first is not null ? first.WallSeconds : run.Clock.Elapsed.TotalSeconds,
            stages.Sum(s => s.Item2?.LowerBoundSeconds ?? 0),
            timings) { Stages = plan, MicroBatches = run.Jobs.Count };
    }

    void Answer(Job job, IJobEvent answer)
    {
        job.Answer = answer;
        _answered.Enqueue(job.Submit.Id);
        while (_answered.Count > _settings.MaxJobRecords) _jobs.Remove(_answered.Dequeue());
        foreach (var c in job.Clients) _sender.Tell(c, (IProtocolMessage)answer, Self);
        if (answer is not JobSucceeded) _log.Info("job {0}: {1}", job.Submit.Id, answer);
        Dispatch();
    }

    void Cancel(Run run, Address? gone = null)
    {
        foreach (var agent in run.Placement.Select(p => p.Slot.Agent).Distinct().Where(a => !a.Path.Address.Equals(gone)))
            agent.Tell(new CancelAttempt(run.Id, run.Attempt));
    }

    /// <summary>A worker is gone: its devices leave the inventory, and the runs that used it are placed again.</summary>
    void Lost(Address address, string why)
    {
        if (!_workers.Remove(address, out var worker)) return;
        _log.Warning("worker {0} is {1}; re-placing its jobs", worker.Node, why);
        foreach (var run in _running.Values.ToArray())
        {
            if (!run.Placement.Any(p => p.Slot.Agent.Path.Address.Equals(address))) continue;
            Cancel(run, address);
            _running.Remove(run.Id);
            foreach (var job in run.Jobs.Reverse()) _queue.AddFirst(job.Submit.Id);
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
