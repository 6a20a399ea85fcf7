using System.Collections.Concurrent;
using System.Collections.Immutable;
using Akka.Actor;
using Superpipeline.Coordinator;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Generation;
using Superpipeline.Engine.IO;
using Superpipeline.Workers;
using Xunit.Abstractions;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Tests;

/// <summary>Generation jobs through the job system and a cluster: a Llama checkpoint split into several stages over two workers
/// makes the tokens of a single-process generation (the engine's in-process <see cref="GenerationStage"/>, no job system), for
/// both KV placements, greedy and sampled; each stage's KV cache is on its own node (the report's per-stage KV bytes, counted
/// here from the config); every stage ends its session (device bytes back to zero) after success and after a failed step; a
/// worker lost mid-generation has the job re-placed with the same tokens; generation jobs are never coalesced; bad requests are
/// refused by the job manager in one line; and <c>submit --generate</c> writes the tokens <c>generate</c> writes.</summary>
public sealed class ClusterGenerationSpec(ITestOutputHelper output) : IAsyncLifetime
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(120);

    // The exported checkpoint: 4 blocks (6 layers: embedding, blocks, head), hidden 32, 4 heads of 8, 2 KV heads, vocab 96.
    const int Blocks = 4, KvHeads = 2, HeadDim = 8, Vocab = 96, MaxPositions = 64;

    readonly string _dir = Directory.CreateTempSubdirectory("superpipeline-cgen-").FullName;
    readonly List<IAsyncDisposable> _hosts = [];

    static readonly long[][] Prompts = [[5, 17, 33, 2, 71], [40, 8, 90]]; // different lengths: left padding and a mask

    async Task<string> Export()
    {
        string dir = Path.Combine(_dir, "llama");
        Assert.Equal(0, await Cli.MainAsync(["export-demo", "--family", "llama", "--out", dir, "--layers", $"{Blocks}", "--hidden", "32", "--heads", "4",
            "--kv-heads", $"{KvHeads}", "--ffn", "48", "--vocab", $"{Vocab}", "--max-positions", $"{MaxPositions}", "--seed", "21", "--dtype", "f32"]));
        return dir;
    }

    ClusterHost Coordinator()
    {
        var h = ClusterHost.Start(new HostOptions(["coordinator"], "127.0.0.1", 0, [], [], ClusterSpec.TestConfig));
        _hosts.Add(h);
        return h;
    }

    ClusterHost Worker(ClusterHost seed, string devices = "sim:2x64MiB", bool crashable = false)
    {
        var h = ClusterSpec.StartWorker(seed, devices, crashable);
        _hosts.Add(h);
        return h;
    }

    SubmitClient Client(ClusterHost contact)
    {
        var c = ClusterSpec.StartClient(contact);
        _hosts.Add(c);
        return c;
    }

    static string Node(ClusterHost h) => $"127.0.0.1:{h.Address.Port}";

    static GenerationRequest Request(bool sampled, int maxNew = 6) =>
        new(maxNew, sampled ? new SamplingSettings(Temperature: 0.8, TopK: 20, TopP: 0.9, Seed: 5) : SamplingSettings.Greedy);

    static SubmitJob Job(string dir, string id, GenerationRequest request, KvPlacement kv, PolicySpec policy, IReadOnlyList<long[]>? prompts = null)
    {
        prompts ??= Prompts;
        var spec = ModelCatalog.CheckpointSpec(dir, prompts.Count, prompts.Max(p => p.Length), 0);
        var s = request.Sampling;
        var generation = new GenerationParameters([.. prompts.Select(p => p.ToImmutableArray())], request.MaxNewTokens, s.Temperature, s.TopK, s.TopP, s.Seed,
            request.Eos, request.PadId, kv == KvPlacement.Host ? "host" : "device");
        return new SubmitJob(new JobId(id), spec, policy, Generation: generation);
    }

    /// <summary>The reference: the engine's generation on one in-process stage holding every layer (no job manager, no node agent).</summary>
    static async Task<long[,]> SingleProcess(string dir, GenerationRequest request, KvPlacement kv, long[][]? prompts = null)
    {
        prompts ??= Prompts;
        var model = ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, prompts.Length, prompts.Max(p => p.Length), 0));
        using var system = ActorSystem.Create("reference", WorkerConfig.Load());
        using var device = new SimulatedDevice("sim:0", 64L << 20);
        using var weights = new CheckpointWeights(dir);
        using var stage = GenerationStage.Start(system, device, model, weights, TimeSpan.FromSeconds(30));
        var result = await stage.GenerateAsync(prompts, new GenerationOptions(request, OffloadPolicy.For(new PolicySpec(2, 1), model.Layers.Count), kv),
            TimeSpan.FromMinutes(1));
        await system.Terminate();
        return result.Tokens;
    }

    static long[,] Tokens(TensorPayload p)
    {
        Assert.Equal("Int64", p.DType);
        var t = new long[p.Shape[0], p.Shape[1]];
        Buffer.BlockCopy(p.Bytes.ToArray(), 0, t, 0, p.Bytes.Length);
        return t;
    }

    /// <summary>K and V of one Llama block for <paramref name="batch"/> rows at <paramref name="capacity"/> entries, float32.</summary>
    static long BlockKvBytes(int batch, long capacity) => 2L * batch * KvHeads * capacity * HeadDim * sizeof(float);

    /// <summary>Blocks among layers [first, first + count) of the 6 (layer 0 is the embedding, layer 5 the head).</summary>
    static int BlocksIn(int first, int count) => Enumerable.Range(first, count).Count(i => i >= 1 && i <= Blocks);

    static async Task Until(Func<bool> condition, Func<string> what, TimeSpan limit)
    {
        var deadline = DateTime.UtcNow + limit;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"waited {limit} for {what()}");
            await Task.Delay(50);
        }
    }

    /// <summary>Sessions end as their stages hear of the failure: bounded well under the test's limit.</summary>
    static async Task DevicesFree(params ClusterHost[] workers) =>
        await Until(() => workers.SelectMany(w => w.Devices).All(d => d.Memory.Reserved == 0),
            () => "every worker device to hold no bytes, not " + string.Join(", ", workers.SelectMany(w => w.Devices).Select(d => d.Memory.Reserved)),
            TimeSpan.FromSeconds(20));

    [Fact]
    public async Task Tokens_from_two_workers_equal_one_process_for_both_kv_placements_greedy_and_sampled_with_each_stage_s_kv_on_its_node()
    {
        string dir = await Export();
        var coordinator = Coordinator();
        var a = Worker(coordinator, "sim:1x64MiB");
        var b = Worker(coordinator); // two devices: three stages over the two nodes, one of them with two blocks
        var client = Client(coordinator);
        int n = 0;
        foreach (var kv in new[] { KvPlacement.Device, KvPlacement.Host })
            foreach (bool sampled in new[] { false, true })
            {
                var request = Request(sampled);
                var expected = await SingleProcess(dir, request, kv);
                var tokens = new ConcurrentQueue<JobToken>();
                var job = Job(dir, $"gen-{n++}", request, kv, new PolicySpec(1, 1));
                IJobEvent answer = new JobFailed(job.Id, "no answer");
                // The first job may come before both workers have registered: until it runs on two nodes, submit again under a new id.
                for (int tries = 0; tries < 20; tries++)
                {
                    tokens.Clear();
                    answer = await client.RunAsync(job, onToken: tokens.Enqueue).WaitAsync(Wait);
                    if (answer is JobGenerated g && g.Report.Stages.Select(s => s.Node).Distinct().Count() == 2) break;
                    job = job with { Id = new JobId($"{job.Id.Value}-{tries}") };
                    await Task.Delay(500);
                }
                var ok = Assert.IsType<JobGenerated>(answer);
                var what = $"kv {kv}, {(sampled ? "sampled" : "greedy")}";
                Assert.True(expected.Cast<long>().SequenceEqual(Tokens(ok.Tokens).Cast<long>()), $"{what}: the cluster's tokens differ from one process");
                Assert.Equal([2L, 5 + 6], ok.Tokens.Shape.ToArray());

                // One event per token step, in order, the tokens of the answer's new columns.
                Assert.Equal(Enumerable.Range(0, 6), tokens.Select(t => t.Step));
                var answered = Tokens(ok.Tokens);
                foreach (var t in tokens) Assert.Equal([answered[0, 5 + t.Step], answered[1, 5 + t.Step]], t.Tokens.ToArray());

                var r = ok.Report;
                output.WriteLine($"{what}: " + string.Join("; ",
                    r.Stages.Select(s => $"{s.Node}/{s.Device} [{s.FirstLayer}+{s.LayerCount}] peak {s.PeakDeviceBytes} kv {s.KvBytes}")));
                Assert.True(r.Stages.Length >= 3, $"{what}: {r.Stages.Length} stages");
                Assert.Equal(new[] { Node(a), Node(b) }.Order(), r.Stages.Select(s => s.Node).Distinct().Order());
                Assert.Equal(Enumerable.Range(0, 6), r.Stages.SelectMany(s => Enumerable.Range(s.FirstLayer, s.LayerCount)));
                long capacity = 5 + 6;
                foreach (var s in r.Stages)
                {
                    Assert.Equal(BlocksIn(s.FirstLayer, s.LayerCount) * BlockKvBytes(2, capacity), s.KvBytes);
                    Assert.Equal(6, s.Passes); // a prefill and five decode passes on every stage
                    if (kv == KvPlacement.Device)
                        Assert.True(s.PeakDeviceBytes >= s.KvBytes, $"{what}: stage {s.Stage} peak {s.PeakDeviceBytes} < KV {s.KvBytes}");
                }
                Assert.Equal(Blocks * BlockKvBytes(2, capacity), r.KvBytes);
                Assert.Equal(kv == KvPlacement.Host ? "host" : "device", r.KvPlacement);
                Assert.Equal(6, r.NewTokens);

                // The answer comes once every stage has ended its session: nothing stays on any device.
                Assert.All(new[] { a, b }.SelectMany(w => w.Devices), d => Assert.Equal(0, d.Memory.Reserved));
            }
    }

    [Fact]
    public async Task A_failed_step_fails_the_job_and_every_stage_ends_its_session()
    {
        string dir = await Export();
        var coordinator = Coordinator();
        var a = Worker(coordinator, "sim:1x64MiB");
        var b = Worker(coordinator, "sim:1x64MiB");
        var client = Client(coordinator);
        // Wait until a job runs on both workers, so that the generation below holds caches on both nodes.
        for (int i = 0; ; i++)
        {
            var probe = await client.RunAsync(Job(dir, $"probe-{i}", Request(false, 1), KvPlacement.Device, new PolicySpec(1, 1))).WaitAsync(Wait);
            if (probe is JobGenerated g && g.Report.Stages.Length == 2) break;
            Assert.True(i < 40, "the job never ran on both workers");
            await Task.Delay(500);
        }
        await DevicesFree(a, b);

        // Once the first token is in, fill the last stage's device: its next step cannot load a layer and fails.
        var filled = new TaskCompletionSource<DeviceMemory.Reservation>(TaskCreationOptions.RunContinuationsAsynchronously);
        var last = new[] { a, b }.OrderBy(Node, StringComparer.Ordinal).Last().Devices[0]; // placement orders stages by node
        var job = Job(dir, "doomed", Request(false, 55), KvPlacement.Device, new PolicySpec(1, 1)); // steps left long after the first
        var answer = await client.RunAsync(job, onToken: t =>
        {
            if (t.Step != 0) return;
            for (int i = 0; i < 1000 && !filled.Task.IsCompleted; i++)
            {
                try { filled.TrySetResult(last.Memory.Reserve(last.Memory.Capacity - last.Memory.Reserved, "the test's filler")); }
                catch (DeviceOutOfMemoryException) { } // a pass reserved meanwhile: try again
            }
        }).WaitAsync(Wait);
        var failed = Assert.IsType<JobFailed>(answer);
        output.WriteLine(failed.Reason);
        Assert.DoesNotContain('\n', failed.Reason);
        Assert.True(filled.Task.IsCompleted, "the filler was never placed");
        (await filled.Task).Dispose();
        await DevicesFree(a, b);
    }

    [Fact]
    public async Task A_worker_lost_mid_generation_has_the_job_re_placed_with_the_tokens_of_an_uninterrupted_run()
    {
        string dir = await Export();
        var request = Request(sampled: true, maxNew: 55);
        var coordinator = Coordinator();
        var stays = Worker(coordinator);
        var doomed = Worker(coordinator, crashable: true);
        var client = Client(coordinator);
        for (int i = 0; ; i++)
        {
            var probe = await client.RunAsync(Job(dir, $"probe-{i}", Request(false, 1), KvPlacement.Device, new PolicySpec(1, 1))).WaitAsync(Wait);
            if (probe is JobGenerated g && g.Report.Stages.Select(s => s.Node).Distinct().Count() == 2) break;
            Assert.True(i < 40, "the job never ran on both workers");
            await Task.Delay(500);
        }
        var expected = await SingleProcessFor(dir, request);

        var steps = new ConcurrentQueue<int>();
        var crashed = 0;
        var job = Job(dir, "survivor", request, KvPlacement.Host, new PolicySpec(1, 1));
        var answer = await client.RunAsync(job, onToken: t =>
        {
            steps.Enqueue(t.Step);
            if (t.Step == 2 && Interlocked.Exchange(ref crashed, 1) == 0) _ = doomed.System.Terminate(); // a crash, no leaving
        }).WaitAsync(Wait);
        var ok = Assert.IsType<JobGenerated>(answer);
        Assert.Equal(1, crashed);
        Assert.True(expected.Cast<long>().SequenceEqual(Tokens(ok.Tokens).Cast<long>()), "the re-placed generation's tokens differ");
        Assert.Equal([Node(stays)], ok.Report.Stages.Select(s => s.Node).Distinct());
        Assert.True(steps.Count(s => s == 0) >= 2, "the generation did not restart from its prompt");
        output.WriteLine($"steps seen: {string.Join(' ', steps)}");
        await DevicesFree(stays);
    }

    static Task<long[,]> SingleProcessFor(string dir, GenerationRequest request) => SingleProcess(dir, request, KvPlacement.Device);

    [Fact]
    public async Task Generation_jobs_submitted_together_are_not_coalesced_and_each_gets_the_tokens_of_its_own_prompts()
    {
        string dir = await Export();
        await using var host = EmbeddedHost.Start(new DeviceSpec(DeviceKind.Sim, 64L << 20, null));
        long[][] others = [[3, 1, 4, 1, 5], [27, 18]]; // the same model spec and policy as Prompts: coalescable as passes
        var greedy = Job(dir, "together-0", Request(false), KvPlacement.Device, new PolicySpec(1, 1));
        var sampled = Job(dir, "together-1", Request(true), KvPlacement.Host, new PolicySpec(1, 1), others);
        var answers = await Task.WhenAll(host.RunAsync(greedy), host.RunAsync(sampled)).WaitAsync(Wait);
        var first = Assert.IsType<JobGenerated>(answers[0]);
        var second = Assert.IsType<JobGenerated>(answers[1]);
        Assert.Equal((await SingleProcess(dir, Request(false), KvPlacement.Device)).Cast<long>(), Tokens(first.Tokens).Cast<long>());
        Assert.Equal((await SingleProcess(dir, Request(true), KvPlacement.Host, others)).Cast<long>(), Tokens(second.Tokens).Cast<long>());
        Assert.Equal([2L, 5 + 6], second.Tokens.Shape.ToArray());
        Assert.Equal(greedy.Model, sampled.Model);
        Assert.Equal(6, first.Report.Passes);
        Assert.Equal(0, host.Device.Memory.Reserved);
    }

    [Fact]
    public async Task Bad_generation_requests_are_refused_by_the_job_manager_in_one_line()
    {
        string dir = await Export();
        await using var host = EmbeddedHost.Start(new DeviceSpec(DeviceKind.Sim, 64L << 20, null));
        async Task<string> Refused(SubmitJob job) => Assert.IsType<JobRefused>(await host.RunAsync(job).WaitAsync(Wait)).Reason;
        var policy = new PolicySpec(1, 1);
        Assert.Equal("max new tokens must be at least 1; got 0", await Refused(Job(dir, "none", Request(false, 0), KvPlacement.Device, policy)));
        long[][] longPrompt = [[.. Enumerable.Range(0, 60).Select(i => (long)(i % Vocab))]];
        Assert.Equal($"max new tokens (8) plus the prompt's 60 tokens exceed the model's {MaxPositions} positions",
            await Refused(Job(dir, "long", Request(false, 8), KvPlacement.Device, policy, longPrompt)));
        Assert.Equal($"prompt 1 holds token id {Vocab}, outside the vocabulary [0, {Vocab})",
            await Refused(Job(dir, "vocab", Request(false, 2), KvPlacement.Device, policy, [[1, 2], [3, Vocab]])));
        Assert.Equal("top-p must be in (0, 1]; got 1.5",
            await Refused(Job(dir, "top-p", new GenerationRequest(2, new SamplingSettings(TopP: 1.5)), KvPlacement.Device, policy)));
        var badKv = Job(dir, "kv", Request(false, 2), KvPlacement.Device, policy);
        Assert.Equal("kv placement must be 'device' or 'host'; got 'disk'", await Refused(badKv with { Generation = badKv.Generation! with { Kv = "disk" } }));
        Assert.Equal(0, host.Device.Memory.Reserved);
    }

    [Fact]
    public async Task Submit_generate_writes_the_tokens_generate_writes()
    {
        string dir = await Export();
        string input = Path.Combine(_dir, "ids.npy");
        long[] ids = [1, 2, 3, 4, 5, 9, 8, 7, 6, 5];
        Npy.Write(input, new TensorPayload("Int64", [2, 5], [.. ids.SelectMany(BitConverter.GetBytes)]));
        string local = Path.Combine(_dir, "local.npy"), remote = Path.Combine(_dir, "remote.npy");
        string[] sampling = ["--max-new-tokens", "5", "--temperature", "0.7", "--top-k", "10", "--seed", "4", "--kv", "host"];
        Assert.Equal(0, await Cli.MainAsync(["generate", "--model", dir, "--input", input, "--window", "2", "--output", local, .. sampling]));

        var coordinator = Coordinator();
        Worker(coordinator);
        Worker(coordinator);
        string[] flags = [.. sampling.Select(f => f == "--max-new-tokens" ? "--generate" : f)];
        Assert.Equal(0, await Cli.MainAsync(["submit", "--contact", $"127.0.0.1:{coordinator.Address.Port}", "--config", await TestConfigFile(),
            "--model", dir, "--input", input, "--window", "1", "--swap", "1", "--output", remote, .. flags]).WaitAsync(Wait));
        var (descr, shape, data) = Npy.Read(remote);
        Assert.Equal("<i8", descr);
        Assert.Equal([2L, 10], shape);
        Assert.Equal(Npy.Read(local).Data, data);
    }

    async Task<string> TestConfigFile()
    {
        string path = Path.Combine(_dir, "test.conf");
        await File.WriteAllTextAsync(path, ClusterSpec.TestConfig);
        return path;
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var h in Enumerable.Reverse(_hosts)) await h.DisposeAsync();
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }
}
