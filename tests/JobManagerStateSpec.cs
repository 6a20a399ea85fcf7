using System.Collections.Immutable;
using Akka.Actor;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Messages;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Tests;

/// <summary>The job manager's state as events applied in one place: each phase change is one event, and replaying the
/// events rebuilds the same state (what a journal will rely on). No actors: the state is a value.</summary>
public sealed class JobManagerStateSpec
{
    static readonly ModelSpec Model = EngineHarness.Tiny();
    static readonly PolicySpec Policy = new(1, 1);
    static readonly IActorRef Client = ActorRefs.Nobody;

    static SubmitJob Job(string id) => new(new JobId(id), Model, Policy);

    static Attempt AttemptOf(int number, params string[] jobs)
    {
        var slot = new DeviceSlot(ActorRefs.Nobody, "node", new DeviceInfo("sim:0", DeviceKind.Sim, 64L << 20));
        return new Attempt(number, [.. jobs.Select(j => new JobId(j))], [new StagePlacement(0, slot, 0, 5, Policy, 1000, 1e6)], 0);
    }

    static JobManagerState Replay(IEnumerable<IJobManagerEvent> events) => events.Aggregate(JobManagerState.Empty, (s, e) => s.Apply(e));

    static JobPhase Phase(JobManagerState s, string id) => s.Jobs[new JobId(id)].Phase;

    [Fact]
    public void A_job_goes_queued_placed_running_answered_one_event_each()
    {
        var s = JobManagerState.Empty.Apply(new JobQueued(Job("a"), Client));
        Assert.Equal(JobPhase.Queued, Phase(s, "a"));
        Assert.Equal([new JobId("a")], s.Queue);

        s = s.Apply(new AttemptPlaced(AttemptOf(1, "a")));
        Assert.Equal(JobPhase.Placed, Phase(s, "a"));
        Assert.Equal(1, s.Jobs[new JobId("a")].Attempt);
        Assert.Empty(s.Queue);
        Assert.Equal(1, s.LastAttempt);

        s = s.Apply(new AttemptStarted(1));
        Assert.Equal(JobPhase.Running, Phase(s, "a"));
        Assert.True(s.Attempts[1].Started);

        var report = new PassReport("sim:0", 5, 1, 1, 1000, 64L << 20, 500, 1000, 0.5, 0.1, []);
        s = s.Apply(new StageCompleted(1, 0, new StageResult("node", report)));
        Assert.Equal(report, s.Attempts[1].Stages[0].Report);

        var answer = new JobFailed(new JobId("a"), "no");
        s = s.Apply(new AttemptEnded(1)).Apply(new JobAnswered(new JobId("a"), answer));
        Assert.Empty(s.Attempts);
        Assert.Equal(JobPhase.Answered, Phase(s, "a"));
        Assert.Equal(answer, s.Jobs[new JobId("a")].Answer);
        Assert.Empty(s.Jobs[new JobId("a")].Clients);
        Assert.Equal([new JobId("a")], s.Answered);

        s = s.Apply(new JobForgotten(new JobId("a")));
        Assert.Empty(s.Jobs);
        Assert.Empty(s.Answered);
    }

    [Fact]
    public void An_abandoned_attempt_puts_its_jobs_back_at_the_front_of_the_queue_in_their_order()
    {
        var s = Replay([
            new JobQueued(Job("a"), Client), new JobQueued(Job("b"), Client), new JobQueued(Job("c"), Client), new JobQueued(Job("d"), Client),
            new AttemptPlaced(AttemptOf(1, "a", "c")),
        ]);
        Assert.Equal(["b", "d"], s.Queue.Select(id => id.Value));
        s = s.Apply(new AttemptStarted(1)).Apply(new AttemptAbandoned(1));
        Assert.Equal(["a", "c", "b", "d"], s.Queue.Select(id => id.Value));
        Assert.All(s.Jobs.Values, j => Assert.Equal(JobPhase.Queued, j.Phase));
        Assert.All(s.Jobs.Values, j => Assert.Equal(0, j.Attempt));
        Assert.Empty(s.Attempts);
        Assert.Equal(1, s.LastAttempt); // numbers are never reused: a stale attempt's messages stay stale
    }

    [Fact]
    public void A_queued_job_answered_without_running_leaves_the_queue()
    {
        var s = Replay([
            new JobQueued(Job("a"), Client), new JobQueued(Job("b"), Client), new JobAnswered(new JobId("a"), new JobRefused(new JobId("a"), "x")),
        ]);
        Assert.Equal(["b"], s.Queue.Select(id => id.Value));
        Assert.Equal(JobPhase.Answered, Phase(s, "a"));
    }

    [Fact]
    public void Events_of_an_attempt_that_is_not_running_change_nothing()
    {
        var s = Replay([new JobQueued(Job("a"), Client), new AttemptPlaced(AttemptOf(1, "a"))]);
        Assert.Same(s, s.Apply(new AttemptStarted(2)));
        Assert.Same(s, s.Apply(new AttemptAbandoned(2)));
        Assert.Same(s, s.Apply(new StageCompleted(2, 0, new StageResult("n", new PassReport("d", 1, 1, 1, 1, 1, 1, 1, 1, 1, [])))));
        Assert.True(s.Current(new JobId("a"), 1, out _));
        Assert.False(s.Current(new JobId("a"), 2, out _));
        Assert.False(s.Current(new JobId("b"), 1, out _));
    }
}
