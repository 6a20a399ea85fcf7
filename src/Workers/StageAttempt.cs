using System.Collections.Immutable;
using Akka.Actor;
using Superpipeline.Contracts;
using static Superpipeline.Messages.StageProtocol;

namespace Superpipeline.Workers;

/// <summary>One placement of a run, as the coordinator numbers it; a re-placed run is a new attempt.</summary>
public sealed record AttemptId(JobId Job, int Attempt)
{
    public override string ToString() => $"{Job} (attempt {Attempt})";
}

/// <summary>Where a stage of an attempt is on this node.</summary>
public enum StagePhase
{
    /// <summary>Its input arrived before its assignment.</summary>
    WaitingForAssignment,
    /// <summary>Assigned; the previous stage's output has not arrived yet.</summary>
    WaitingForInput,
    /// <summary>Ready to run, but its deployment does not fit the host weight budget until a running stage ends.</summary>
    WaitingForHostMemory,
    /// <summary>Its pass is with the device loader (queued or running) and holds its deployment.</summary>
    Running,
    /// <summary>Done, failed or dropped: it holds nothing.</summary>
    Finished,
}

/// <summary>A stage of an attempt: its phase and what it holds in that phase (the assignment, once known; the input
/// while it waits; the deployment while it runs).</summary>
public sealed record StageState(int Stage, StagePhase Phase, StageAssignment? Assignment, ImmutableArray<TensorPayload> Input,
    DeploymentKey? Deployment = null)
{
    public static StageState EarlyInput(int stage, ImmutableArray<TensorPayload> input) => new(stage, StagePhase.WaitingForAssignment, null, input);
    public static StageState Assigned(StageAssignment a) => new(a.Stage, StagePhase.WaitingForInput, a, default);
    public StageState Finished() => this with { Phase = StagePhase.Finished, Input = default, Deployment = null };
}

/// <summary>An attempt's stages on this node and the one stop that cancels all of its passes. Stopping it
/// (<see cref="Cancel"/>) cancels the passes it started, which then fail at their next step and free their device
/// bytes and inputs, and drops what its waiting stages hold; it stays as a tombstone (so a late input or assignment
/// does not bring it back) until the node agent trims it. The node agent owns it and calls it from its handlers.</summary>
public sealed class StageAttempt(AttemptId id, DateTimeOffset now) : IDisposable
{
    readonly CancellationTokenSource _stop = new();
    ImmutableDictionary<int, StageState> _stages = ImmutableDictionary<int, StageState>.Empty;

    public AttemptId Id { get; } = id;
    /// <summary>When the attempt last changed (a stage's phase, or its cancellation): its age for trimming.</summary>
    public DateTimeOffset Since { get; private set; } = now;
    public bool Cancelled { get; private set; }
    /// <summary>Passed to every pass of the attempt: cancelled when the attempt is stopped.</summary>
    public CancellationToken Stop => _stop.Token;

    /// <summary>The coordinator that placed the attempt (from its first assignment): a coordinator that restarted numbers
    /// attempts afresh, so the same id from another coordinator is another attempt.</summary>
    public IActorRef? Coordinator { get; private set; }

    /// <summary>Whether <paramref name="coordinator"/> placed this attempt; the first one to assign a stage did.</summary>
    public bool PlacedBy(IActorRef coordinator)
    {
        Coordinator ??= coordinator;
        return Coordinator.Equals(coordinator);
    }

    public StageState? this[int stage] => _stages.GetValueOrDefault(stage);
    public IEnumerable<StageState> Stages => _stages.Values;
    public bool AnyRunning => _stages.Values.Any(s => s.Phase == StagePhase.Running);
    /// <summary>Every stage this node knows of has finished: nothing more will run here.</summary>
    public bool AllFinished => _stages.Values.All(s => s.Phase == StagePhase.Finished);
    /// <summary>Only inputs wait here, for assignments that have not come.</summary>
    public bool OnlyEarlyInputs => _stages.Values.All(s => s.Phase is StagePhase.WaitingForAssignment or StagePhase.Finished);

    /// <summary>The one place a stage changes phase.</summary>
    public void Set(StageState stage, DateTimeOffset now)
    {
        _stages = _stages.SetItem(stage.Stage, stage);
        Since = now;
    }

    /// <summary>The coordinator gave the attempt up: stop its passes and drop its waiting stages (running stages finish
    /// when their passes answer, and release their deployments then).</summary>
    public void Cancel(DateTimeOffset now)
    {
        if (Cancelled) return;
        Cancelled = true;
        _stop.Cancel();
        foreach (var s in _stages.Values.Where(s => s.Phase is not (StagePhase.Running or StagePhase.Finished)).ToArray())
            _stages = _stages.SetItem(s.Stage, s.Finished());
        Since = now;
    }

    /// <summary>Frees the stop; only once no pass of the attempt is running.</summary>
    public void Dispose() => _stop.Dispose();
}
