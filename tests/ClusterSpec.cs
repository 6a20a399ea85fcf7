using System.Collections.Concurrent;
using Akka.Actor;
using Akka.Cluster;
using Superpipeline.Coordinator;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Engine.Devices;
using Superpipeline.Messages;
using Xunit.Abstractions;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Tests;

/// <summary>In-process clusters on 127.0.0.1 (port 0): a coordinator and workers as separate ActorSystems, every
/// message serialized as it would be on the wire. Every wait is bounded (a client gives up after the short pass
/// timeout of the test config, a test after <see cref="Wait"/>), so a regression fails instead of hanging.</summary>
public sealed class ClusterSpec(ITestOutputHelper output) : IAsyncLifetime
{
    /// <summary>Quick failure detection, yet tolerant of a loaded machine (two cores shared by builds and tests): a member
    /// or worker is given up only after seconds of silence, so starved heartbeats do not split the cluster.</summary>
    public const string TestConfig = """
        akka.actor.serialize-messages = on
        akka.cluster.split-brain-resolver.stable-after = 2s
        akka.cluster.failure-detector.acceptable-heartbeat-pause = 5s
        akka.cluster.failure-detector.heartbeat-interval = 500ms
        superpipeline.heartbeat = 1s
        superpipeline.resubmit-after = 3s
        superpipeline.pass-timeout = 90s
        """;

    /// <summary>The longest a test waits for one answer or one condition.</summary>
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(120);

    /// <summary>A host of one process with the test's short pass timeout, for reference outputs.</summary>
    static EmbeddedHost Single(long capacity) => EmbeddedHost.Start(new DeviceSpec(DeviceKind.Sim, capacity, null), "superpipeline.pass-timeout = 90s");

    readonly List<ClusterHost> _hosts = [];
    readonly List<SubmitClient> _clients = [];

    public static ModelSpec Model => new("demo", Blocks: 6, Hidden: 128, Heads: 4, Vocab: 512, Sequence: 64, Batch: 4, Seed: 11);

    /// <summary>For a member the test crashes: terminating its actor system then stops it without leaving the cluster
    /// (no coordinated shutdown, so no graceful hand-over), and the others must notice it is unreachable.</summary>
    const string Crashable = "\nakka.coordinated-shutdown.run-by-actor-system-terminate = off";

    /// <summary>For the singleton's failover: serialize-messages verifies every local message too, and the cluster's own local
    /// events are not all serializable (the split-brain resolver's ReachabilityChanged fails it and is dropped, logged as an
    /// error); a dropped internal message may leave the hand-over stuck, this test's rare failure. The other tests verify ours.</summary>
    const string NoLocalVerification = "\nakka.actor.serialize-messages = off";

    ClusterHost Coordinator(bool crashable = false, string extra = "")
    {
        var h = ClusterHost.Start(new HostOptions(["coordinator"], "127.0.0.1", 0, [], [], TestConfig + (crashable ? Crashable : "") + extra));
        _hosts.Add(h);
        return h;
    }

    ClusterHost Worker(ClusterHost seed, string devices = "sim:2x64MiB", bool crashable = false, string extra = "")
    {
        var h = StartWorker(seed, devices, crashable, extra);
        _hosts.Add(h);
        return h;
    }

    /// <summary>A worker with <paramref name="devices"/> joining through <paramref name="seed"/>, under the tests' configuration (the
    /// cluster specs share it; each disposes the hosts it starts).</summary>
    internal static ClusterHost StartWorker(ClusterHost seed, string devices, bool crashable = false, string extra = "") =>
        ClusterHost.Start(new HostOptions(["worker"], "127.0.0.1", 0, [$"127.0.0.1:{seed.Address.Port}"], DeviceSpecs.ParseList(devices),
            TestConfig + (crashable ? Crashable : "") + extra));

    /// <summary>A client whose contact is <paramref name="contact"/>, under the tests' configuration.</summary>
    internal static SubmitClient StartClient(ClusterHost contact) =>
        SubmitClient.Start([$"127.0.0.1:{contact.Address.Port}"], extraConfig: TestConfig);

    SubmitClient Client(ClusterHost contact)
    {
        var c = StartClient(contact);
        _clients.Add(c);
        return c;
    }

    static Task WaitForMembers(ClusterHost host, int count)
    {
        var cluster = Cluster.Get(host.System);
        return Until(() => cluster.State.Members.Count(m => m.Status == MemberStatus.Up) == count, TimeSpan.FromSeconds(30), $"{count} members up");
    }

    /// <summary>Polls <paramref name="condition"/> until it holds; fails the test if it does not within <paramref name="timeout"/>.</summary>
    static async Task Until(Func<bool> condition, TimeSpan timeout, string what)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"not within {timeout}: {what}");
            await Task.Delay(50);
        }
    }

    [Fact]
    public async Task A_job_split_over_two_nodes_of_two_devices_is_bitwise_identical_to_one_device()
    {
        var coordinator = Coordinator();
        Worker(coordinator);
        Worker(coordinator);
        await WaitForMembers(coordinator, 3);

        await using var single = Single(256L << 20);
        var reference = Assert.IsType<JobSucceeded>(await single.RunAsync(new SubmitJob(JobId.New(), Model, new PolicySpec(2, 1))).WaitAsync(Wait));

        var client = Client(coordinator);
        var answer = await client.RunAsync(new SubmitJob(new JobId("split"), Model, new PolicySpec(2, 1))).WaitAsync(Wait);
        var ok = Assert.IsType<JobSucceeded>(answer);
        Assert.Equal(reference.Output, ok.Output);
        Assert.Equal(4, ok.Report.Stages.Length); // 8 layers over 4 devices
        Assert.Equal(2, ok.Report.Stages.Select(s => s.Node).Distinct().Count());
        Assert.Equal(Enumerable.Range(0, 8), ok.Report.Stages.SelectMany(s => Enumerable.Range(s.FirstLayer, s.LayerCount)));
        output.WriteLine(string.Join("\n", ok.Report.Stages));
        // The logits (4×64×512 floats, 512 KiB) are larger than one 128 kB frame: they arrived in chunks.
        Assert.True(ok.Output.Bytes.Length > 128_000);
    }

    /// <summary>Records every job event that reaches it (chunked answers put back together), to count answers per job.</summary>
    sealed class Recorder : ReceiveActor
    {
        public static readonly ConcurrentDictionary<string, ConcurrentQueue<IJobEvent>> Events = new();

        public Recorder()
        {
            Receive<MessageChunk>(Superpipeline.Messages.Serialization.ChunkAssembler.Receiver(Context));
            Receive<IJobEvent>(e => Events.GetOrAdd(e.Id.Value, _ => new()).Enqueue(e));
        }
    }

    static bool Terminal(IJobEvent e) => e is JobSucceeded or JobFailed or JobRefused;

    static void SubmitRaw(SubmitClient client, IActorRef recorder, SubmitJob job) =>
        client.ClusterClientRef.Tell(new Akka.Cluster.Tools.Client.ClusterClient.Send(ClusterHost.JobManagerProxyPath, job, localAffinity: false), recorder);

    static ModelSpec Small => new("demo", Blocks: 2, Hidden: 64, Heads: 4, Vocab: 128, Sequence: 16, Batch: 2, Seed: 5);

    [Fact]
    public async Task A_worker_lost_mid_job_has_its_stages_re_placed_and_of_100_jobs_none_is_lost_or_answered_twice()
    {
        var coordinator = Coordinator();
        Worker(coordinator);
        var doomed = Worker(coordinator, crashable: true);
        await WaitForMembers(coordinator, 3);
        await using var single = Single(64L << 20);
        var reference = Assert.IsType<JobSucceeded>(await single.RunAsync(new SubmitJob(JobId.New(), Small, new PolicySpec(1, 1))).WaitAsync(Wait));

        var client = Client(coordinator);
        var recorder = client.System.ActorOf(Props.Create(() => new Recorder()));
        var ids = Enumerable.Range(0, 100).Select(i => $"fault-{i}").ToArray();
        foreach (var id in ids) SubmitRaw(client, recorder, new SubmitJob(new JobId(id), Small, new PolicySpec(1, 1)));
        int Answers(string id) => Recorder.Events.TryGetValue(id, out var q) ? q.Count(Terminal) : 0;
        int Answered() => ids.Count(id => Answers(id) > 0);

        await Until(() => Answered() >= 10, Wait, "ten answers");
        Assert.True(Answered() < 100, "the worker must be lost while jobs are still running");
        await doomed.System.Terminate(); // a crash, no leaving: the coordinator finds it silent or unreachable
        await Until(() => Answered() == 100, Wait, "an answer to each of the 100 jobs");

        // Every id once more: the coordinator answers each from its record (nothing runs again). Once these second
        // answers are in, every answer the first submissions caused is in too (one coordinator, one path to the client).
        foreach (var id in ids) SubmitRaw(client, recorder, new SubmitJob(new JobId(id), Small, new PolicySpec(1, 1)));
        await Until(() => ids.All(id => Answers(id) >= 2), Wait, "a second answer, from the record, to each resubmitted id");
        foreach (var id in ids)
        {
            var terminal = Recorder.Events[id].Where(Terminal).ToArray();
            Assert.True(terminal.Length == 2, $"{id}: {terminal.Length} answers to two submissions");
            Assert.Equal(reference.Output, Assert.IsType<JobSucceeded>(terminal[0]).Output);
            Assert.Equal(reference.Output, Assert.IsType<JobSucceeded>(terminal[1]).Output);
        }
        var nodes = Recorder.Events.Values.SelectMany(q => q.OfType<JobSucceeded>()).SelectMany(s => s.Report.Stages.Select(x => x.Node)).Distinct();
        output.WriteLine($"jobs re-placed onto {string.Join(", ", nodes)}");
    }

    [Fact]
    public async Task A_burst_of_500_submissions_ends_with_every_job_completed_or_refused_none_dropped()
    {
        var coordinator = ClusterHost.Start(new HostOptions(["coordinator"], "127.0.0.1", 0, [], [],
            TestConfig + "\nsuperpipeline.max-queued-jobs = 40\nsuperpipeline.max-running-jobs = 2"));
        _hosts.Add(coordinator);
        Worker(coordinator);
        await WaitForMembers(coordinator, 2);
        var client = Client(coordinator);
        var recorder = client.System.ActorOf(Props.Create(() => new Recorder()));
        var ids = Enumerable.Range(0, 500).Select(i => $"burst-{i}").ToArray();
        foreach (var id in ids) SubmitRaw(client, recorder, new SubmitJob(new JobId(id), Small, new PolicySpec(1, 1)));
        await Until(() => ids.All(id => Recorder.Events.TryGetValue(id, out var q) && q.Any(Terminal)), Wait, "an answer to each of the 500 jobs");
        var answers = ids.Select(id => Recorder.Events.TryGetValue(id, out var q) ? q.Where(Terminal).ToArray() : []).ToArray();
        Assert.All(answers, a => Assert.Single(a));
        int done = answers.Count(a => a[0] is JobSucceeded), refused = answers.Count(a => a[0] is JobRefused);
        output.WriteLine($"{done} completed, {refused} refused");
        Assert.Equal(500, done + refused);
        Assert.True(refused > 0, "a queue of 40 cannot take a burst of 500");
        Assert.All(answers.Where(a => a[0] is JobRefused), a => Assert.StartsWith("the job queue is full", ((JobRefused)a[0]).Reason));
    }

    [Fact]
    public async Task A_job_no_device_can_hold_is_refused_at_admission()
    {
        var coordinator = Coordinator();
        Worker(coordinator, "sim:2x1MiB");
        await WaitForMembers(coordinator, 2);
        var client = Client(coordinator);
        // A job that fits runs only once the worker's registration has reached the coordinator.
        Assert.IsType<JobSucceeded>(await client.RunAsync(new SubmitJob(new JobId("fits"), Small, new PolicySpec(1, 1))).WaitAsync(Wait));
        var events = new List<IJobEvent>();
        await foreach (var e in client.Submit(new SubmitJob(new JobId("too-big"), Model with { Vocab = 4096, Hidden = 256 }, new PolicySpec(1, 1)))
            .ReadAllAsync().WithCancellation(new CancellationTokenSource(Wait).Token))
            events.Add(e);
        var refused = Assert.IsType<JobRefused>(Assert.Single(events)); // refused at admission: never accepted
        Assert.Contains("below the largest layer", refused.Reason);
        Assert.DoesNotContain("--device-memory", refused.Reason); // a cluster client used no such flag
    }

    [Fact]
    public async Task When_the_coordinator_node_is_lost_the_singleton_moves_and_resubmitted_jobs_complete()
    {
        var first = Coordinator(crashable: true, extra: NoLocalVerification);
        // Up alone before anyone joins, so it is the oldest and hosts the singleton (members that come up together are
        // ordered by address, and the second coordinator could be the oldest: a hand-over before the crash).
        await WaitForMembers(first, 1);
        var second = ClusterHost.Start(new HostOptions(["coordinator"], "127.0.0.1", 0, [$"127.0.0.1:{first.Address.Port}"], [],
            TestConfig + NoLocalVerification));
        _hosts.Add(second);
        Worker(first, extra: NoLocalVerification);
        await WaitForMembers(first, 3);
        await using var single = Single(64L << 20);
        var reference = Assert.IsType<JobSucceeded>(await single.RunAsync(new SubmitJob(JobId.New(), Model, new PolicySpec(1, 1))).WaitAsync(Wait));

        // On a loaded machine Akka's singleton hand-over can get stuck right after the second coordinator joins (it
        // throws ClusterSingletonManagerIsStuck, also on the commit before this one; it happened when the second
        // coordinator's address sorted lower). Then nothing is answered until the crash below ends it, about a minute
        // in all: so the first answer is awaited for a bounded time but not required, and this test's clients wait
        // long enough for that recovery.
        var client = SubmitClient.Start([$"127.0.0.1:{first.Address.Port}", $"127.0.0.1:{second.Address.Port}"],
            extraConfig: TestConfig + NoLocalVerification + "\nsuperpipeline.pass-timeout = 180s");
        _clients.Add(client);
        var jobs = Enumerable.Range(0, 40).Select(i => client.RunAsync(new SubmitJob(new JobId($"moved-{i}"), Model, new PolicySpec(1, 1)))).ToArray();
        await Task.WhenAny(Task.WhenAny(jobs), Task.Delay(TimeSpan.FromSeconds(45)));
        Assert.True(jobs.Count(j => j.IsCompleted) < jobs.Length, "the coordinator must be lost while jobs are outstanding");
        await first.System.Terminate(); // a crash: the singleton's node is gone without leaving, and without a hand-over
        var answers = await Task.WhenAll(jobs).WaitAsync(TimeSpan.FromSeconds(200));
        Assert.All(answers, a => Assert.Equal(reference.Output, Assert.IsType<JobSucceeded>(a).Output));
    }

    [Fact]
    public async Task Concurrent_jobs_of_one_model_are_coalesced_into_micro_batches_and_each_keeps_its_own_output()
    {
        var coordinator = ClusterHost.Start(new HostOptions(["coordinator"], "127.0.0.1", 0, [], [],
            TestConfig + "\nsuperpipeline.max-running-jobs = 1\nsuperpipeline.max-micro-batches = 3"));
        _hosts.Add(coordinator);
        Worker(coordinator);
        Worker(coordinator);
        await WaitForMembers(coordinator, 3);
        await using var single = Single(256L << 20);
        var seeds = Enumerable.Range(1, 7).Select(i => (long)i).ToArray();
        var alone = new Dictionary<long, TensorPayload>();
        foreach (var seed in seeds)
        {
            var answer = await single.RunAsync(new SubmitJob(JobId.New(), Model, new PolicySpec(2, 1), InputSeed: seed)).WaitAsync(Wait);
            alone[seed] = Assert.IsType<JobSucceeded>(answer).Output;
        }

        var client = Client(coordinator);
        var jobs = seeds.Select(seed => client.RunAsync(new SubmitJob(new JobId($"micro-{seed}"), Model, new PolicySpec(2, 1), InputSeed: seed)));
        var answers = await Task.WhenAll(jobs).WaitAsync(Wait);
        for (int i = 0; i < seeds.Length; i++)
            Assert.Equal(alone[seeds[i]], Assert.IsType<JobSucceeded>(answers[i]).Output);
        Assert.NotEqual(alone[1], alone[2]); // different inputs, different outputs: nothing was mixed up
        var microBatches = answers.Cast<JobSucceeded>().Select(a => a.Report.MicroBatches).ToArray();
        output.WriteLine($"micro-batches per job's pass: {string.Join(", ", microBatches)}");
        Assert.Contains(microBatches, m => m > 1);
        Assert.All(microBatches, m => Assert.InRange(m, 1, 3));
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var c in _clients) await c.DisposeAsync();
        foreach (var h in Enumerable.Reverse(_hosts)) await h.DisposeAsync();
    }
}
