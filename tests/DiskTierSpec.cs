using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Coordinator;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Coordinator.Commands;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.IO;
using Superpipeline.Messages;
using Superpipeline.Workers;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Tests;

/// <summary>The disk tier (run --host-memory, superpipeline.worker.host-memory): a checkpoint larger than the host memory stays
/// in its safetensors files, each layer is read when the window admits it and dropped once copied, under one budget shared by
/// the node's reads. Outputs equal the resident run bit for bit; the peak host weight bytes the report gives stay within the
/// budget; a host memory below a layer, or below a seeded model (which cannot stay on disk), is one line naming the flag.</summary>
public sealed class DiskTierSpec() : TestKit(WorkerConfig.Load()), IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("disk-tier-spec-").FullName;

    /// <summary>A BF16 Llama of 6 blocks whose largest layer (a block) is well under a quarter of the model.</summary>
    string Export(string name, long seed = 5)
    {
        string dir = Path.Combine(_root, name);
        ExportDemoCommand.Export("llama", "bf16", dir, seed, shards: 2, () => new LlamaConfig(Hidden: 32, Ffn: 64, Layers: 6, Heads: 4, KvHeads: 4,
            RmsNormEps: 1e-5, RopeTheta: 10000.0, Vocab: 96, MaxPositions: 64, TieWordEmbeddings: false));
        return dir;
    }

    static (long Total, long Largest) StoredBytes(ModelSpec spec)
    {
        var bytes = DiskTier.StoredLayerBytes(spec, ModelCatalog.Create(spec));
        return (bytes.Sum(), bytes.Max());
    }

    static async Task<(byte[] Output, PassReport Report, NodeAgentActor.Status Status)> Run(EmbeddedHost host, ModelSpec spec, PolicySpec policy)
    {
        var answer = await host.RunAsync(new SubmitJob(JobId.New(), spec, policy)).WaitAsync(TimeSpan.FromSeconds(120));
        if (answer is JobFailed failed) Assert.Fail($"{policy}: {failed.Reason}");
        var ok = Assert.IsType<JobSucceeded>(answer);
        var status = await host.System.ActorSelection("/user/node-agent")
            .Ask<NodeAgentActor.Status>(NodeAgentActor.GetStatus.Instance, TimeSpan.FromSeconds(30));
        return (ok.Output.Bytes.ToArray(), ok.Report, status);
    }

    [Fact]
    public async Task A_checkpoint_four_times_the_host_memory_runs_bit_identical_to_resident_with_peak_host_bytes_within_the_budget()
    {
        string dir = Export("ckpt");
        var spec = ModelCatalog.CheckpointSpec(dir, batch: 2, sequence: 6, seed: 3);
        var (total, largest) = StoredBytes(spec);
        long budget = total / 4;
        Assert.True(largest <= budget, $"largest layer {largest} must fit the budget {budget}");
        var device = new DeviceSpec(DeviceKind.Sim, 64L << 20, null);

        byte[] resident;
        await using (var host = EmbeddedHost.Start(device, "superpipeline.pass-timeout = 120s"))
        {
            var (output, report, status) = await Run(host, spec, new PolicySpec(null, null));
            resident = output;
            Assert.Equal(total, report.PeakHostWeightBytes); // every layer's stored bytes, held by its LayerActor
            Assert.Equal(total, status.HostWeightBytes);
        }

        await using (var host = EmbeddedHost.Start(device, $"superpipeline.pass-timeout = 120s\nsuperpipeline.worker.host-memory = {budget}"))
        {
            foreach (var (k, s) in new (int?, int?)[] { (1, 1), (2, 1), (3, 2), (4, 1), (null, null) })
            {
                var (output, report, status) = await Run(host, spec, new PolicySpec(k, s));
                Assert.True(resident.AsSpan().SequenceEqual(output), $"k={k}, k'={s} from disk differs from resident");
                Assert.InRange(report.PeakHostWeightBytes, largest, budget); // at least one layer read whole; never past the budget
                Assert.Equal(0, status.HostWeightBytes); // the LayerActors keep nothing
            }
        }

        // The same from the CLI: --host-memory gives the resident output.
        string a = Path.Combine(_root, "a.npy"), b = Path.Combine(_root, "b.npy");
        string[] args = ["run", "--model", dir, "--seq-len", "6", "--batch", "2", "--window", "2"];
        Assert.Equal(0, await Cli.MainAsync([.. args, "--output", a]));
        Assert.Equal(0, await Cli.MainAsync([.. args, "--output", b, "--host-memory", $"{budget}"]));
        Assert.Equal(Npy.Read(a).Data, Npy.Read(b).Data);
    }

    [Fact]
    public async Task A_host_memory_below_the_largest_layer_is_one_line_naming_the_flag()
    {
        string dir = Export("small");
        var spec = ModelCatalog.CheckpointSpec(dir, batch: 1, sequence: 4, seed: 1);
        var model = ModelCatalog.Create(spec);
        var (total, largest) = StoredBytes(spec);
        var e = Assert.Throws<FieldException>(() => Preflight.HostWeightBytes(spec, model, largest - 1));
        Assert.Equal(FieldException.HostMemory, e.Field);
        string line = Flags.Describe(e, RunCommand.Build());
        Assert.StartsWith($"--host-memory {largest - 1:N0} bytes is below the {largest:N0} bytes of layer 1 (", line);
        Assert.DoesNotContain('\n', line);
        Assert.Equal(largest, Preflight.HostWeightBytes(spec, model, largest)); // exactly one layer: accepted, held within it
        Assert.Equal(total, Preflight.HostWeightBytes(spec, model, total)); // everything fits: resident
        Assert.Equal(1, await Cli.MainAsync(["run", "--model", dir, "--host-memory", $"{largest - 1}"]));

        // A worker configured below a layer fails the stage with the same words (the domain's, naming the host memory).
        await using var host = EmbeddedHost.Start(new DeviceSpec(DeviceKind.Sim, 64L << 20, null),
            $"superpipeline.pass-timeout = 60s\nsuperpipeline.worker.host-memory = {largest - 1}");
        var answer = await host.RunAsync(new SubmitJob(JobId.New(), spec, new PolicySpec(1, 1))).WaitAsync(TimeSpan.FromSeconds(60));
        var failed = Assert.IsType<JobFailed>(answer);
        Assert.StartsWith($"host memory {largest - 1:N0} bytes is below", failed.Reason);
    }

    [Fact]
    public async Task A_seeded_model_is_refused_below_its_size_by_run_and_stays_resident_on_a_worker()
    {
        var spec = EngineHarness.Tiny();
        var model = ModelCatalog.Create(spec);
        var e = Assert.Throws<FieldException>(() => Preflight.HostWeightBytes(spec, model, model.Bytes - 1));
        Assert.Equal($"--host-memory {model.Bytes - 1:N0} bytes is below the {model.Bytes:N0} bytes of the seeded model's weights: " +
            "only a checkpoint's weights can stay on disk", Flags.Describe(e, RunCommand.Build()));
        Assert.Equal(model.Bytes, Preflight.HostWeightBytes(spec, model, model.Bytes));
        Assert.Equal(1, await Cli.MainAsync(["run", "--host-memory", "1KiB"]));

        await using var host = EmbeddedHost.Start(new DeviceSpec(DeviceKind.Sim, 64L << 20, null),
            "superpipeline.pass-timeout = 60s\nsuperpipeline.worker.host-memory = 1KiB");
        var (_, report, status) = await Run(host, spec, new PolicySpec(1, 1));
        Assert.Equal(model.Bytes, report.PeakHostWeightBytes);
        Assert.Equal(model.Bytes, status.HostWeightBytes);
    }

    [Fact]
    public async Task The_host_budget_serves_reads_first_come_first_served_and_refuses_one_that_can_never_fit()
    {
        var budget = new HostWeightBudget(100);
        using var meter = budget.Measure();
        var first = await budget.AcquireAsync(60, "a");
        var second = budget.AcquireAsync(50, "b"); // does not fit beside 60: waits
        var third = budget.AcquireAsync(10, "c"); // would fit, but never overtakes b
        Assert.False(second.IsCompleted || third.IsCompleted);
        using var cancel = new CancellationTokenSource();
        var fourth = budget.AcquireAsync(40, "d", cancel.Token);
        cancel.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => fourth);
        first.Dispose();
        (await second.WaitAsync(TimeSpan.FromSeconds(10))).Dispose();
        (await third.WaitAsync(TimeSpan.FromSeconds(10))).Dispose();
        Assert.Equal((0L, 60L), (budget.Held, meter.Peak));
        var e = Assert.Throws<ArgumentException>(() => { _ = budget.AcquireAsync(101, "layer 3 (block.2)"); }); // at once, not when awaited
        Assert.Equal("layer 3 (block.2) needs 101 bytes of host memory, more than the host memory of 100 bytes for weights", e.Message);
    }

    [Fact]
    public async Task A_read_whose_asker_gave_up_gives_its_bytes_back()
    {
        string dir = Export("dead");
        var spec = ModelCatalog.CheckpointSpec(dir, batch: 1, sequence: 4, seed: 1);
        var layer = ModelCatalog.Create(spec).Layers[1];
        var budget = new HostWeightBudget(StoredBytes(spec).Largest);
        var actor = Sys.ActorOf(LayerActor.Props(layer, new DiskTierWeights(dir, budget), pin: false), "layer-1");
        var full = await budget.AcquireAsync(budget.Capacity, "the test");
        await Assert.ThrowsAnyAsync<Exception>(() => actor.Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, TimeSpan.FromMilliseconds(200)));
        full.Dispose(); // the read proceeds; its answer reaches no one
        await AwaitConditionAsync(() => Task.FromResult(budget.Peak > 0 && budget.Held == 0), TimeSpan.FromSeconds(20));

        // An asker that waits gets the layer, owns it, and gives the bytes back by disposing the lease.
        var read = await actor.Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, TimeSpan.FromSeconds(20));
        Assert.Equal(layer.Bytes / 2, budget.Held); // BF16: half the float32 bytes
        Assert.NotNull(read.Lease);
        read.Lease!.Dispose();
        Assert.Equal(0, budget.Held);
    }

    [Theory]
    [InlineData("", null)]
    [InlineData("superpipeline.worker.host-memory = 2MiB", 2L << 20)]
    [InlineData("superpipeline.worker.host-memory = off", null)]
    public void The_worker_key_is_a_size_or_off(string overrides, long? expected) =>
        Assert.Equal(expected, WorkerSettings.Create(WorkerConfig.Load("worker", overrides), () => 8L << 30).HostMemory);

    [Fact]
    public void A_bad_worker_host_memory_is_refused_naming_the_key() =>
        Assert.Equal("superpipeline.worker.host-memory must be 'off' or a positive size in bytes (e.g. 2GiB); got 'lots'",
            Assert.Throws<ArgumentException>(() => WorkerSettings.Create(WorkerConfig.Load("worker", "superpipeline.worker.host-memory = lots"),
                () => null)).Message);

    public new void Dispose()
    {
        base.Dispose();
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { }
    }
}
