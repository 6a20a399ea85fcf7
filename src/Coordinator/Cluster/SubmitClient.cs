using System.Collections.Immutable;
using System.Threading.Channels;
using Akka.Actor;
using Akka.Cluster.Tools.Client;
using Akka.Configuration;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Messages;
using Superpipeline.Workers;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Coordinator.Cluster;

/// <summary>A process outside the cluster that submits jobs through ClusterClient (the coordinators' receptionists
/// are its contact points). Used by <c>superpipeline submit</c>.</summary>
public sealed class SubmitClient : IAsyncDisposable
{
    readonly ActorSystem _system;
    readonly IActorRef _clusterClient;
    readonly SuperpipelineSettings _settings;
    readonly IReadOnlyList<ActorPath> _receptionists;

    SubmitClient(ActorSystem system, IActorRef clusterClient, SuperpipelineSettings settings, IReadOnlyList<ActorPath> receptionists)
    {
        _system = system;
        _clusterClient = clusterClient;
        _settings = settings;
        _receptionists = receptionists;
    }

    /// <summary>Akka's own logging off: a client's terminal shows the job, not remoting's retries (the CLI's --verbose keeps them).</summary>
    const string QuietLogging = """
        akka.loglevel = OFF
        akka.stdout-loglevel = OFF
        akka.log-dead-letters = off
        akka.log-dead-letters-during-shutdown = off
        akka.remote.log-remote-lifecycle-events = off
        """;

    /// <param name="contacts">host:port of coordinators.</param>
    /// <param name="hostname">The interface this client listens on for answers.</param>
    /// <param name="extraConfig">HOCON that overrides the defaults (TLS, timings).</param>
    /// <param name="verbose">False silences Akka's own log lines unless <paramref name="extraConfig"/> sets a log level.</param>
    public static SubmitClient Start(IReadOnlyList<string> contacts, string hostname = "127.0.0.1", string? extraConfig = null, bool verbose = true)
    {
        if (contacts.Count == 0) throw new ArgumentException("--contact is required (host:port of a coordinator)");
        var config = ConfigurationFactory.ParseString($"""
                akka.actor.provider = remote
                akka.remote.dot-netty.tcp.hostname = "{hostname}"
                akka.remote.dot-netty.tcp.port = 0
                """)
            .WithFallback(string.IsNullOrWhiteSpace(extraConfig) ? Config.Empty : ConfigurationFactory.ParseString(extraConfig))
            .WithFallback(verbose ? Config.Empty : ConfigurationFactory.ParseString(QuietLogging))
            .WithFallback(WorkerConfig.Load())
            .WithFallback(ClusterClientReceptionist.DefaultConfig());
        var settings = SuperpipelineSettings.Create(config);
        var system = ActorSystem.Create("superpipeline-client", config);
        var receptionists = contacts.Select(c => ActorPath.Parse($"{ClusterHost.Scheme(config)}://{ClusterHost.SystemName}@{c}/system/receptionist")).ToArray();
        var client = system.ActorOf(ClusterClient.Props(ClusterClientSettings.Create(system).WithInitialContacts(receptionists.ToImmutableHashSet())),
            "cluster-client");
        return new SubmitClient(system, client, settings, receptionists);
    }

    /// <summary>Waits until the receptionist of some contact answers an <see cref="Identify"/>, asking again every second or
    /// so (an association that is still being made drops what is sent over it). False when none answered within
    /// <paramref name="timeout"/>.</summary>
    public async Task<bool> ConnectAsync(TimeSpan timeout, CancellationToken cancel = default)
    {
        var deadline = DateTime.UtcNow + timeout;
        for (var left = timeout; left > TimeSpan.Zero; left = deadline - DateTime.UtcNow)
        {
            var attempt = left < AskEvery ? left : AskEvery;
            var answers = await Task.WhenAll(_receptionists.Select(p => IdentifyAsync(p, attempt, cancel)));
            if (answers.Any(a => a)) return true;
        }
        return false;
    }

    static readonly TimeSpan AskEvery = TimeSpan.FromSeconds(1);

    async Task<bool> IdentifyAsync(ActorPath receptionist, TimeSpan timeout, CancellationToken cancel)
    {
        var started = DateTime.UtcNow;
        try
        {
            var identity = await _system.ActorSelection(receptionist).Ask<ActorIdentity>(new Identify(receptionist.ToString()), timeout, cancel);
            if (identity.Subject is not null) return true;
        }
        catch (AskTimeoutException)
        {
            return false;
        }
        // No such actor there (ActorIdentity without a subject): wait out the attempt rather than asking in a tight loop.
        var rest = timeout - (DateTime.UtcNow - started);
        if (rest > TimeSpan.Zero) await Task.Delay(rest, cancel);
        return false;
    }

    /// <summary>The client's actor system and its ClusterClient, for callers that talk to the cluster themselves.</summary>
    public ActorSystem System => _system;
    public IActorRef ClusterClientRef => _clusterClient;

    public ChannelReader<IJobEvent> Submit(SubmitJob job)
    {
        var channel = Channel.CreateUnbounded<IJobEvent>(new UnboundedChannelOptions { SingleReader = true });
        var props = ClientActor.ViaClusterClient(_clusterClient, job, channel.Writer, _settings.PassTimeout, _settings.ResubmitAfter);
        _system.ActorOf(props, $"job-{Guid.NewGuid():N}");
        return channel.Reader;
    }

    /// <summary>Submits and waits for the one answer, passing progress to <paramref name="onProgress"/> (a generation job's tokens to
    /// <paramref name="onToken"/>).</summary>
    public Task<IJobEvent> RunAsync(SubmitJob job, Action<LayerProgress>? onProgress = null, Action<JobToken>? onToken = null) =>
        JobEvents.LastAsync(Submit(job), job.Id, onProgress, onToken);

    public async ValueTask DisposeAsync() => await _system.Terminate();
}
