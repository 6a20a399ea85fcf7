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
using Superpipeline.Engine.Generation;
using static Superpipeline.Messages.GenerationProtocol;
using static Superpipeline.Messages.JobProtocol;
using static Superpipeline.Messages.StageProtocol;
using static Superpipeline.Messages.WorkerProtocol;

namespace Superpipeline.Coordinator.Cluster;

/// <summary>The coordinator: keeps the device inventory that workers register, admits jobs into a bounded queue,
/// places each on the devices as contiguous pipeline stages, and answers every submitted job exactly once
/// (<see cref="JobSucceeded"/>, <see cref="JobFailed"/> or <see cref="JobRefused"/>). A submission that cannot run
/// (bad model or knobs, no device can hold it, full queue, an id reused for a different job) is refused before
/// anything runs; a job that ran and did not complete fails. A resubmitted id is never run twice. When a worker
/// leaves (unreachable, removed, or silent past three heartbeats) the attempts that used it are cancelled and the
/// jobs placed again on what remains; answers of a stale attempt are ignored. In a cluster it runs as a singleton;
/// in one process (`run`) it is the same actor beside one node agent.
/// <para>Its job state is one <see cref="JobManagerState"/> (a <see cref="JobRecord"/> per job with its
/// <see cref="JobPhase"/>, an <see cref="Attempt"/> per placed run), changed only by <see cref="Apply"/> with an
/// <see cref="IJobManagerEvent"/>. Queued work is placed after each message is handled, never from inside a handler.</para></summary>
public sealed class JobManagerActor : ReceiveActor, IWithTimers
{
    private sealed record Sweep : INoSerializationVerificationNeeded
    {
        public static readonly Sweep Instance = new();
        Sweep() { }
    }

    /// <summary>A generation attempt's loop ended: with its outcome, or with the error that ended it.</summary>
    private sealed record GenerationLoopEnded(int Attempt, GenerationOutcome? Outcome, Exception? Error) : INoSerializationVerificationNeeded;

    /// <summary>A generation attempt's loop made a step's tokens.</summary>
    private sealed record TokensMade(int Attempt, TokenStep Step) : INoSerializationVerificationNeeded;

    /// <summary>A registered worker; the inventory is rebuilt from registrations, so it is not journaled job state.</summary>
    sealed record Worker(IActorRef Agent, string Node, ImmutableArray<DeviceInfo> Devices, DateTime LastSeen);

    readonly SuperpipelineSettings _settings;
    readonly Dictionary<Address, Worker> _workers = [];
    JobManagerState _state = JobManagerState.Empty;
    /// <summary>The loops of running generation attempts, by attempt number: runtime state beside the journaled job state
    /// (a restarted manager places the job again, and generation restarts from its prompts).</summary>
    readonly Dictionary<int, GenerationRun> _generations = [];
    /// <summary>The coordinators of running training attempts (<see cref="TrainingJobActor"/> children), by attempt number.</summary>
    readonly Dictionary<int, IActorRef> _trainings = [];
    /// <summary>The latest training checkpoint of each running training job: where an attempt placed again resumes.</summary>
    readonly Dictionary<JobId, TrainingResume> _resumes = [];
    readonly ChunkingSender _sender;
    readonly ILoggingAdapter _log = Context.GetLogger();

    public JobManagerActor(SuperpipelineSettings settings)
    {
        _settings = settings;
        _sender = ChunkingSender.For(Context.System);
        Receive<MessageChunk>(ChunkAssembler.Receiver(Context));
        Receive<RegisterWorker>(OnRegister);
        Receive<SubmitJob>(OnSubmit);
        Receive<StageProgress>(OnProgress);
        Receive<StageDone>(OnStageDone);
        Receive<StageOutput>(OnOutput);
        Receive<StageFailed>(OnStageFailed);
        Receive<GenerationReady>(OnGenerationReady);
        Receive<GenerationLogits>(OnLogits);
        Receive<TokensMade>(OnTokens);
        Receive<GenerationLoopEnded>(OnLoopEnded);
        Receive<GenerationEnded>(OnGenerationEnded);
        Receive<JobTrainingStep>(OnTrainingStep);
        Receive<JobTrained>(m => OnTrainingEnded(m.Id, m));
        Receive<JobFailed>(m => OnTrainingEnded(m.Id, m));
        Receive<TrainingJobActor.Checkpointed>(OnCheckpointed);
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
            Akka.Cluster.Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents,
                typeof(ClusterEvent.UnreachableMember), typeof(ClusterEvent.MemberRemoved));
        Timers.StartPeriodicTimer("sweep", Sweep.Instance, _settings.Heartbeat);
    }

    protected override void PostStop()
    {
        foreach (var run in _generations.Values) run.Cancel();
        if (InCluster)
            Akka.Cluster.Cluster.Get(Context.System).Unsubscribe(Self);
    }

    /// <summary>Each message is handled to the end first; then queued jobs are placed if there is room and devices.</summary>
    protected override bool AroundReceive(Receive receive, object message)
    {
        bool handled = base.AroundReceive(receive, message);
        Dispatch();
        return handled;
    }

    /// <summary>The one place where job state changes (what a journal would persist and replay).</summary>
    void Apply(IJobManagerEvent e) => _state = _state.Apply(e);

    void OnRegister(RegisterWorker r)
    {
        bool known = _workers.ContainsKey(r.Agent.Path.Address);
        _workers[r.Agent.Path.Address] = new Worker(r.Agent, r.Node, r.Devices, DateTime.UtcNow);
        if (!known)
        {
            _log.Info("worker {0} registered {1} device(s)", r.Node, r.Devices.Length);
            r.Agent.Tell(new WorkerRegistered(_workers.Count));
        }
    }

    void OnSubmit(SubmitJob submit)
    {
        if (_state.Jobs.TryGetValue(submit.Id, out var existing))
        {
            if (existing.Submit != submit)
                Sender.Tell(new JobRefused(submit.Id, $"job id {submit.Id} was already used for a different job; choose a new id"));
            else if (existing.Answer is { } answer)
                _sender.Tell(Sender, answer, Self);
            else if (!existing.Clients.Contains(Sender))
                Apply(new ClientJoined(submit.Id, Sender));
            return;
        }
        if (Refusal(submit) is { } why)
        {
            Sender.Tell(new JobRefused(submit.Id, why));
            return;
        }
        Apply(new JobQueued(submit, Sender));
        Sender.Tell(new JobAccepted(submit.Id));
    }

    /// <summary>Why a new submission cannot be accepted (nothing has run for it), or null if it can.</summary>
    string? Refusal(SubmitJob submit)
    {
        LayeredModel model;
        try
        {
            model = ModelCatalog.Create(submit.Model);
            if (!submit.Policy.Auto) OffloadPolicy.For(submit.Policy with { ResidentAuto = false }, model.Layers.Count); // auto pins are planned at dispatch
            if (submit.Generation is { } g)
            {
                var (request, prompts, _) = GenerationSession.FromSpec(g);
                GenerationSession.Check(model, prompts, request);
            }
            if (submit.Training is { } t)
                TrainingJobActor.Check(model, [new TrainingStagePlacement(ActorRefs.Nobody, "", "", 0, model.Layers.Count, submit.Policy)], t);
            ModelCatalog.CheckWeights(submit.Model, model);
        }
        catch (Exception e) when (ModelCatalog.IsRefusal(e))
        {
            return e.Message;
        }
        if (_workers.Count > 0 && Unplaceable(model) is { } why) return why;
        if (_state.Queue.Count >= _settings.MaxQueuedJobs) return $"the job queue is full ({_state.Queue.Count} jobs waiting); submit again later";
        return null;
    }

    /// <summary>Why no registered device can take the model, or null if one can.</summary>
    string? Unplaceable(LayeredModel model)
    {
        long capacity = _workers.Values.SelectMany(w => w.Devices).Max(d => d.CapacityBytes);
        return ModelCost.From(model).DeviceMemoryRefusal(capacity)?.Message;
    }

    /// <summary>Places queued jobs while there is room to run them and devices to run them on. Queued jobs of the same
    /// model (same weights) and policy are coalesced into one attempt, up to the micro-batch limit, so that each layer's
    /// weights are loaded once for all of them (their inputs may differ); attempts are pipelined through the stages.</summary>
    void Dispatch()
    {
        while (_state.Attempts.Count < _settings.MaxRunningJobs && _state.Queue.Count > 0 && _workers.Count > 0)
        {
            var batch = NextBatch();
            var first = batch[0];
            var slots = _workers.Values.SelectMany(w => w.Devices.Select(d => new DeviceSlot(w.Agent, w.Node, d))).ToArray();
            IReadOnlyList<StagePlacement> placement;
            try
            {
                var cost = ModelCost.From(first.Model);
                var asked = first.Submit.Policy;
                placement = Placement.Place(cost, slots, asked.Auto || asked.ResidentAuto ? PlanFor(first, cost, slots, asked) : asked);
            }
            catch (ArgumentException e)
            {
                foreach (var job in batch) Answer(job, new JobRefused(job.Id, Unplaceable(job.Model) ?? e.Message));
                continue;
            }
            var attempt = new Attempt(_state.LastAttempt + 1, [.. batch.Select(j => j.Id)], [.. placement], Stopwatch.GetTimestamp());
            Apply(new AttemptPlaced(attempt));
            if (first.Submit.Generation is { } generation)
            {
                OpenGeneration(attempt, first, generation);
                continue;
            }
            if (first.Submit.Training is { } training)
            {
                OpenTraining(attempt, first, training);
                continue;
            }
            var seeds = batch.Select(j => j.Submit.InputSeed ?? j.Submit.Model.Seed).ToImmutableArray();
            for (int s = placement.Count - 1; s >= 0; s--)
            {
                var p = placement[s];
                var next = s + 1 < placement.Count ? placement[s + 1].Slot.Agent : null;
                p.Slot.Agent.Tell(new StageAssignment(attempt.Run, attempt.Number, s, placement.Count, first.Submit.Model, seeds, p.FirstLayer, p.LayerCount,
                    p.Slot.Device.Name, p.Policy, next, Self));
            }
        }
    }

    /// <summary>The first queued job and, behind it, queued jobs of the same model and policy up to the micro-batch limit.
    /// Generation jobs are never coalesced: each runs alone.</summary>
    List<JobRecord> NextBatch()
    {
        var first = _state.Jobs[_state.Queue[0]];
        var batch = new List<JobRecord> { first };
        if (first.Submit.Generation is not null || first.Submit.Training is not null) return batch;
        foreach (var id in _state.Queue.Skip(1))
        {
            if (batch.Count >= _settings.MaxMicroBatches) break;
            var candidate = _state.Jobs[id];
            if (candidate.Submit.Generation is null && candidate.Submit.Training is null && candidate.Submit.Model == first.Submit.Model
                && candidate.Submit.Policy == first.Submit.Policy)
                batch.Add(candidate);
        }
        return batch;
    }

    /// <summary>--window auto (and --resident-layers auto) across devices: the smallest device's budget decides one window (and
    /// pinned count) for every stage. Pins auto beside a given window needs only the budget (<see cref="Planner.PinFor"/>).
    /// A generation job's window auto plans for its decode passes and KV caches (<see cref="Planner.ChooseForGeneration"/>); a
    /// training job's for its training step on the smallest device (<see cref="TrainingPlanner.Choose"/>: a stage's step needs no
    /// more than the whole model's at the same window), without pinned layers.</summary>
    static PolicySpec PlanFor(JobRecord job, ModelCost cost, IReadOnlyList<DeviceSlot> slots, PolicySpec asked)
    {
        var smallest = slots.MinBy(s => s.Device.CapacityBytes)!.Device;
        if (job.Submit.Training is { } training)
        {
            if (asked.ResidentAuto || asked.ResidentLayers > 0)
                throw new ArgumentException("training plans its window without pinned layers; give the window (k and k') to pin layers beside it");
            try
            {
                return TrainingPlanner.Choose(job.Model, training.Optimizer.MicroBatches, (smallest.Cost ?? throw Unmeasured(smallest)).Validated()).Policy;
            }
            catch (FieldException e) when (e.Field == FieldException.DeviceMemory)
            {
                throw new ArgumentException($"training on device {smallest.Name}: its memory of {e.Problem}");
            }
        }
        if (!asked.Auto) return Planner.PinFor(cost, asked, smallest.CapacityBytes);
        if (job.Submit.Generation is { } g)
        {
            var shape = new GenerationShape(g.Prompts.Length, g.Prompts.Max(p => p.Length), g.MaxNewTokens,
                g.Kv == "host" ? Engine.Simulation.KvPlacement.Host : Engine.Simulation.KvPlacement.Device);
            return Planner.ChooseForGeneration(job.Model, (smallest.Cost ?? throw Unmeasured(smallest)).Validated(), shape,
                asked.ResidentAuto ? null : asked.ResidentLayers).Policy;
        }
        if ((asked.ResidentAuto || asked.ResidentLayers > 0) && smallest.Cost is { } d)
            return Planner.ChooseWithPins(cost, d.Validated(), smallest.CapacityBytes, asked.ResidentAuto ? null : asked.ResidentLayers);
        return Planner.Choose(cost, (smallest.Cost ?? throw Unmeasured(smallest)).Validated(), smallest.CapacityBytes).Policy;
    }

    static ArgumentException Unmeasured(DeviceInfo device) =>
        new($"device {device.Name} was registered without a measured compute rate and link, so window auto cannot plan for it");

    /// <summary>A stage's progress goes to the clients of every job of its attempt, with the model's layer count.</summary>
    void OnProgress(StageProgress p)
    {
        if (!_state.Current(p.Job, p.Attempt, out var attempt) || !attempt.IsStage(p.Stage, Sender)) return; // stale, or not from its stage
        if (!attempt.Started) Apply(new AttemptStarted(attempt.Number));
        var progress = new LayerProgress(p.Layer, _state.Jobs[attempt.Run].Model.Layers.Count, p.Phase, p.AtSeconds);
        foreach (var id in attempt.Jobs)
            foreach (var c in _state.Jobs[id].Clients) c.Tell(new JobProgress(id, progress));
    }

    void OnStageDone(StageDone d)
    {
        if (_state.Current(d.Job, d.Attempt, out _)) Apply(new StageCompleted(d.Attempt, d.Stage, new StageResult(d.Node, d.Report)));
    }

    void OnStageFailed(StageFailed f)
    {
        if (!_state.Current(f.Job, f.Attempt, out var attempt)) return;
        StopGeneration(attempt.Number);
        StopTraining(attempt.Number);
        attempt.Cancel(Self);
        Apply(new AttemptEnded(attempt.Number));
        foreach (var id in attempt.Jobs) Answer(_state.Jobs[id], new JobFailed(id, f.Reason));
    }

    void OnOutput(StageOutput o)
    {
        if (!_state.Current(o.Job, o.Attempt, out var attempt)) return;
        var wall = Stopwatch.GetElapsedTime(attempt.StartedAt);
        Apply(new AttemptEnded(attempt.Number));
        var jobs = attempt.Jobs.Select(id => _state.Jobs[id]).ToArray();
        if (o.Outputs.Length != jobs.Length)
        {
            foreach (var job in jobs) Answer(job, new JobFailed(job.Id, $"the last stage returned {o.Outputs.Length} outputs for {jobs.Length} jobs"));
            return;
        }
        var report = Combine(attempt, jobs[0].Model, wall);
        for (int i = 0; i < jobs.Length; i++)
            Answer(jobs[i], new JobSucceeded(jobs[i].Id, o.Outputs[i], report));
    }

    /// <summary>One report for the whole job: every stage's layers in order, peak of the fullest device, the plan.</summary>
    static PassReport Combine(Attempt attempt, LayeredModel model, TimeSpan wall)
    {
        var placement = attempt.Placement;
        var stages = placement.Select(p => (p, attempt.Stages.TryGetValue(p.Stage, out var s) ? s.Report : null)).ToArray();
        var timings = stages.SelectMany(s => s.Item2 is null ? [] : s.Item2.LayerTimings.Select(t => t with { Index = t.Index + s.p.FirstLayer }))
            .ToImmutableArray();
        var plan = stages.Select(s => new StagePlan(s.p.Stage, s.p.Slot.Node, s.p.Slot.Device.Name, s.p.FirstLayer, s.p.LayerCount,
            s.Item2?.Window ?? 0, s.Item2?.Swap ?? 0, s.p.Bytes, s.p.Flops, s.Item2?.PeakDeviceBytes ?? 0, s.Item2?.WallSeconds ?? 0)).ToImmutableArray();
        var first = stages[0].Item2;
        return new PassReport(
            placement.Length == 1 ? placement[0].Slot.Device.Name : string.Join(",", placement.Select(p => $"{p.Slot.Node}/{p.Slot.Device.Name}")),
            model.Layers.Count, first?.Window ?? 0, first?.Swap ?? 0, model.Bytes,
            placement.Min(p => p.Slot.Device.CapacityBytes),
            stages.Max(s => s.Item2?.PeakDeviceBytes ?? 0),
            stages.Sum(s => s.Item2?.BytesTransferred ?? 0),
            placement.Length == 1 && first is not null ? first.WallSeconds : wall.TotalSeconds,
            stages.Sum(s => s.Item2?.LowerBoundSeconds ?? 0),
            timings)
        {
            Stages = plan, MicroBatches = attempt.Jobs.Length,
            Pinned = [.. stages.Where(s => s.Item2 is not null).SelectMany(s => s.Item2!.Pinned.Select(i => i + s.p.FirstLayer))],
            PinnedReused = stages.Sum(s => s.Item2?.PinnedReused ?? 0),
            PeakHostWeightBytes = stages.Max(s => s.Item2?.PeakHostWeightBytes ?? 0),
        };
    }

    /// <summary>Opens a session on every stage of a generation attempt; the loop starts once all are ready (their layers hold
    /// their weights, so time to first token measures passes, not reading the checkpoint).</summary>
    void OpenGeneration(Attempt attempt, JobRecord job, GenerationParameters generation)
    {
        var (request, prompts, kv) = GenerationSession.FromSpec(generation);
        var run = _generations[attempt.Number] = new GenerationRun(attempt, GenerationSession.Check(job.Model, prompts, request), request, kv);
        var placement = attempt.Placement;
        for (int s = placement.Length - 1; s >= 0; s--)
        {
            var p = placement[s];
            var next = s + 1 < placement.Length ? placement[s + 1].Slot.Agent : null;
            p.Slot.Agent.Tell(new OpenGeneration(attempt.Run, attempt.Number, s, placement.Length, job.Submit.Model, p.FirstLayer, p.LayerCount,
                p.Slot.Device.Name, p.Policy, GenerationSession.Name(kv), run.Prompts.Batch, run.Capacity, next, Self));
        }
    }

    /// <summary>A stage is ready; once every stage is, the loop starts.</summary>
    void OnGenerationReady(GenerationReady r)
    {
        if (!_state.Current(r.Job, r.Attempt, out var attempt) || !attempt.IsStage(r.Stage, Sender)) return;
        if (!_generations.TryGetValue(attempt.Number, out var run) || run.Started) return;
        run.StageReady(r.Stage);
        if (!run.AllReady) return;
        var self = Self;
        var first = attempt.Placement[0].Slot.Agent;
        var sender = _sender;
        int number = attempt.Number;
        run.Start(step => sender.Tell(first, step, self), step => self.Tell(new TokensMade(number, step)))
            .ContinueWith(t => new GenerationLoopEnded(number, t.IsCompletedSuccessfully ? t.Result : null,
                t.IsCompletedSuccessfully ? null : t.Exception?.GetBaseException() ?? new OperationCanceledException("the generation was cancelled")),
                TaskScheduler.Default)
            .PipeTo(self);
    }

    void OnLogits(GenerationLogits l)
    {
        if (_state.Current(l.Job, l.Attempt, out var attempt) && attempt.IsStage(attempt.Placement.Length - 1, Sender)
            && _generations.TryGetValue(attempt.Number, out var run))
            run.Deliver(l.Step, l.Logits);
    }

    /// <summary>One event per token step to the clients of the job.</summary>
    void OnTokens(TokensMade m)
    {
        if (!_state.Attempts.TryGetValue(m.Attempt, out var attempt) || !_generations.ContainsKey(m.Attempt)) return;
        if (!attempt.Started) Apply(new AttemptStarted(attempt.Number));
        var id = attempt.Run;
        foreach (var c in _state.Jobs[id].Clients) c.Tell(new JobToken(id, m.Step.Step, [.. m.Step.Tokens]));
    }

    /// <summary>The loop ended: with its tokens, every stage is asked to end its session (the answer waits for them all);
    /// with an error, the job fails and every stage ends its session.</summary>
    void OnLoopEnded(GenerationLoopEnded e)
    {
        if (!_generations.TryGetValue(e.Attempt, out var run)) return; // stopped already (failed or given up)
        var attempt = run.Attempt;
        if (e.Outcome is { } outcome)
        {
            run.Outcome = outcome;
            foreach (var agent in attempt.Placement.Select(p => p.Slot.Agent).Distinct()) agent.Tell(new EndGeneration(attempt.Run, attempt.Number));
            return;
        }
        StopGeneration(attempt.Number);
        attempt.Cancel(Self);
        Apply(new AttemptEnded(attempt.Number));
        var reason = e.Error?.Message ?? "the generation stopped";
        Answer(_state.Jobs[attempt.Run], new JobFailed(attempt.Run, reason.Split('\n')[0]));
    }

    /// <summary>A stage ended its session; once all have, the job is answered with its tokens and report.</summary>
    void OnGenerationEnded(GenerationEnded e)
    {
        if (!_state.Current(e.Job, e.Attempt, out var attempt) || !attempt.IsStage(e.Stage, Sender)) return;
        if (!_generations.TryGetValue(attempt.Number, out var run) || run.Outcome is not { } outcome) return;
        run.StageEnded(e);
        if (!run.AllEnded) return;
        _generations.Remove(attempt.Number);
        run.Dispose();
        Apply(new AttemptEnded(attempt.Number));
        var job = _state.Jobs[attempt.Run];
        Answer(job, new JobGenerated(job.Id, GenerationRun.Tokens(outcome.Tokens), run.Report(job.Model, outcome)));
    }

    /// <summary>Starts the coordinator of a training attempt over its stages; placed stages that do not fit the job are refused.</summary>
    void OpenTraining(Attempt attempt, JobRecord job, TrainingParameters training)
    {
        var stages = attempt.Placement.Select(p => new TrainingStagePlacement(p.Slot.Agent, p.Slot.Node, p.Slot.Device.Name, p.FirstLayer, p.LayerCount,
                p.Policy))
            .ToImmutableArray();
        try
        {
            TrainingJobActor.Check(job.Model, stages, training);
        }
        catch (ArgumentException e)
        {
            Apply(new AttemptEnded(attempt.Number));
            Answer(job, new JobRefused(job.Id, e.Message));
            return;
        }
        var resume = _resumes.GetValueOrDefault(job.Id);
        if (resume is not null) _log.Info("job {0}: attempt {1} resumes from the checkpoint after step {2}", job.Id, attempt.Number, resume.Step);
        _trainings[attempt.Number] = Context.ActorOf(TrainingJobActor.Props(attempt.Run, attempt.Number, job.Submit.Model, stages, training, Self,
            _settings.AskTimeout * 8, resume, CheckpointsOf(job.Id)), $"training-{attempt.Number}");
    }

    /// <summary>A training job's own directory under superpipeline.training-checkpoints (its id made a file name, with a hash of it
    /// so that ids differing only in characters a file name cannot hold stay apart).</summary>
    string CheckpointsOf(JobId id)
    {
        string safe = string.Concat(id.Value.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_'));
        string hash = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(id.Value)))[..12];
        return Path.Combine(_settings.TrainingCheckpoints, $"{safe}-{hash}");
    }

    /// <summary>A training attempt saved a checkpoint: the job's next attempt resumes from it; the one it replaces is deleted.</summary>
    void OnCheckpointed(TrainingJobActor.Checkpointed m)
    {
        if (!_state.Current(m.Job, m.Attempt, out _)) return;
        if (_resumes.Remove(m.Job, out var old) && old.Directory != m.Resume.Directory) DeleteQuietly(old.Directory);
        _resumes[m.Job] = m.Resume;
    }

    void DeleteQuietly(string directory)
    {
        try
        {
            if (Directory.Exists(directory)) Directory.Delete(directory, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _log.Warning("could not delete the training checkpoint {0}: {1}", directory, e.Message);
        }
    }

    /// <summary>A training attempt's step goes to the job's clients.</summary>
    void OnTrainingStep(JobTrainingStep m)
    {
        if (!_state.Current(m.Id, AttemptOf(Sender), out var attempt)) return;
        if (!attempt.Started) Apply(new AttemptStarted(attempt.Number));
        foreach (var c in _state.Jobs[m.Id].Clients) _sender.Tell(c, m, Self);
    }

    /// <summary>A training attempt ended (trained, or failed): the job's one answer.</summary>
    void OnTrainingEnded(JobId id, IJobEvent answer)
    {
        int number = AttemptOf(Sender);
        if (!_trainings.Remove(number) || !_state.Current(id, number, out var attempt)) return;
        Apply(new AttemptEnded(attempt.Number));
        Answer(_state.Jobs[id], answer);
    }

    int AttemptOf(IActorRef child) => _trainings.FirstOrDefault(t => t.Value.Equals(child)).Key;

    /// <summary>Stops the coordinator of a training attempt, if it is one (its stop ends its stages).</summary>
    void StopTraining(int attempt)
    {
        if (_trainings.Remove(attempt, out var child)) Context.Stop(child);
    }

    /// <summary>Stops the loop of a generation attempt, if it is one (its stages end their sessions on <see cref="CancelAttempt"/>).</summary>
    void StopGeneration(int attempt)
    {
        if (_generations.Remove(attempt, out var run)) run.Dispose();
    }

    /// <summary>The job's one answer: recorded, sent to every client waiting for it; the oldest records beyond the limit are forgotten.</summary>
    void Answer(JobRecord job, IJobEvent answer)
    {
        Apply(new JobAnswered(job.Id, answer));
        if (job.Submit.Training is not null)
        {
            _resumes.Remove(job.Id);
            DeleteQuietly(CheckpointsOf(job.Id)); // the job's checkpoints end with it: its answer carries the weights
        }
        while (_state.Answered.Count > _settings.MaxJobRecords) Apply(new JobForgotten(_state.Answered[0]));
        foreach (var c in job.Clients) _sender.Tell(c, answer, Self);
        if (answer is not JobSucceeded) _log.Info("job {0}: {1}", job.Id, answer);
    }

    /// <summary>A worker is gone: its devices leave the inventory, and the attempts that used it are placed again
    /// (oldest first at the front of the queue).</summary>
    void Lost(Address address, string why)
    {
        if (!_workers.Remove(address, out var worker)) return;
        _log.Warning("worker {0} is {1}; re-placing its jobs", worker.Node, why);
        foreach (var attempt in _state.Attempts.Values.Reverse().Where(a => a.Uses(address)).ToArray())
        {
            StopGeneration(attempt.Number);
            StopTraining(attempt.Number);
            attempt.Cancel(Self, address);
            Apply(new AttemptAbandoned(attempt.Number));
        }
    }

    void SweepSilentWorkers()
    {
        var deadline = DateTime.UtcNow - 3 * _settings.Heartbeat;
        foreach (var w in _workers.Values.Where(w => w.LastSeen < deadline).ToArray())
            Lost(w.Agent.Path.Address, "silent");
    }
}
