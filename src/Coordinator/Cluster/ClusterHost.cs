using Akka.Actor;
using Akka.Cluster;
using Akka.Cluster.Tools.Client;
using Akka.Cluster.Tools.Singleton;
using Akka.Configuration;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Policy;
using Superpipeline.Contracts;
using Superpipeline.Messages;
using Superpipeline.Workers;

namespace Superpipeline.Coordinator.Cluster;

/// <summary>What a host process is: its roles, where it listens, whom it joins, which devices it brings.</summary>
public sealed record HostOptions(
    IReadOnlyList<string> Roles, string Hostname, int Port, IReadOnlyList<string> Seeds, IReadOnlyList<DeviceSpec> Devices, string? ExtraConfig = null);

/// <summary>A cluster member: coordinator (the job manager as a cluster singleton, offered to clients through the
/// ClusterClient receptionist), worker (a node agent with its devices), or both.</summary>
public sealed class ClusterHost : IAsyncDisposable
{
    public const string SystemName = "superpipeline";
    public const string JobManagerProxyPath = "/user/job-manager-proxy";

    ClusterHost(ActorSystem system, IReadOnlyList<Accelerator> devices)
    {
        System = system;
        Devices = devices;
    }

    public ActorSystem System { get; }
    public IReadOnlyList<Accelerator> Devices { get; }
    public Address Address => Akka.Cluster.Cluster.Get(System).SelfAddress;

    public static ClusterHost Start(HostOptions o)
    {
        foreach (var role in o.Roles)
            if (role is not ("coordinator" or "worker")) throw new ArgumentException($"a host's roles are coordinator and worker; got '{role}'");
        bool coordinator = o.Roles.Contains("coordinator"), worker = o.Roles.Contains("worker");
        if (worker && o.Devices.Count == 0) throw new FieldException(FieldException.Devices, "are needed by a worker (e.g. sim:2x4GiB)");
        var configured = (string.IsNullOrWhiteSpace(o.ExtraConfig) ? Config.Empty : ConfigurationFactory.ParseString(o.ExtraConfig))
            .WithFallback(WorkerConfig.Load(o.Roles.Count == 1 ? o.Roles[0] : null));
        var seeds = string.Join(", ", o.Seeds.Select(s => $"\"{Scheme(configured)}://{SystemName}@{s}\""));
        var overrides = $$"""
            akka.actor.provider = cluster
            akka.remote.dot-netty.tcp.hostname = "{{o.Hostname}}"
            akka.remote.dot-netty.tcp.port = {{o.Port}}
            akka.cluster.roles = [{{string.Join(", ", o.Roles.Select(r => $"\"{r}\""))}}]
            akka.cluster.seed-nodes = [{{seeds}}]
            """;
        var config = ConfigurationFactory.ParseString(overrides)
            .WithFallback(configured)
            // Every member must know the cluster tools' serializers (pub-sub, singleton, client), whatever its role.
            .WithFallback(Akka.Cluster.Tools.PublishSubscribe.DistributedPubSub.DefaultConfig())
            .WithFallback(ClusterSingleton.DefaultConfig())
            .WithFallback(ClusterClientReceptionist.DefaultConfig());
        var settings = SuperpipelineSettings.Create(config);
        var devices = o.Devices.Select((spec, i) => DeviceFactory.Create(spec, i)).ToArray();
        var system = ActorSystem.Create(SystemName, config);
        if (o.Seeds.Count == 0) Akka.Cluster.Cluster.Get(system).Join(Akka.Cluster.Cluster.Get(system).SelfAddress); // the first node founds the cluster
        DeadLetters.Monitor(system);

        if (coordinator)
            system.ActorOf(ClusterSingletonManager.Props(JobManagerActor.Props(settings), PoisonPill.Instance,
                ClusterSingletonManagerSettings.Create(system).WithRole("coordinator")), "job-manager");
        var proxy = system.ActorOf(ClusterSingletonProxy.Props("/user/job-manager",
            ClusterSingletonProxySettings.Create(system).WithRole("coordinator")), "job-manager-proxy");
        if (coordinator) ClusterClientReceptionist.Get(system).RegisterService(proxy);
        if (worker)
        {
            var node = $"{o.Hostname}:{Akka.Cluster.Cluster.Get(system).SelfAddress.Port}";
            system.ActorOf(NodeAgentActor.Props(node, devices, proxy, settings), "node-agent");
        }
        return new ClusterHost(system, devices);
    }

    /// <summary>The address scheme of the DotNetty transport: with TLS on (enable-ssl) Akka.Remote listens as
    /// akka.ssl.tcp, and seed nodes and contact points must be written with that scheme to be reached at all.</summary>
    public static string Scheme(Config config) =>
        config.GetBoolean("akka.remote.dot-netty.tcp.enable-ssl", false) ? "akka.ssl.tcp" : "akka.tcp";

    public async ValueTask DisposeAsync()
    {
        if (!System.WhenTerminated.IsCompleted) // a system already terminated (a crash in a test) has nothing to leave
            await CoordinatedShutdown.Get(System).Run(CoordinatedShutdown.ClrExitReason.Instance);
        foreach (var d in Devices) d.Dispose();
    }
}
