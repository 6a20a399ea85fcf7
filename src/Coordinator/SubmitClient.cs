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

namespace Superpipeline.Coordinator;

/// <summary>A process outside the cluster that submits jobs through ClusterClient (the coordinators' receptionists
/// are its contact points). Used by <c>superpipeline submit</c>.</summary>
public sealed class SubmitClient : IAsyncDisposable
{
    readonly ActorSystem _system;
    readonly IActorRef _clusterClient;
    readonly SuperpipelineSettings _settings;

    SubmitClient(ActorSystem system, IActorRef clusterClient, SuperpipelineSettings settings)
    {
        _system = system;
        _clusterClient = clusterClient;
        _settings = settings;
    }

    public static SubmitClient Start(IReadOnlyList<string> contacts, string hostname = "127.0.0.1", string? extraConfig = null)
    {
        if (contacts.Count == 0) throw new ArgumentException("--contact is required (host:port of a coordinator)");
        var config = ConfigurationFactory.ParseString($"""
                akka.actor.provider = remote
                akka.remote.dot-netty.tcp.hostname = "{hostname}"
                akka.remote.dot-netty.tcp.port = 0
                """)
            .WithFallback(string.IsNullOrWhiteSpace(extraConfig) ? Config.Empty : ConfigurationFactory.ParseString(extraConfig))
            .WithFallback(WorkerConfig.Load())
            .WithFallback(ClusterClientReceptionist.DefaultConfig());
        var settings = SuperpipelineSettings.Create(config);
        var system = ActorSystem.Create("superpipeline-client", config);
        var initial = contacts.Select(c => ActorPath.Parse($"{ClusterHost.Scheme(config)}://{ClusterHost.SystemName}@{c}/system/receptionist")).ToImmutableHashSet();
        var client = system.ActorOf(ClusterClient.Props(ClusterClientSettings.Create(system).WithInitialContacts(initial)), "cluster-client");
        return new SubmitClient(system, client, settings);
    }

    /// <summary>The client's actor system and its ClusterClient, for callers that talk to the cluster themselves.</summary>
    public ActorSystem System => _system;
    public IActorRef ClusterClientRef => _clusterClient;

    public ChannelReader<IJobEvent> Submit(SubmitJob job)
    {
        var channel = Channel.CreateUnbounded<IJobEvent>(new UnboundedChannelOptions { SingleReader = true });
        _system.ActorOf(ClientActor.ViaClusterClient(_clusterClient, job, channel.Writer, _settings.PassTimeout, _settings.ResubmitAfter), $"job-{Guid.NewGuid():N}");
        return channel.Reader;
    }

    /// <summary>Submits and waits for the one answer, passing progress to <paramref name="onProgress"/>.</summary>
    public Task<IJobEvent> RunAsync(SubmitJob job, Action<LayerProgress>? onProgress = null) => JobEvents.LastAsync(Submit(job), job.Id, onProgress);

    public async ValueTask DisposeAsync() => await _system.Terminate();
}
