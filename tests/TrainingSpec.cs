using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Engine;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Training;
using Superpipeline.Contracts;
using Superpipeline.Workers;
using TorchSharp;
using TorchSharp.Modules;
using Xunit;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>A checkpoint's layer actors, a simulated device and its loader, and a <see cref="TrainingSession"/> over them. The
/// checkpoint loads as training loads it (<see cref="TrainingWeights.Spec"/>: F16/BF16 upcast to float32), or, with
/// <paramref name="asStored"/>, as inference does (each tensor in its stored dtype).</summary>
sealed class TrainingRig : IDisposable
{
    readonly ActorSystem _system;

    public TrainingRig(ActorSystem system, string checkpoint, int batch, int sequence, long capacity = 1L << 30, double? linkGBps = null,
        bool asStored = false)
    {
        _system = system;
        var stored = ModelCatalog.CheckpointSpec(checkpoint, batch, sequence, 0);
        Spec = asStored ? stored : TrainingWeights.Spec(stored);
        Model = ModelCatalog.Create(Spec);
        Device = new SimulatedDevice("sim:0", capacity, linkGBps);
        var tag = Guid.NewGuid().ToString("N")[..8];
        using (var weights = CheckpointWeights.For(Spec))
        {
            Layers = [.. Model.Layers.Select(l => system.ActorOf(LayerActor.Props(l, weights, pin: false), $"{tag}-layer-{l.Index}"))];
            foreach (var a in Layers) a.Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, TimeSpan.FromSeconds(30)).Wait(); // loaded
        }
        Loader = system.ActorOf(DeviceLoaderActor.Props(Device, TimeSpan.FromSeconds(30)), $"{tag}-sim-loader-0");
    }

    public ModelSpec Spec { get; }
    public LayeredModel Model { get; }
    public SimulatedDevice Device { get; }
    public IActorRef[] Layers { get; }
    public IActorRef Loader { get; }

    public async Task<TrainingSession> Session(OffloadPolicy policy, TrainingSettings settings)
    {
        var session = new TrainingSession(Loader, Model, Layers, policy, settings, TimeSpan.FromSeconds(60));
        await session.StartAsync();
        return session;
    }

    public OffloadPolicy Policy(int? window, int? swap = null) => OffloadPolicy.For(new PolicySpec(window, swap), Model.Layers.Count);

    public void Dispose()
    {
        foreach (var a in Layers) _system.Stop(a);
        _system.Stop(Loader);
        Device.Dispose();
    }
}

/// <summary>Training with offload against a plain resident TorchSharp loop (the model's layers as one autograd graph, torch.optim
/// over the state dict's parameters): every loss and every weight after several steps, for several (k, k'), SGD with momentum and
/// AdamW, clipping, the cosine schedule, micro-batches, GPT-2 (tied head) and Llama. All of it is bitwise: each layer's
/// recompute runs the same ops on the same values as the resident graph, autograd's per-layer backward is the resident one's,
/// gradients accumulate over micro-batches in the same order, the tied head's two contributions are one addition (commutative,
/// so its order cannot matter), the clip coefficient is libtorch's arithmetic on the same per-tensor norms in the same order,
/// and each layer's optimizer is torch.optim's own per-parameter update.</summary>
[Collection(TensorCountCollection.Name)]
public sealed class TrainingSpec() : TestKit(WorkerConfig.Load()), IDisposable
{
    readonly string root = Directory.CreateTempSubdirectory("training-spec-").FullName;

    internal static Gpt2Config SmallGpt2(bool tied = true) => new(Hidden: 32, Layers: 2, Heads: 4, MaxPositions: 16, Vocab: 61, Inner: 40,
        TieWordEmbeddings: tied);

    internal static LlamaConfig SmallLlama(bool tied = false) => new(Hidden: 32, Ffn: 48, Layers: 2, Heads: 4, KvHeads: 2, RmsNormEps: 1e-5,
        RopeTheta: 10000.0, Vocab: 61, MaxPositions: 64, TieWordEmbeddings: tied);

    internal static string ExportGpt2(string root, Gpt2Config config, string name = "gpt2")
    {
        string dir = Path.Combine(root, name);
        Gpt2Export.Write(dir, config, seed: 11);
        return dir;
    }

    string ExportLlama(LlamaConfig config, string name = "llama")
    {
        string dir = Path.Combine(root, name);
        LlamaExport.Write(dir, config, seed: 13);
        return dir;
    }

    /// <summary>Seeded token ids [rows, seq] in [0, vocab).</summary>
    internal static Tensor Data(int rows, int seq, long vocab, long seed = 5)
    {
        using var g = new Generator((ulong)seed);
        return randint(vocab, [rows, seq], dtype: ScalarType.Int64, generator: g);
    }

    internal static Tensor Rows(Tensor data, int step, int batch) => data.narrow(0, step * batch % data.shape[0], batch).contiguous();

    /// <summary>The plain resident loop: parameters from the checkpoint's state dict (a tied tensor once), each step the loss of
    /// each micro-batch (divided by their count) backpropagated through the whole model, clip_grad_norm_, torch.optim's step.
    /// A decoder's rows of <paramref name="data"/> are its labels too (the causal-LM loss); a classifier gives its
    /// <paramref name="labels"/> and <paramref name="loss"/>.</summary>
    internal static (List<float[]> Losses, Dictionary<string, Tensor> Weights) Resident(LayeredModel model, string checkpoint, TrainingSettings s,
        Tensor data, int steps, Tensor? labels = null, Func<Tensor, Tensor, Tensor>? loss = null)
    {
        using var ckpt = SafetensorsCheckpoint.Open(checkpoint);
        var order = ModelParameters.Distinct(model);
        var parameters = order.ToDictionary(p => p.Name, p => new Parameter(ckpt.Read(p.Name).to_type(ScalarType.Float32), true));
        var optimizer = s.Optimizer.Create(order.Select(p => parameters[p.Name]));
        var losses = new List<float[]>();
        int batch = (int)model.InputShape[0], micro = s.MicroBatches;
        for (int step = 0; step < steps; step++)
        {
            optimizer.zero_grad();
            using var rows = Rows(data, step, batch);
            using var rowLabels = labels is null ? null : Rows(labels, step, batch);
            var stepLosses = new float[micro];
            var parts = rows.chunk(micro, 0);
            var labelParts = rowLabels?.chunk(micro, 0) ?? parts;
            for (int m = 0; m < micro; m++)
            {
                using var scope = NewDisposeScope();
                var x = parts[m].contiguous();
                foreach (var layer in model.Layers)
                    x = layer.Forward(layer.Parameters.ToDictionary(p => p.Name, p => (Tensor)parameters[p.Name]), x);
                var l = (loss ?? TrainingLoss.CausalLm)(x, labelParts[m].contiguous());
                stepLosses[m] = l.item<float>();
                (micro > 1 ? l / micro : l).backward();
            }
            if (s.ClipNorm is { } max) nn.utils.clip_grad_norm_(order.Select(p => parameters[p.Name]), max);
            foreach (var group in optimizer.ParamGroups) group.LearningRate = s.Schedule.Rate(s.Optimizer.LearningRate, step);
            optimizer.step();
            losses.Add(stepLosses);
        }
        return (losses, parameters.ToDictionary(p => p.Key, p => (Tensor)p.Value.detach().clone()));
    }

    internal static async Task<(List<TrainingStepReport> Steps, Dictionary<string, Tensor> Weights)> Streamed(ActorSystem sys, string checkpoint, int batch,
        int seq, OffloadPolicy? policy, (int? K, int? Swap) window, TrainingSettings s, Tensor data, int steps, double? link = null)
    {
        using var rig = new TrainingRig(sys, checkpoint, batch, seq, linkGBps: link);
        var session = await rig.Session(policy ?? rig.Policy(window.K, window.Swap), s);
        var reports = new List<TrainingStepReport>();
        for (int step = 0; step < steps; step++)
        {
            using var ids = Rows(data, step, batch);
            reports.Add(await session.StepAsync(step, ids));
        }
        var weights = (await session.WeightsAsync()).ToDictionary(w => w.Name, w => w.Tensor);
        Assert.Equal(0, rig.Device.Memory.Reserved); // every pass freed every device byte
        return (reports, weights);
    }

    Task<(List<TrainingStepReport> Steps, Dictionary<string, Tensor> Weights)> Streamed(string checkpoint, int batch, int seq,
        OffloadPolicy? policy, (int? K, int? Swap) window, TrainingSettings s, Tensor data, int steps, double? link = null) =>
        Streamed(Sys, checkpoint, batch, seq, policy, window, s, data, steps, link);

    internal static void AssertSame(List<float[]> expectedLosses, Dictionary<string, Tensor> expected, List<TrainingStepReport> steps,
        Dictionary<string, Tensor> actual, string what)
    {
        Assert.Equal(expectedLosses.Count, steps.Count);
        for (int i = 0; i < steps.Count; i++)
            Assert.True(expectedLosses[i].SequenceEqual(steps[i].MicroBatchLosses),
                $"{what}: step {i + 1} losses {string.Join(", ", steps[i].MicroBatchLosses)}, resident {string.Join(", ", expectedLosses[i])}");
        Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
        foreach (var (name, t) in expected)
        {
            bool same = TensorBytes.Raw(t).AsSpan().SequenceEqual(TensorBytes.Raw(actual[name]));
            Assert.True(same, $"{what}: {name} differs from the resident loop's by up to {(t - actual[name]).abs().max().item<float>()}");
        }
    }

    public static TheoryData<string, string, int, int, int> Cases() => new()
    {
        // family, optimizer, k, k', micro-batches
        { "gpt2", "sgd", 1, 1, 1 }, { "gpt2", "sgd", 2, 1, 2 }, { "gpt2", "adamw", 3, 2, 1 }, { "gpt2", "adamw", 4, 4, 2 },
        { "llama", "sgd", 1, 1, 2 }, { "llama", "adamw", 2, 2, 1 }, { "llama", "adamw", 3, 1, 2 },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Every_loss_and_weight_equals_the_resident_loop_bit_for_bit(string family, string optimizer, int k, int swap, int micro)
    {
        string dir = family == "gpt2" ? ExportGpt2(root, SmallGpt2()) : ExportLlama(SmallLlama());
        const int batch = 4, seq = 8, steps = 4;
        var s = new TrainingSettings(
            optimizer == "sgd" ? new OptimizerSettings(OptimizerKind.Sgd, 0.05, Momentum: 0.9, WeightDecay: 0.01)
                : new OptimizerSettings(OptimizerKind.AdamW, 0.01, WeightDecay: 0.1),
            new LrSchedule(ScheduleKind.Cosine, Warmup: 1, Steps: steps), ClipNorm: 1.0, MicroBatches: micro);
        using var data = Data(12, seq, 61);
        var model = ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, batch, seq, 0));
        var (losses, expected) = Resident(model, dir, s, data, steps);
        var (reports, actual) = await Streamed(dir, batch, seq, null, (k, swap), s, data, steps);
        AssertSame(losses, expected, reports, actual, $"{family} {optimizer} k={k} k'={swap} micro={micro}");
        Assert.All(reports, r => Assert.NotNull(r.GradNorm));
        Assert.Equal(0.0, reports[0].LearningRate); // the cosine schedule's warm-up starts at 0, as transformers' does
    }

    [Fact]
    public async Task Resident_window_all_and_an_emulated_link_train_the_same_bits_without_clipping()
    {
        string dir = ExportGpt2(root, SmallGpt2());
        const int batch = 2, seq = 8, steps = 3;
        var s = new TrainingSettings(new OptimizerSettings(OptimizerKind.Sgd, 0.05, Momentum: 0.9), LrSchedule.Constant);
        using var data = Data(6, seq, 61);
        var model = ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, batch, seq, 0));
        var (losses, expected) = Resident(model, dir, s, data, steps);
        var (all, allWeights) = await Streamed(dir, batch, seq, OffloadPolicy.For(new PolicySpec(null, null), model.Layers.Count), default, s, data, steps);
        AssertSame(losses, expected, all, allWeights, "window all");
        // The backward pass takes the weights the forward pass left on the device (pinned: every layer under window all) instead
        // of loading them again: a step moves each layer the forward pass ran once less than at k = k' = 1, the same bits.
        var (single, singleWeights) = await Streamed(dir, batch, seq, null, (1, 1), s, data, steps);
        AssertSame(losses, expected, single, singleWeights, "k = k' = 1");
        long forwardLayers = model.Layers.SkipLast(1).Sum(l => l.Bytes); // the head runs in the backward pass only
        Assert.All(Enumerable.Range(0, steps), i => Assert.Equal(single[i].BytesTransferred - forwardLayers, all[i].BytesTransferred));
        // With a link the device's weights share the host tensors' storage: the optimizer writes only its own master copy.
        var (linked, linkedWeights) = await Streamed(dir, batch, seq, null, (2, 1), s, data, steps, link: 1000);
        AssertSame(losses, expected, linked, linkedWeights, "emulated link");
        Assert.All(all, r => Assert.Null(r.GradNorm));
    }

    public new void Dispose()
    {
        base.Dispose();
        try { Directory.Delete(root, recursive: true); } catch (IOException) { }
    }
}
