using System.Text.Json.Nodes;
using Akka.TestKit.Xunit2;
using Superpipeline.Contracts;
using Superpipeline.Engine;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;
using Superpipeline.Engine.Training;
using Superpipeline.Workers;
using Xunit;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary><c>train --window auto</c> (<see cref="TrainingPlanner"/>): the planned window trains real steps within the device and
/// within the step need it predicts (<see cref="TrainingMemory"/>), on devices that hold exactly that need; it trains the same
/// bits as the window given and as resident training; a device too small is refused in one line before any work; a bigger
/// device never gets a smaller window, and one that holds the whole model with its training state trains resident.</summary>
[Collection(TensorCountCollection.Name)]
public sealed class TrainingPlanSpec() : TestKit(WorkerConfig.Load()), IDisposable
{
    readonly string root = Directory.CreateTempSubdirectory("training-plan-spec-").FullName;

    const int Batch = 4, Seq = 8;

    /// <summary>GPT-2 with four blocks: six layers (the embedding, the blocks, the head).</summary>
    static readonly Gpt2Config Config = TrainingSpec.SmallGpt2() with { Layers = 4 };

    string Export() => TrainingSpec.ExportGpt2(root, Config, "gpt2-4");

    static LayeredModel Model(string dir) => ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, Batch, Seq, 0));

    /// <summary>A device of <paramref name="capacity"/> bytes as the cost model sees it (a fixed link and compute rate: the window
    /// depends on the capacity alone, k' on these).</summary>
    static DeviceCost Cost(long capacity) => new("sim:0", capacity, LinkBytesPerSecond: 4e9, FlopsPerSecond: 2e10);

    static TrainingSettings Settings(int micro, int steps = 3) => new(new OptimizerSettings(OptimizerKind.Sgd, 0.05, Momentum: 0.9),
        new LrSchedule(ScheduleKind.Cosine, Warmup: 1, Steps: steps), ClipNorm: 1.0, MicroBatches: micro);

    string WriteNpy(string name, Tensor t)
    {
        string path = Path.Combine(root, name);
        Npy.Write(path, TensorPayloads.From(t));
        return path;
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(2, 2)]
    [InlineData(3, 2)]
    [InlineData(5, 1)]
    [InlineData(6, 2)]
    public async Task The_planned_window_trains_on_a_device_of_exactly_its_need_within_the_device_and_the_predicted_peak(int fits, int micro)
    {
        string dir = Export();
        var model = Model(dir);
        int n = model.Layers.Count;
        long capacity = TrainingMemory.Of(model, micro, fits).PeakBytes; // not a byte to spare: the need must be an upper bound
        var plan = TrainingPlanner.Choose(model, micro, Cost(capacity));
        Assert.Equal(fits, plan.Window);
        Assert.Equal(fits == n ? null : fits, plan.Policy.Window);
        Assert.True(plan.PeakBytes <= capacity);
        using var data = TrainingSpec.Data(Batch * 2, Seq, Config.Vocab);
        using var rig = new TrainingRig(Sys, dir, Batch, Seq, capacity);
        var session = await rig.Session(OffloadPolicy.For(plan.Policy, n), Settings(micro));
        for (int step = 0; step < 2; step++)
        {
            using var ids = TrainingSpec.Rows(data, step, Batch);
            var r = await session.StepAsync(step, ids); // a device out-of-memory would throw here
            Assert.True(r.PeakDeviceBytes <= capacity, $"step {step + 1}: peak {r.PeakDeviceBytes:N0} > device {capacity:N0}");
            Assert.True(r.PeakDeviceBytes <= plan.PeakBytes, $"step {step + 1}: peak {r.PeakDeviceBytes:N0} > predicted {plan.PeakBytes:N0}");
            Assert.True(r.PeakDeviceBytes >= model.Layers.Max(l => l.Bytes), "the peak holds the largest layer's weights");
        }
        Assert.Equal(0, rig.Device.Memory.Reserved);
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(3, 2)]
    [InlineData(6, 2)]
    public async Task A_classifiers_planned_window_trains_on_a_device_of_exactly_its_need(int fits, int micro)
    {
        // A ViT classifier: pixels saved for layer 0's backward, labels of one id per row, a small head.
        string dir = Path.Combine(root, "vit-4");
        VitExport.Write(dir, new VitConfig(Hidden: 32, Layers: 4, Heads: 4, Intermediate: 48, ImageSize: 16, PatchSize: 8, Labels: 5), seed: 17,
            classifier: true);
        var model = ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, Batch, 0, 0));
        int n = model.Layers.Count;
        long capacity = TrainingMemory.Of(model, micro, fits).PeakBytes;
        var plan = TrainingPlanner.Choose(model, micro, Cost(capacity));
        Assert.Equal(fits, plan.Window);
        using var g = new Generator(7);
        using var pixels = randn([Batch, 3, 16, 16], generator: g);
        using var labels = randint(5, [Batch], dtype: ScalarType.Int64, generator: g);
        using var rig = new TrainingRig(Sys, dir, Batch, 0, capacity);
        var session = await rig.Session(OffloadPolicy.For(plan.Policy, n), Settings(micro));
        for (int step = 0; step < 2; step++)
        {
            var r = await session.StepAsync(step, pixels, labels);
            Assert.True(r.PeakDeviceBytes <= plan.PeakBytes, $"step {step + 1}: peak {r.PeakDeviceBytes:N0} > predicted {plan.PeakBytes:N0}");
        }
        Assert.Equal(0, rig.Device.Memory.Reserved);
    }

    [Fact]
    public async Task Window_auto_trains_the_same_bits_as_its_window_given_and_as_resident_training()
    {
        string dir = Export();
        var model = Model(dir);
        const int micro = 2, steps = 3;
        var settings = Settings(micro, steps);
        using var data = TrainingSpec.Data(12, Seq, Config.Vocab);
        string npy = WriteNpy("ids.npy", data);
        long capacity = TrainingMemory.Of(model, micro, 3).PeakBytes + 1000; // room for three layers, not four
        var device = new DeviceSpec(DeviceKind.Sim, capacity, null);
        TrainingRunOptions Options(PolicySpec policy, string save) => new(dir, npy, Batch, steps, settings, policy, device) { SaveDir = save };
        string autoDir = Path.Combine(root, "auto"), givenDir = Path.Combine(root, "given");

        var auto = await TrainingRun.RunAsync(Options(PolicySpec.Planned, autoDir), _ => { }, CancellationToken.None);
        Assert.Null(auto.Failure);
        Assert.NotNull(auto.Plan);
        Assert.Equal(3, auto.Window);
        Assert.Equal((auto.Plan!.Window, auto.Plan.Swap), (auto.Window, auto.Swap));
        Assert.All(auto.Steps, s => Assert.True(s.PeakDeviceBytes <= auto.Plan!.PeakBytes, $"peak {s.PeakDeviceBytes:N0} > {auto.Plan.PeakBytes:N0}"));
        var given = await TrainingRun.RunAsync(Options(new PolicySpec(auto.Window, auto.Swap), givenDir), _ => { }, CancellationToken.None);
        Assert.Null(given.Plan);

        var (losses, expected) = TrainingSpec.Resident(model, dir, settings, data, steps);
        foreach (var (run, what) in new[] { (auto, "window auto"), (given, $"window {auto.Window}, swap {auto.Swap} given") })
        {
            Assert.Equal(steps, run.Steps.Count);
            for (int i = 0; i < steps; i++)
                Assert.True(losses[i].SequenceEqual(run.Steps[i].MicroBatchLosses), $"{what}: step {i + 1}'s losses differ from resident training's");
        }
        using var a = SafetensorsFile.Open(Path.Combine(autoDir, SafetensorsCheckpoint.SingleFile));
        using var b = SafetensorsFile.Open(Path.Combine(givenDir, SafetensorsCheckpoint.SingleFile));
        Assert.Equal(a.Names, b.Names);
        foreach (var (name, t) in expected)
        {
            using var x = a.Read(name);
            using var y = b.Read(name);
            Assert.True(TensorBytes.Raw(t).AsSpan().SequenceEqual(TensorBytes.Raw(x)), $"window auto: {name} differs from resident training's");
            Assert.True(x.bytes.SequenceEqual(y.bytes), $"{name}: window auto and the window given differ");
        }
    }

    [Fact]
    public void A_device_too_small_is_refused_in_one_line_before_any_step_and_a_device_with_room_reports_its_plan()
    {
        string dir = Export();
        var model = Model(dir);
        long need = TrainingMemory.Of(model, 1, 1).PeakBytes;
        using var data = TrainingSpec.Data(8, Seq, Config.Vocab);
        string npy = WriteNpy("ids.npy", data), saved = Path.Combine(root, "saved"), report = Path.Combine(root, "report.json");
        string[] common = ["train", "--model", dir, "--data", npy, "--batch", $"{Batch}", "--steps", "2", "--optimizer", "sgd", "--lr", "0.05"];

        var (code, stdout, stderr) = CliProcess.Run([.. common, "--window", "auto", "--device-memory", $"{need - 1}", "--save", saved]);
        Assert.Equal(1, code);
        Assert.Single(stderr.Trim().Split('\n'));
        Assert.StartsWith($"superpipeline: --device-memory {need - 1:N0} bytes is below the {need:N0} bytes training needs at window 1", stderr.Trim());
        Assert.DoesNotContain("step 1:", stdout);
        Assert.False(Directory.Exists(saved), "nothing ran, nothing was saved");

        (code, _, stderr) = CliProcess.Run([.. common, "--window", "2", "--resident-layers", "auto"]);
        Assert.Equal(1, code);
        Assert.StartsWith("superpipeline: --resident-layers auto is not planned for training", stderr.Trim());

        long room = TrainingMemory.Of(model, 1, 2).PeakBytes; // two layers' need, not three's
        (code, stdout, stderr) = CliProcess.Run([.. common, "--window", "auto", "--device-memory", $"{room}", "--report", report]);
        Assert.True(code == 0, stderr);
        Assert.Contains("step 2:", stdout);
        Assert.Contains("planned: window 2 / swap ", stdout);
        Assert.True(stdout.IndexOf("planned: ", StringComparison.Ordinal) < stdout.IndexOf("step 1:", StringComparison.Ordinal), "the plan comes first");
        var json = JsonNode.Parse(File.ReadAllText(report))!;
        Assert.Equal(2, json["window"]!.GetValue<int>());
        var plan = json["plan"]!;
        Assert.Equal(2, plan["window"]!.GetValue<int>());
        Assert.Equal(json["swap"]!.GetValue<int>(), plan["swap"]!.GetValue<int>());
        Assert.Equal(room, plan["deviceBytes"]!.GetValue<long>());
        long predicted = plan["predictedPeakDeviceBytes"]!.GetValue<long>();
        Assert.InRange(json["peakDeviceBytes"]!.GetValue<long>(), 1, predicted);
        Assert.InRange(predicted, 1, room);
        Assert.True(plan["predictedStepSeconds"]!.GetValue<double>() > 0);
    }

    [Fact]
    public void A_bigger_device_never_gets_a_smaller_window_and_one_holding_the_model_with_its_training_state_trains_resident()
    {
        string dir = Export();
        var model = Model(dir);
        int n = model.Layers.Count;
        const int micro = 2;
        long smallest = TrainingMemory.Of(model, micro, 1).PeakBytes;
        var refused = Assert.Throws<FieldException>(() => TrainingPlanner.Choose(model, micro, Cost(smallest - 1)));
        Assert.Equal(FieldException.DeviceMemory, refused.Field);
        Assert.DoesNotContain('\n', refused.Message);

        // The whole model with its training state, by the tests' own bound (TrainingChecks): every weight and as many gradients,
        // every activation in flight, the largest recompute.
        long whole = TrainingChecks.PeakBound(ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, Batch / micro, Seq, 0)), n, micro);
        var windows = new List<int>();
        for (int i = 0; i <= 60; i++)
        {
            long capacity = smallest + (whole - smallest) * i / 60;
            var plan = TrainingPlanner.Choose(model, micro, Cost(capacity));
            Assert.True(plan.PeakBytes <= capacity, $"{capacity:N0}: the plan needs {plan.PeakBytes:N0}");
            Assert.True(plan.Window == n || TrainingMemory.Of(model, micro, plan.Window + 1).PeakBytes > capacity,
                $"{capacity:N0}: window {plan.Window} planned though {plan.Window + 1} fits");
            if (windows.Count > 0) Assert.True(plan.Window >= windows[^1], $"{capacity:N0}: window {plan.Window} after {windows[^1]} on a smaller device");
            windows.Add(plan.Window);
        }
        Assert.Equal(1, windows[0]);
        Assert.True(windows.Distinct().Count() >= 4, $"the sweep met only windows {string.Join(", ", windows.Distinct())}");
        var resident = TrainingPlanner.Choose(model, micro, Cost(whole));
        Assert.Equal(PolicySpec.Resident, resident.Policy);
        Assert.Equal(n, resident.Window);
    }

    public new void Dispose()
    {
        base.Dispose();
        try { Directory.Delete(root, recursive: true); } catch (IOException) { }
    }
}
