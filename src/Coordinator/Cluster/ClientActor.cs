using System.Threading.Channels;
using Akka.Actor;
using Superpipeline.Contracts;
using Superpipeline.Messages;
using Superpipeline.Messages.Serialization;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Coordinator.Cluster;

/// <summary>Submits one job and passes its events to a channel the caller reads: progress, then exactly one
/// result, failure or refusal. Until an answer comes it resubmits the job under the same id (ids are idempotent,
/// so this never runs it twice; it covers a coordinator that moved). If no answer comes within the pass timeout,
/// it reports the job as failed. Large answers arrive chunked and are put back together here.</summary>
public sealed class ClientActor : ReceiveActor, IWithTimers
{
    private sealed record Tick(bool GiveUp) : INoSerializationVerificationNeeded;

    readonly ChannelWriter<IJobEvent> _events;
    readonly SubmitJob _job;
    readonly Action<SubmitJob, IActorRef> _send;
    bool _done;

    /// <param name="send">How the job reaches the job manager: a plain Tell in one process, a ClusterClient.Send from outside the cluster.</param>
    public ClientActor(Action<SubmitJob, IActorRef> send, SubmitJob job, ChannelWriter<IJobEvent> events, TimeSpan timeout, TimeSpan resubmitAfter)
    {
        _events = events;
        _job = job;
        _send = send;
        Receive<MessageChunk>(ChunkAssembler.Receiver(Context));
        Receive<JobSucceeded>(Terminal);
        Receive<JobGenerated>(Terminal);
        Receive<JobTrained>(Terminal);
        Receive<JobFailed>(Terminal);
        Receive<JobRefused>(Terminal);
        Receive<IJobEvent>(e => { if (!_done) _events.TryWrite(e); });
        Receive<Tick>(t =>
        {
            if (t.GiveUp) Terminal(new JobFailed(_job.Id, $"no answer for job {_job.Id} within {timeout}"));
            else _send(_job, Self);
        });
        _send(job, Self);
        Timers!.StartSingleTimer("give-up", new Tick(true), timeout);
        Timers.StartPeriodicTimer("resubmit", new Tick(false), resubmitAfter);
    }

    public ITimerScheduler Timers { get; set; } = null!;

    public static Props Props(IActorRef jobManager, SubmitJob job, ChannelWriter<IJobEvent> events, TimeSpan timeout, TimeSpan resubmitAfter) =>
        Akka.Actor.Props.Create(() => new ClientActor((j, self) => jobManager.Tell(j, self), job, events, timeout, resubmitAfter));

    /// <summary>Through a ClusterClient to the job manager singleton's proxy on the coordinators.</summary>
    public static Props ViaClusterClient(IActorRef clusterClient, SubmitJob job, ChannelWriter<IJobEvent> events, TimeSpan timeout, TimeSpan resubmitAfter) =>
        Akka.Actor.Props.Create(() => new ClientActor(
            (j, self) => clusterClient.Tell(new Akka.Cluster.Tools.Client.ClusterClient.Send(ClusterHost.JobManagerProxyPath, j, localAffinity: false), self),
            job, events, timeout, resubmitAfter));

    void Terminal(IJobEvent answer)
    {
        if (_done) return;
        _done = true;
        _events.TryWrite(answer);
        _events.TryComplete();
        Context.Stop(Self);
    }

    protected override void PostStop() => _events.TryComplete();
}
