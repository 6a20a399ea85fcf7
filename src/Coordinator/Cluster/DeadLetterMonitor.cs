using Akka.Actor;
using Akka.Event;

namespace Superpipeline.Coordinator.Cluster;

/// <summary>Dead letters would mean a message was lost: the safety-net mailbox overflowed or an actor was gone.
/// They are logged as errors, never silently dropped. Started by <see cref="DeadLetters.Monitor"/>.</summary>
public sealed class DeadLetterMonitor : ReceiveActor
{
    public DeadLetterMonitor()
    {
        var log = Context.GetLogger();
        // Only our own messages: Akka's internal gossip and heartbeats go to dead letters normally at shutdown.
        Receive<DeadLetter>(d =>
        {
            if (d.Message.GetType().Namespace?.StartsWith("Superpipeline", StringComparison.Ordinal) == true)
                log.Error("undelivered {0} from {1} to {2}", d.Message.GetType().Name, d.Sender, d.Recipient);
        });
    }

    public static Props Props() => Akka.Actor.Props.Create(() => new DeadLetterMonitor());
}

/// <summary>Watching a host's dead letters.</summary>
public static class DeadLetters
{
    /// <summary>Starts a <see cref="DeadLetterMonitor"/> (a top-level actor, `dead-letter-monitor`) and subscribes it
    /// to the system's dead letters.</summary>
    public static void Monitor(ActorSystem system) =>
        system.EventStream.Subscribe(system.ActorOf(DeadLetterMonitor.Props(), "dead-letter-monitor"), typeof(DeadLetter));
}
