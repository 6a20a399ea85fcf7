using System.Threading.Channels;
using Akka.Actor;
using Superpipeline.Messages;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Coordinator;

/// <summary>Submits one job and passes its events to a channel the caller reads: progress, then exactly one
/// result or failure. If no answer comes within the pass timeout, it reports the job as failed.</summary>
public sealed class ClientActor : ReceiveActor, IWithTimers
{
    private sealed record GaveUp
    {
        public static readonly GaveUp Instance = new();
        GaveUp() { }
    }

    readonly ChannelWriter<IJobEvent> _events;
    readonly SubmitJob _job;

    public ClientActor(IActorRef jobManager, SubmitJob job, ChannelWriter<IJobEvent> events, TimeSpan timeout)
    {
        _events = events;
        _job = job;
        jobManager.Tell(job);
        Receive<JobSucceeded>(Terminal);
        Receive<JobFailed>(Terminal);
        Receive<JobRefused>(Terminal);
        Receive<IJobEvent>(e => _events.TryWrite(e));
        Receive<GaveUp>(_ => Terminal(new JobFailed(_job.Id, $"no answer for job {_job.Id} within {timeout}")));
        Timers!.StartSingleTimer("give-up", GaveUp.Instance, timeout);
    }

    public ITimerScheduler Timers { get; set; } = null!;

    public static Props Props(IActorRef jobManager, SubmitJob job, ChannelWriter<IJobEvent> events, TimeSpan timeout) =>
        Akka.Actor.Props.Create(() => new ClientActor(jobManager, job, events, timeout));

    void Terminal(IJobEvent answer)
    {
        _events.TryWrite(answer);
        _events.TryComplete();
        Context.Stop(Self);
    }

    protected override void PostStop() => _events.TryComplete();
}
