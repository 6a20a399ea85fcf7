using System.Collections.Immutable;
using Akka.Actor;
using Superpipeline.Contracts;
using Superpipeline.Engine.Models;
using static Superpipeline.Messages.JobProtocol;
using static Superpipeline.Messages.StageProtocol;

namespace Superpipeline.Coordinator.Cluster;

/// <summary>Where a job is at the coordinator. Every change of phase is one <see cref="IJobManagerEvent"/>.</summary>
public enum JobPhase
{
    /// <summary>Accepted and waiting for devices.</summary>
    Queued,
    /// <summary>Its attempt's stages are assigned; none has reported progress yet.</summary>
    Placed,
    /// <summary>A stage of its attempt has reported progress.</summary>
    Running,
    /// <summary>Answered once (succeeded, failed, or refused when it could not be placed); the record answers a
    /// resubmitted id until it is forgotten.</summary>
    Answered,
}

/// <summary>One accepted job: what was submitted, who waits for it, its phase, the attempt it is placed in
/// (0 while queued) and, once answered, its answer.</summary>
public sealed record JobRecord(
    SubmitJob Submit, LayeredModel Model, ImmutableList<IActorRef> Clients, JobPhase Phase, int Attempt = 0, IJobEvent? Answer = null)
{
    public JobId Id => Submit.Id;
}

/// <summary>What a finished stage reported, and the node it ran on.</summary>
public sealed record StageResult(string Node, PassReport Report);

/// <summary>One attempt at a run: one placed pass through the stages, carrying one job or several coalesced as
/// micro-batches (in <see cref="Jobs"/> order). <see cref="Run"/> (its first job's id) and <see cref="Number"/>
/// (unique per job manager) name it on the wire; messages of any other attempt are stale and ignored.
/// <see cref="StartedAt"/> is a <see cref="System.Diagnostics.Stopwatch"/> timestamp.</summary>
public sealed record Attempt(int Number, ImmutableArray<JobId> Jobs, ImmutableArray<StagePlacement> Placement, long StartedAt)
{
    public JobId Run => Jobs[0];

    /// <summary>Reports of the stages that have finished, by stage index.</summary>
    public ImmutableDictionary<int, StageResult> Stages { get; init; } = ImmutableDictionary<int, StageResult>.Empty;

    /// <summary>True once a stage has reported progress.</summary>
    public bool Started { get; init; }

    /// <summary>Whether <paramref name="sender"/> is the agent that runs stage <paramref name="stage"/> of this attempt.</summary>
    public bool IsStage(int stage, IActorRef sender) => stage >= 0 && stage < Placement.Length && Placement[stage].Slot.Agent.Equals(sender);

    public bool Uses(Address worker) => Placement.Any(p => p.Slot.Agent.Path.Address.Equals(worker));

    /// <summary>Stopping an attempt is its cancellation: every agent with a stage of it (but the one on a worker that
    /// is <paramref name="gone"/>) drops its stages and stops its passes.</summary>
    public void Cancel(IActorRef manager, Address? gone = null)
    {
        foreach (var agent in Placement.Select(p => p.Slot.Agent).Distinct().Where(a => !a.Path.Address.Equals(gone)))
            agent.Tell(new CancelAttempt(Run, Number), manager);
    }
}

/// <summary>A change of the job manager's state. They are applied in one place (<see cref="JobManagerState.Apply"/>),
/// so that a journal can persist them and replay them to rebuild the state.</summary>
public interface IJobManagerEvent { }

/// <summary>A submission was admitted: a new record in phase <see cref="JobPhase.Queued"/>, at the back of the queue.</summary>
public sealed record JobQueued(SubmitJob Submit, IActorRef Client) : IJobManagerEvent;

/// <summary>Another client (or the same one resubmitting from elsewhere) waits for a job not yet answered.</summary>
public sealed record ClientJoined(JobId Job, IActorRef Client) : IJobManagerEvent;

/// <summary>Queued jobs were placed as one attempt: they leave the queue in phase <see cref="JobPhase.Placed"/>.</summary>
public sealed record AttemptPlaced(Attempt Attempt) : IJobManagerEvent;

/// <summary>A stage of the attempt reported progress: its jobs are <see cref="JobPhase.Running"/>.</summary>
public sealed record AttemptStarted(int Attempt) : IJobManagerEvent;

/// <summary>A stage of the attempt finished and reported.</summary>
public sealed record StageCompleted(int Attempt, int Stage, StageResult Result) : IJobManagerEvent;

/// <summary>The attempt is over (its output came or a stage failed); its jobs are answered next.</summary>
public sealed record AttemptEnded(int Attempt) : IJobManagerEvent;

/// <summary>The attempt was given up (a worker it used is gone): its jobs go back to the front of the queue, in order.</summary>
public sealed record AttemptAbandoned(int Attempt) : IJobManagerEvent;

/// <summary>The job got its one answer.</summary>
public sealed record JobAnswered(JobId Job, IJobEvent Answer) : IJobManagerEvent;

/// <summary>An answered record is forgotten (beyond the record limit, oldest first): its id may be used again.</summary>
public sealed record JobForgotten(JobId Job) : IJobManagerEvent;

/// <summary>Everything the job manager knows about jobs: one record per job, the queue in order, the attempts placed
/// and running (by number), answered ids oldest first. Changed only by <see cref="Apply"/>. The worker inventory is
/// not part of it: workers register again every heartbeat.</summary>
public sealed record JobManagerState(
    ImmutableDictionary<JobId, JobRecord> Jobs,
    ImmutableList<JobId> Queue,
    ImmutableSortedDictionary<int, Attempt> Attempts,
    ImmutableList<JobId> Answered,
    int LastAttempt)
{
    public static readonly JobManagerState Empty = new(ImmutableDictionary<JobId, JobRecord>.Empty, [], ImmutableSortedDictionary<int, Attempt>.Empty, [], 0);

    /// <summary>The attempt <paramref name="number"/> if it is still running and runs <paramref name="run"/>.</summary>
    public bool Current(JobId run, int number, out Attempt attempt) =>
        Attempts.TryGetValue(number, out attempt!) && attempt.Run == run;

    /// <summary>The one place where the state changes: the state after <paramref name="e"/>.</summary>
    public JobManagerState Apply(IJobManagerEvent e) => e switch
    {
        JobQueued q => this with
        {
            Jobs = Jobs.SetItem(q.Submit.Id, new JobRecord(q.Submit, ModelCatalog.Create(q.Submit.Model), [q.Client], JobPhase.Queued)),
            Queue = Queue.Add(q.Submit.Id),
        },
        ClientJoined c => Update(c.Job, j => j with { Clients = j.Clients.Add(c.Client) }),
        AttemptPlaced p => this with
        {
            Jobs = Jobs.SetItems(p.Attempt.Jobs.Select(id => KeyValuePair.Create(id, Jobs[id] with { Phase = JobPhase.Placed, Attempt = p.Attempt.Number }))),
            Queue = Queue.RemoveRange(p.Attempt.Jobs),
            Attempts = Attempts.SetItem(p.Attempt.Number, p.Attempt),
            LastAttempt = Math.Max(LastAttempt, p.Attempt.Number),
        },
        AttemptStarted s => Attempts.TryGetValue(s.Attempt, out var started)
            ? this with
            {
                Attempts = Attempts.SetItem(s.Attempt, started with { Started = true }),
                Jobs = Jobs.SetItems(started.Jobs.Select(id => KeyValuePair.Create(id, Jobs[id] with { Phase = JobPhase.Running }))),
            }
            : this,
        StageCompleted d => Attempts.TryGetValue(d.Attempt, out var done)
            ? this with { Attempts = Attempts.SetItem(d.Attempt, done with { Stages = done.Stages.SetItem(d.Stage, d.Result) }) }
            : this,
        AttemptEnded x => this with { Attempts = Attempts.Remove(x.Attempt) },
        AttemptAbandoned a => Attempts.TryGetValue(a.Attempt, out var abandoned)
            ? this with
            {
                Attempts = Attempts.Remove(a.Attempt),
                Queue = Queue.InsertRange(0, abandoned.Jobs),
                Jobs = Jobs.SetItems(abandoned.Jobs.Select(id => KeyValuePair.Create(id, Jobs[id] with { Phase = JobPhase.Queued, Attempt = 0 }))),
            }
            : this,
        JobAnswered a => Jobs.ContainsKey(a.Job)
            ? Update(a.Job, j => j with { Phase = JobPhase.Answered, Answer = a.Answer, Clients = [] }) with
            {
                Queue = Queue.Remove(a.Job),
                Answered = Answered.Add(a.Job),
            }
            : this,
        JobForgotten f => this with { Jobs = Jobs.Remove(f.Job), Answered = Answered.Remove(f.Job) },
        _ => throw new ArgumentException($"unknown job manager event {e.GetType().Name}", nameof(e)),
    };

    JobManagerState Update(JobId id, Func<JobRecord, JobRecord> change) =>
        Jobs.TryGetValue(id, out var job) ? this with { Jobs = Jobs.SetItem(id, change(job)) } : this;
}
