using Akka.Actor;
using Akka.Cluster;
using Superpipeline.Coordinator;
using Superpipeline.Messages;
using Xunit;
using Xunit.Abstractions;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Tests;

/// <summary>In-process clusters on 127.0.0.1 (port 0): a coordinator and workers as separate ActorSystems, every
/// message serialized as it would be on the wire.</summary>
public sealed class ClusterSpec(ITestOutputHelper output) : IAsyncLifetime
{
    public const string TestConfig = """
        akka.actor.serialize-messages = on
        akka.cluster.split-brain-resolver.stable-after = 2s
        akka.cluster.failure-detector.acceptable-heartbeat-pause = 2s
        akka.cluster.failure-detector.heartbeat-interval = 500ms
        superpipeline.heartbeat = 500ms
        superpipeline.resubmit-after = 3s
        """;

    readonly List<ClusterHost> _hosts = [];
    readonly List<SubmitClient> _clients = [];

    public static ModelSpec Model => new("demo", Blocks: 6, Hidden: 128, Heads: 4, Vocab: 512, Sequence: 64, Batch: 4, Seed: 11);

    ClusterHost Coordinator()
    {
        var h = ClusterHost.Start(new HostOptions(["coordinator"], "127.0.0.1", 0, [], [], TestConfig));
        _hosts.Add(h);
        return h;
    }

    ClusterHost Worker(ClusterHost seed, string devices = "sim:2x64MiB")
    {
        var h = ClusterHost.Start(new HostOptions(["worker"], "127.0.0.1", 0, [$"127.0.0.1:{seed.Address.Port}"], ClusterHost.ParseDevices(devices), TestConfig));
        _hosts.Add(h);
        return h;
    }

    SubmitClient Client(ClusterHost contact)
    {
        var c = SubmitClient.Start([$"127.0.0.1:{contact.Address.Port}"], extraConfig: TestConfig);
        _clients.Add(c);
        return c;
    }

    static async Task WaitForMembers(ClusterHost host, int count)
    {
        var cluster = Cluster.Get(host.System);
        for (int i = 0; i < 200 && cluster.State.Members.Count(m => m.Status == MemberStatus.Up) < count; i++) await Task.Delay(100);
        Assert.Equal(count, cluster.State.Members.Count(m => m.Status == MemberStatus.Up));
    }

    [Fact]
    public async Task A_job_split_over_two_nodes_of_two_devices_is_bitwise_identical_to_one_device()
    {
        var coordinator = Coordinator();
        Worker(coordinator);
        Worker(coordinator);
        await WaitForMembers(coordinator, 3);

        await using var single = EmbeddedHost.Start(new DeviceSpec("sim", 256L << 20, null));
        var reference = Assert.IsType<JobSucceeded>(await single.RunAsync(new SubmitJob(JobId.New(), Model, new PolicySpec(2, 1))));

        var client = Client(coordinator);
        var answer = await client.RunAsync(new SubmitJob(new JobId("split"), Model, new PolicySpec(2, 1)));
        var ok = Assert.IsType<JobSucceeded>(answer);
        Assert.Equal(reference.Output, ok.Output);
        Assert.Equal(4, ok.Report.Stages.Length); // 8 layers over 4 devices
        Assert.Equal(2, ok.Report.Stages.Select(s => s.Node).Distinct().Count());
        Assert.Equal(Enumerable.Range(0, 8), ok.Report.Stages.SelectMany(s => Enumerable.Range(s.FirstLayer, s.LayerCount)));
        output.WriteLine(string.Join("\n", ok.Report.Stages));
        // The logits (4×64×512 floats, 512 KiB) are larger than one 128 kB frame: they arrived in chunks.
        Assert.True(ok.Output.Bytes.Length > 128_000);
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var c in _clients) await c.DisposeAsync();
        foreach (var h in Enumerable.Reverse(_hosts)) await h.DisposeAsync();
    }
}
