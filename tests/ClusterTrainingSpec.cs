using System.Collections.Immutable;
using Superpipeline.Contracts;
using Superpipeline.Coordinator;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Engine;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Training;
using Superpipeline.Messages;
using Superpipeline.Workers;
using Xunit;
using Xunit.Abstractions;
using static Superpipeline.Messages.JobProtocol;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>Training jobs across pipeline stages (<c>submit --train</c>): a Llama checkpoint split into three stages over two workers
/// in one process (each stage's layer actors keep their weights and optimizer state on their node; activations go forward and
/// input gradients back as payloads over the wire) makes every loss, learning rate, gradient norm and final weight of the
/// single-process <see cref="TrainingRun"/>, bit for bit: each stage runs the same layer ops in the same order on the same float32
/// values (a payload is the tensor's exact bytes), the clip coefficient is computed from the same per-tensor norms in the same
/// order, and each layer's optimizer steps on the same gradients; nothing is summed in another order, so no tolerance is needed.
/// A step that fails (a NaN loss) fails the job with one line naming the step, frees every device byte on every stage, and keeps
/// the weights of the last good step.</summary>
public sealed class ClusterTrainingSpec(ITestOutputHelper output) : IAsyncLifetime
{
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(180);
    const int Blocks = 4, Vocab = 96, Rows = 8, Seq = 10, Batch = 4, Steps = 3;

    readonly string _dir = Directory.CreateTempSubdirectory("superpipeline-ctrain-").FullName;
    readonly List<IAsyncDisposable> _hosts = [];

    /// <summary>A seeded checkpoint of <paramref name="family"/>: Llama with grouped heads, or GPT-2 with its head tied to wte.</summary>
    async Task<string> Export(string family = "llama")
    {
        string dir = Path.Combine(_dir, family);
        string[] heads = family == "llama" ? ["--heads", "4", "--kv-heads", "2"] : ["--heads", "4"];
        Assert.Equal(0, await Cli.MainAsync(["export-demo", "--family", family, "--out", dir, "--layers", $"{Blocks}", "--hidden", "32", .. heads,
            "--ffn", "48", "--vocab", $"{Vocab}", "--max-positions", "64", "--seed", "21", "--dtype", "f32"]));
        return dir;
    }

    /// <summary>Token ids int64 [Rows, Seq] from a seeded generator of our own, as a .npy file.</summary>
    string Data()
    {
        var rng = new Random(7);
        var ids = Enumerable.Range(0, Rows * Seq).Select(_ => (long)rng.Next(Vocab)).ToArray();
        using var t = tensor(ids, ScalarType.Int64).reshape(Rows, Seq);
        string path = Path.Combine(_dir, "ids.npy");
        Npy.Write(path, TensorPayloads.From(t));
        return path;
    }

    static TrainingSettings Settings(double lr = 1e-2, int steps = Steps) =>
        new(new OptimizerSettings(OptimizerKind.AdamW, lr, WeightDecay: 0.1), new LrSchedule(ScheduleKind.Cosine, 1, steps), ClipNorm: 0.5, MicroBatches: 2);

    string Checkpoints => Path.Combine(_dir, "training-checkpoints");

    ClusterHost Coordinator()
    {
        var h = ClusterHost.Start(new HostOptions(["coordinator"], "127.0.0.1", 0, [], [],
            ClusterSpec.TestConfig + $"\nsuperpipeline.training-checkpoints = \"{Checkpoints}\""));
        _hosts.Add(h);
        return h;
    }

    /// <summary>A worker; a <paramref name="crashable"/> one's actor system can be terminated without leaving the cluster (a crash).</summary>
    ClusterHost Worker(ClusterHost seed, string devices, bool crashable = false)
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

    /// <summary>Runs plain pass jobs until one is placed over three stages on both workers: both have registered. Returns the
    /// stages as placed.</summary>
    static async Task<ImmutableArray<StagePlan>> BothWorkersRegistered(SubmitClient client, string dir, ClusterHost a, ClusterHost b)
    {
        for (int i = 0; ; i++)
        {
            var spec = ModelCatalog.CheckpointSpec(dir, 1, Seq, 0);
            var probe = await client.RunAsync(new SubmitJob(new JobId($"probe-{i}"), spec, new PolicySpec(1, 1))).WaitAsync(Wait);
            if (probe is JobSucceeded s && s.Report.Stages.Select(x => x.Node).Distinct().Order().SequenceEqual(new[] { Node(a), Node(b) }.Order())
                && s.Report.Stages.Length == 3)
                return s.Report.Stages;
            Assert.True(i < 60, $"the job never ran on both workers: {probe}");
            await Task.Delay(250);
        }
    }

    /// <summary>A coordinator, worker A with one device (crashable: its actor system can be terminated without leaving) and worker
    /// B with two, a client, and both workers registered: jobs are placed over three stages on both.</summary>
    async Task<TwoWorkerCluster> TwoWorkers(string dir, bool crashableA = false)
    {
        var coordinator = Coordinator();
        var a = Worker(coordinator, "sim:1x64MiB", crashableA);
        var b = Worker(coordinator, "sim:2x64MiB");
        var client = Client(coordinator);
        return new TwoWorkerCluster(coordinator, a, b, client, await BothWorkersRegistered(client, dir, a, b));
    }

    sealed record TwoWorkerCluster(ClusterHost Coordinator, ClusterHost A, ClusterHost B, SubmitClient Client, ImmutableArray<StagePlan> Placed)
    {
        public string Contact => $"127.0.0.1:{Coordinator.Address.Port}";
    }

    static SubmitJob TrainJob(string dir, string id, string data, TrainingSettings s, bool weights = true, int steps = Steps, int checkpointEvery = 0)
    {
        using var ids = TrainingData.Read(data, dir, Seq);
        var training = new TrainingParameters(TensorPayloads.From(ids), Batch, steps, TrainingStageActor.Wire(s),
            s.Schedule.Kind.ToString().ToLowerInvariant(), s.Schedule.Warmup, weights, checkpointEvery);
        return new SubmitJob(new JobId(id), ModelCatalog.CheckpointSpec(dir, Batch, Seq, 0), new PolicySpec(1, 1), Training: training);
    }

    /// <summary>Submits <paramref name="job"/>; returns its answer and every step line the client saw, in order.</summary>
    static async Task<(IJobEvent Answer, List<TrainingStepLine> Steps)> Run(SubmitClient client, SubmitJob job, Action<TrainingStepLine>? onStep = null)
    {
        var steps = new List<TrainingStepLine>();
        IJobEvent? last = null;
        await foreach (var e in client.Submit(job).ReadAllAsync().WithCancellation(new CancellationTokenSource(Wait).Token))
        {
            if (e is JobTrainingStep s)
            {
                steps.Add(s.Step);
                onStep?.Invoke(s.Step);
            }
            last = e;
        }
        return (last ?? new JobFailed(job.Id, "no answer"), steps);
    }

    /// <summary>The reference: <see cref="TrainingRun"/> in this process, one device, the whole model.</summary>
    async Task<(TrainingRunResult Result, string Saved)> SingleProcess(string dir, string data, TrainingSettings s, int steps = Steps)
    {
        string saved = Path.Combine(_dir, $"reference-{Guid.NewGuid():N}");
        var result = await TrainingRun.RunAsync(new TrainingRunOptions(dir, data, Batch, steps, s, new PolicySpec(2, 1),
            DeviceSpecs.ParseList("sim:64MiB")[0]) { Sequence = Seq, SaveDir = saved }, _ => { }, CancellationToken.None);
        return (result, saved);
    }

    static async Task DevicesFree(params ClusterHost[] workers)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (!workers.SelectMany(w => w.Devices).All(d => d.Memory.Reserved == 0))
        {
            Assert.True(DateTime.UtcNow < deadline,
                "device bytes still held: " + string.Join(", ", workers.SelectMany(w => w.Devices).Select(d => d.Memory.Reserved)));
            await Task.Delay(50);
        }
    }

    [Fact]
    public async Task Three_stages_on_two_workers_train_bit_for_bit_as_one_process_and_free_every_device_byte() =>
        await TrainsAsOneProcess(await Export("llama"));

    /// <summary>GPT-2's head reads the embedding's wte: with the embedding on the first stage and the head on the last, the head's
    /// gradient of wte travels back with the input gradients through the middle stage, the first stage adds the embedding's (the
    /// sum one process makes, in its order), and the sum goes back to the head's stage; both copies of wte then step alike.</summary>
    [Fact]
    public async Task A_head_tied_to_the_embedding_on_another_stage_trains_bit_for_bit_as_one_process() =>
        await TrainsAsOneProcess(await Export("gpt2"), stages =>
        {
            Assert.Equal(0, stages[0].FirstLayer);
            Assert.True(stages[^1].FirstLayer > 0, "the head shares a stage with the embedding: nothing crosses");
            Assert.True(stages.Length == 3 && stages[1].LayerCount > 0);
        });

    /// <summary>A worker crashes (no leaving) while a job trains on it: the job is placed again on the worker left, whose stages
    /// start from the job's latest training checkpoint (weights and optimizer state, saved by the job's coordinator every 3 steps),
    /// not from the model. The steps before that checkpoint are never run again, and every loss and final weight still equals one
    /// uninterrupted process bit for bit. The job's checkpoints are deleted when it is answered.</summary>
    [Fact]
    public async Task A_worker_lost_mid_training_resumes_from_the_last_checkpoint_and_trains_bit_for_bit_as_one_process()
    {
        const int steps = 12, every = 3, crashAt = 4;
        string dir = await Export("gpt2");
        string data = Data();
        var s = Settings(steps: steps);
        var (reference, saved) = await SingleProcess(dir, data, s, steps);
        Assert.Null(reference.Failure);

        var (_, doomed, stays, client, _) = await TwoWorkers(dir, crashableA: true);

        int crashed = 0;
        var (answer, seen) = await Run(client, TrainJob(dir, "survivor", data, s, steps: steps, checkpointEvery: every), line =>
        {
            if (line.Step == crashAt && Interlocked.Exchange(ref crashed, 1) == 0) _ = doomed.System.Terminate(); // a crash, no leaving
        });
        var trained = Assert.IsType<JobTrained>(answer);
        output.WriteLine($"steps seen: {string.Join(' ', seen.Select(l => l.Step))}");
        Assert.Null(trained.Failure);
        Assert.Equal(1, crashed);
        Assert.Equal(Enumerable.Range(0, steps), trained.Steps.Select(l => l.Step));
        for (int i = 0; i < every; i++) Assert.Single(seen, l => l.Step == i); // resumed from a checkpoint, not from the start
        Assert.True(seen.Count(l => l.Step >= crashAt) > steps - crashAt - 1, "the job did not go on after the crash");
        for (int i = 0; i < steps; i++)
        {
            Assert.Equal(BitConverter.DoubleToInt64Bits(reference.Steps[i].Loss), BitConverter.DoubleToInt64Bits(trained.Steps[i].Loss));
            Assert.Equal(BitConverter.SingleToInt32Bits(reference.Steps[i].GradNorm!.Value), BitConverter.SingleToInt32Bits(trained.Steps[i].GradNorm!.Value));
        }
        using var back = SafetensorsCheckpoint.Open(saved);
        Assert.Equal(back.Names.Order(StringComparer.Ordinal), trained.Weights.Select(w => w.Name).Order(StringComparer.Ordinal));
        foreach (var w in trained.Weights)
        {
            using var want = back.Read(w.Name);
            Assert.True(TensorBytes.Raw(want).AsSpan().SequenceEqual(w.Tensor.Bytes.AsSpan()), $"{w.Name} differs from the uninterrupted run");
        }
        Assert.Empty(Directory.Exists(Checkpoints) ? Directory.GetFileSystemEntries(Checkpoints) : []);
        await DevicesFree(stays);
    }

    async Task TrainsAsOneProcess(string dir, Action<ImmutableArray<StagePlan>>? placed = null)
    {
        string data = Data();
        var s = Settings();
        var (reference, saved) = await SingleProcess(dir, data, s);
        Assert.Null(reference.Failure);
        Assert.Equal(Steps, reference.Steps.Count);

        var (_, a, b, client, stages) = await TwoWorkers(dir);
        placed?.Invoke(stages);

        var (answer, steps) = await Run(client, TrainJob(dir, "train-0", data, s));
        var trained = Assert.IsType<JobTrained>(answer);
        Assert.Null(trained.Failure);
        Assert.Equal(steps, trained.Steps);
        Assert.Equal(Enumerable.Range(0, Steps), steps.Select(x => x.Step));
        // Where it trained, as the client prints it: three stages covering the model on both workers, each within its device.
        Assert.Equal(3, trained.Stages.Length);
        Assert.Equal(new[] { Node(a), Node(b) }.Order(), trained.Stages.Select(x => x.Node).Distinct().Order());
        Assert.Equal(ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, Batch, Seq, 0)).Layers.Count, trained.Stages.Sum(x => x.LayerCount));
        Assert.All(trained.Stages, x => Assert.InRange(x.PeakDeviceBytes, 1, 64L << 20));
        Assert.Equal(steps.Max(x => x.PeakDeviceBytes), trained.Stages.Max(x => x.PeakDeviceBytes));
        for (int i = 0; i < Steps; i++)
        {
            var (want, got) = (reference.Steps[i], steps[i]);
            output.WriteLine($"step {i}: loss {got.Loss:R} (one process {want.Loss:R}), lr {got.LearningRate}, norm {got.GradNorm}, "
                + $"peak {got.PeakDeviceBytes}");
            Assert.Equal(BitConverter.DoubleToInt64Bits(want.Loss), BitConverter.DoubleToInt64Bits(got.Loss));
            Assert.Equal(want.MicroBatchLosses.Select(BitConverter.SingleToInt32Bits), got.MicroBatchLosses.Select(BitConverter.SingleToInt32Bits));
            Assert.Equal(want.LearningRate, got.LearningRate);
            Assert.Equal(BitConverter.SingleToInt32Bits(want.GradNorm!.Value), BitConverter.SingleToInt32Bits(got.GradNorm!.Value));
        }
        Assert.True(steps[^1].Loss < steps[0].Loss, "the loss falls");

        using var back = SafetensorsCheckpoint.Open(saved);
        Assert.Equal(back.Names.Order(StringComparer.Ordinal), trained.Weights.Select(w => w.Name).Order(StringComparer.Ordinal));
        using var original = SafetensorsCheckpoint.Open(dir);
        int changed = 0;
        foreach (var w in trained.Weights)
        {
            using var want = back.Read(w.Name);
            using var before = original.Read(w.Name);
            Assert.True(TensorBytes.Raw(want).AsSpan().SequenceEqual(w.Tensor.Bytes.AsSpan()), $"{w.Name} differs from the one-process run");
            if (!TensorBytes.Raw(before).AsSpan().SequenceEqual(w.Tensor.Bytes.AsSpan())) changed++;
        }
        Assert.Equal(trained.Weights.Length, changed); // every tensor trained: a stage that skipped its optimizer would be caught
        await DevicesFree(a, b);
    }

    [Fact]
    public async Task A_nan_loss_fails_the_step_frees_every_device_and_keeps_the_last_good_weights()
    {
        string dir = await Export();
        string data = Data();
        var (_, a, b, client, _) = await TwoWorkers(dir);

        // SGD at a huge rate: the first step's update blows the weights up, and the second step's loss is not finite.
        var s = new TrainingSettings(new OptimizerSettings(OptimizerKind.Sgd, 1e30), LrSchedule.Constant, MicroBatches: 2);
        var (answer, steps) = await Run(client, TrainJob(dir, "train-nan", data, s));
        var trained = Assert.IsType<JobTrained>(answer);
        output.WriteLine(trained.Failure);
        Assert.NotNull(trained.Failure);
        Assert.Contains("step 2", trained.Failure);
        Assert.Contains("loss", trained.Failure);
        Assert.Single(steps);
        Assert.Equal(steps, trained.Steps);
        await DevicesFree(a, b);

        // The weights of the last good step: one SGD step, the same as one step in one process.
        var (reference, saved) = await SingleProcess(dir, data, s);
        Assert.NotNull(reference.Failure);
        using var back = SafetensorsCheckpoint.Open(saved);
        foreach (var w in trained.Weights)
        {
            using var want = back.Read(w.Name);
            Assert.True(TensorBytes.Raw(want).AsSpan().SequenceEqual(w.Tensor.Bytes.AsSpan()), $"{w.Name} is not the last good step's");
        }
    }

    [Fact]
    public async Task Submit_train_saves_the_checkpoint_train_saves_and_refuses_a_bad_rate_naming_its_flag()
    {
        string dir = await Export();
        string data = Data();
        var cluster = await TwoWorkers(dir);
        var (a, b, contact) = (cluster.A, cluster.B, cluster.Contact);
        string[] common = ["--model", dir, "--data", data, "--batch", $"{Batch}", "--steps", "2", "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9",
            "--micro-batches", "2", "--clip-norm", "1"];
        string trained = Path.Combine(_dir, "train-saved"), submitted = Path.Combine(_dir, "submit-saved");
        Assert.Equal(0, await Cli.MainAsync(["train", .. common, "--window", "2", "--swap", "1", "--save", trained]));
        Assert.Equal(0, await Cli.MainAsync(["submit", "--contact", contact, "--train", .. common, "--window", "1", "--swap", "1", "--save", submitted,
            "--report", Path.Combine(_dir, "submit-train.json")]));
        string planned = Path.Combine(_dir, "submit-auto-saved"); // the job manager plans the window for the training step
        Assert.Equal(0, await Cli.MainAsync(["submit", "--contact", contact, "--train", .. common, "--window", "auto", "--save", planned]));
        foreach (var other in new[] { submitted, planned })
        {
            using var want = SafetensorsCheckpoint.Open(trained);
            using var got = SafetensorsCheckpoint.Open(other);
            Assert.Equal(want.Names, got.Names);
            foreach (var name in want.Names)
            {
                using var w = want.Read(name);
                using var g = got.Read(name);
                Assert.True(TensorBytes.Raw(w).AsSpan().SequenceEqual(TensorBytes.Raw(g)), $"{name}: submit --train saved other weights than train");
            }
        }
        Assert.Contains("\"Steps\"", File.ReadAllText(Path.Combine(_dir, "submit-train.json")), StringComparison.OrdinalIgnoreCase);
        var error = new StringWriter();
        var stderr = Console.Error;
        Console.SetError(error);
        try
        {
            string[] bad = [.. common.Select(x => x == "0.05" ? "-1" : x)];
            Assert.NotEqual(0, await Cli.MainAsync(["submit", "--contact", contact, "--train", .. bad]));
            Assert.Contains("--lr", error.ToString());
            error.GetStringBuilder().Clear();
            Assert.NotEqual(0, await Cli.MainAsync(["submit", "--contact", contact, "--train", .. common, "--window", "auto", "--resident-layers", "auto"]));
            Assert.Contains("training plans its window without pinned layers", error.ToString());
        }
        finally
        {
            Console.SetError(stderr);
        }
        await DevicesFree(a, b);
    }

    /// <summary>A float16 checkpoint trains through the cluster as in one process: every stage loads its layers upcast to float32
    /// (whether or not the submitted spec asks for it: the node agent opens a training stage at float32), so submit --train saves the
    /// same float32 weights as train, with config.json's torch_dtype "float32".</summary>
    [Fact]
    public async Task Submit_train_on_a_float16_checkpoint_saves_the_float32_weights_train_saves()
    {
        string dir = Path.Combine(_dir, "gpt2-f16");
        Assert.Equal(0, await Cli.MainAsync(["export-demo", "--family", "gpt2", "--out", dir, "--layers", $"{Blocks}", "--hidden", "32", "--heads", "4",
            "--ffn", "48", "--vocab", $"{Vocab}", "--max-positions", "64", "--seed", "21", "--dtype", "f16"]));
        using (var stored = SafetensorsCheckpoint.Open(dir)) Assert.All(stored.Names, n => Assert.Equal("F16", stored.Entry(n).Dtype));
        string data = Data();
        var cluster = await TwoWorkers(dir);
        var (a, b, client, contact) = (cluster.A, cluster.B, cluster.Client, cluster.Contact);
        string[] common = ["--model", dir, "--data", data, "--batch", $"{Batch}", "--steps", "2", "--optimizer", "adamw", "--lr", "0.01",
            "--micro-batches", "2", "--clip-norm", "1"];
        string trained = Path.Combine(_dir, "f16-train-saved"), submitted = Path.Combine(_dir, "f16-submit-saved");
        Assert.Equal(0, await Cli.MainAsync(["train", .. common, "--window", "2", "--swap", "1", "--save", trained]));
        Assert.Equal(0, await Cli.MainAsync(["submit", "--contact", contact, "--train", .. common, "--window", "1", "--swap", "1", "--save", submitted]));
        // A job whose spec leaves the load dtype out (as stored) trains the same: the stages load float32 all the same.
        var s = new TrainingSettings(new OptimizerSettings(OptimizerKind.AdamW, 0.01), LrSchedule.Constant, ClipNorm: 1, MicroBatches: 2);
        var job = TrainJob(dir, "f16-as-stored", data, s, steps: 2);
        Assert.Null(job.Model.LoadDtype);
        var answer = Assert.IsType<JobTrained>((await Run(client, job)).Answer);
        Assert.Null(answer.Failure);

        Assert.Equal("float32", Gpt2Config.Read(submitted).TorchDtype);
        using var want = SafetensorsCheckpoint.Open(trained);
        using var got = SafetensorsCheckpoint.Open(submitted);
        Assert.Equal(want.Names, got.Names);
        var gathered = answer.Weights.ToDictionary(w => w.Name, w => w.Tensor);
        foreach (var name in want.Names)
        {
            Assert.Equal(("F32", "F32"), (want.Entry(name).Dtype, got.Entry(name).Dtype));
            using var w = want.Read(name);
            using var g = got.Read(name);
            Assert.True(TensorBytes.Raw(w).AsSpan().SequenceEqual(TensorBytes.Raw(g)), $"{name}: submit --train saved other weights than train");
            Assert.True(TensorBytes.Raw(w).AsSpan().SequenceEqual(gathered[name].Bytes.AsSpan()), $"{name}: the as-stored job trained other weights");
        }
        await DevicesFree(a, b);
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var h in Enumerable.Reverse(_hosts)) await h.DisposeAsync();
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }
}
