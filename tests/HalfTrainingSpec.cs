using System.Text.Json;
using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Contracts;
using Superpipeline.Engine;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Training;
using Superpipeline.Workers;
using Xunit;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>Training a float16 or bfloat16 checkpoint, as a PyTorch user expects (from_pretrained loads it in float32, a plain loop
/// trains float32 parameters): the layer actors read each stored tensor upcast to float32 (exact), so every loss and weight equals
/// a resident TorchSharp loop over the same checkpoint upcast to float32, bit for bit, under any (k, k'); the host weights, the
/// device's and the saved checkpoint are float32 (config.json torch_dtype "float32"), run loads it, and a run resumed from it goes
/// on exactly as the uninterrupted one.</summary>
[Collection(TensorCountCollection.Name)]
public sealed class HalfTrainingSpec() : TestKit(WorkerConfig.Load()), IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("half-training-").FullName;

    /// <summary>export-demo of a small GPT-2 (tied head) or Llama (grouped heads) stored as <paramref name="dtype"/> (f16 or bf16).</summary>
    async Task<string> Export(string family, string dtype, int vocab = 61)
    {
        string dir = Path.Combine(_root, $"{family}-{dtype}-{vocab}");
        string[] shape = family == "gpt2"
            ? ["--heads", "4", "--ffn", "40", "--max-positions", "16"]
            : ["--heads", "4", "--kv-heads", "2", "--ffn", "48", "--max-positions", "64"];
        var (code, error) = await TrainingResumeSpec.Cli(["export-demo", "--family", family, "--out", dir, "--layers", "2", "--hidden", "32", .. shape,
            "--vocab", $"{vocab}", "--seed", "11", "--dtype", dtype]);
        Assert.True(code == 0, error);
        return dir;
    }

    static IReadOnlyList<string> StoredDtypes(string dir)
    {
        using var ckpt = SafetensorsCheckpoint.Open(dir);
        return [.. ckpt.Names.Select(n => ckpt.Entry(n).Dtype).Distinct()];
    }

    [Theory]
    [InlineData("gpt2", "f16", "F16")]
    [InlineData("gpt2", "bf16", "BF16")]
    [InlineData("llama", "f16", "F16")]
    [InlineData("llama", "bf16", "BF16")]
    public async Task A_half_checkpoint_trains_upcast_to_float32_bit_for_bit_as_the_resident_loop_under_two_windows(string family, string dtype,
        string stored)
    {
        string dir = await Export(family, dtype);
        Assert.Equal([stored], StoredDtypes(dir)); // the checkpoint really is narrow
        const int batch = 4, seq = 8, steps = 3;
        using var data = TrainingSpec.Data(12, seq, 61);
        var model = ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, batch, seq, 0));
        foreach (var (k, swap, micro) in new[] { (1, 1, 1), (3, 2, 2) })
        {
            var s = new TrainingSettings(new OptimizerSettings(OptimizerKind.AdamW, 0.01, WeightDecay: 0.1), new LrSchedule(ScheduleKind.Cosine, 1, steps),
                ClipNorm: 1.0, MicroBatches: micro);
            // The reference reads each stored tensor and upcasts it itself (ckpt.Read(name).to_type(Float32)), as from_pretrained does.
            var (losses, expected) = TrainingSpec.Resident(model, dir, s, data, steps);
            var (reports, actual) = await TrainingSpec.Streamed(Sys, dir, batch, seq, null, (k, swap), s, data, steps);
            TrainingSpec.AssertSame(losses, expected, reports, actual, $"{family} {dtype} k={k} k'={swap} micro={micro}");
            Assert.All(actual.Values, t => Assert.Equal(ScalarType.Float32, t.dtype));

            // Peak device bytes within the window's bound, computed on the float32 layers the device holds.
            long bound = TrainingChecks.PeakBound(ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, batch / micro, seq, 0)), k, micro);
            long window = model.Layers.Select(l => l.Parameters.Sum(p => p.Shape.Aggregate(4L, (a, d) => a * d))).OrderDescending().Take(k).Sum();
            Assert.All(reports, r => Assert.InRange(r.PeakDeviceBytes, window, bound));
        }
    }

    /// <summary>The layer actors hold float32 (not the stored halves), and every byte figure says so: the forward pass moves the
    /// float32 weights over the link, and a training stage's host bytes (the node's budget) are float32 weights, master copy,
    /// gradients and AdamW's two moments: five float32 copies of every layer's parameters.</summary>
    [Fact]
    public async Task Host_weights_link_bytes_and_a_stage_s_host_budget_count_the_float32_tensors_held()
    {
        string dir = await Export("gpt2", "bf16");
        const int batch = 2, seq = 8;
        using var rig = new TrainingRig(Sys, dir, batch, seq);
        long float32 = rig.Model.Layers.Sum(l => l.Parameters.Sum(p => p.Shape.Aggregate(4L, (a, d) => a * d))); // each layer's own copy
        long held = 0;
        foreach (var a in rig.Layers)
        {
            var w = await a.Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, TimeSpan.FromSeconds(30));
            Assert.All(w.Tensors, t => Assert.Equal(ScalarType.Float32, t.Tensor.dtype));
            held += w.Tensors.Sum(t => t.Tensor.NumberOfElements * t.Tensor.ElementSize);
        }
        Assert.Equal(float32, held);
        var adamw = new OptimizerSettings(OptimizerKind.AdamW, 1e-3);
        Assert.Equal(5 * float32, TrainingStageActor.HostBytes(rig.Spec, rig.Model, adamw));
        Assert.Equal(float32, DiskTier.StoredLayerBytes(rig.Spec, rig.Model).Sum());
        Assert.Equal(float32 / 2, DiskTier.StoredLayerBytes(rig.Spec with { LoadDtype = null }, rig.Model).Sum()); // inference: as stored

        // One step moves exactly what the same step of the float32 export moves (the link carries float32, not the stored halves).
        string f32 = Path.Combine(_root, "gpt2-f32");
        Gpt2Export.Write(f32, TrainingSpec.SmallGpt2(), seed: 11);
        using var wide = new TrainingRig(Sys, f32, batch, seq);
        using var ids = TrainingSpec.Data(batch, seq, 61);
        var settings = new TrainingSettings(adamw, LrSchedule.Constant);
        var report = await (await rig.Session(rig.Policy(1, 1), settings)).StepAsync(0, ids);
        var reference = await (await wide.Session(wide.Policy(1, 1), settings)).StepAsync(0, ids);
        Assert.Equal(reference.BytesTransferred, report.BytesTransferred);
        Assert.True(report.BytesTransferred > float32, $"{report.BytesTransferred:N0} bytes moved, weights {float32:N0}");
        Assert.Equal(reference.PeakDeviceBytes, report.PeakDeviceBytes);
        Assert.Equal(reference.PeakHostBytes, report.PeakHostBytes);
        Assert.Equal(0, rig.Device.Memory.Reserved);
    }

    [Fact]
    public async Task Train_saves_a_float32_checkpoint_that_run_loads_and_that_resumes_exactly()
    {
        string model = await Export("gpt2", "f16", vocab: 300);
        string whole = Path.Combine(_root, "whole"), part = Path.Combine(_root, "part"), resumed = Path.Combine(_root, "resumed");
        string report = Path.Combine(_root, "report.json");
        string[] Train(params string[] extra) =>
            ["train", "--model", model, "--data", TrainingResumeSpec.Corpus, "--seq-len", "16", "--batch", "4", "--micro-batches", "2",
                "--optimizer", "adamw", "--lr", "3e-3", "--clip-norm", "1", "--device-memory", "64MiB", .. extra];
        var (code, error) = await TrainingResumeSpec.Cli(Train("--window", "2", "--swap", "1", "--steps", "4", "--save", whole, "--report", report));
        Assert.True(code == 0, error);
        (code, error) = await TrainingResumeSpec.Cli(Train("--window", "2", "--swap", "1", "--steps", "2", "--save", part));
        Assert.True(code == 0, error);

        Assert.Equal(["F32"], StoredDtypes(whole));
        Assert.Equal(Gpt2Config.Read(model) with { TorchDtype = "float32" }, Gpt2Config.Read(whole)); // only the dtype changed
        using (var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(whole, TrainedCheckpoint.ConfigFile))))
            Assert.Equal("float32", config.RootElement.GetProperty("torch_dtype").GetString());
        using (var json = JsonDocument.Parse(File.ReadAllText(report)))
            Assert.Equal("float16", json.RootElement.GetProperty("upcastFrom").GetString());

        // Resumed from the float32 checkpoint under another window: the same run, bit for bit.
        (code, error) = await TrainingResumeSpec.Cli(Train("--window", "1", "--swap", "1", "--steps", "4", "--resume", part, "--save", resumed));
        Assert.True(code == 0, error);
        var uninterrupted = JsonSerializer.Deserialize<JsonElement>(File.ReadAllText(report)).GetProperty("history").EnumerateArray()
            .Select(h => h.GetProperty("loss").GetDouble()).ToArray();
        var state = TrainingCheckpoint.ReadState(resumed);
        Assert.Equal(uninterrupted, state.History.Select(h => h.Loss));
        using (var a = SafetensorsCheckpoint.Open(whole))
        using (var b = SafetensorsCheckpoint.Open(resumed))
            foreach (var name in a.Names)
            {
                using var x = a.Read(name);
                using var y = b.Read(name);
                Assert.True(TensorBytes.Raw(x).AsSpan().SequenceEqual(TensorBytes.Raw(y)), $"{name} differs from the uninterrupted run's");
            }
        Assert.Equal(File.ReadAllBytes(Path.Combine(whole, TrainingCheckpoint.OptimizerFile)),
            File.ReadAllBytes(Path.Combine(resumed, TrainingCheckpoint.OptimizerFile)));

        string output = Path.Combine(_root, "out.npy");
        (code, error) = await TrainingResumeSpec.Cli("run", "--model", whole, "--seq-len", "6", "--batch", "2", "--window", "1", "--output", output);
        Assert.True(code == 0, error);
        Assert.Equal(2, Npy.Read(output).Shape[0]);
    }

    [Fact]
    public void A_float32_source_s_config_is_copied_byte_for_byte_and_a_half_one_s_says_float32()
    {
        string f32 = Path.Combine(_root, "f32"), f16 = Path.Combine(_root, "f16");
        Gpt2Export.Write(f32, TrainingSpec.SmallGpt2(), seed: 3);
        Gpt2Export.Write(f16, TrainingSpec.SmallGpt2() with { TorchDtype = "float16" }, seed: 3);
        using var w = ones(2, 2);
        foreach (var (source, name) in new[] { (f32, "from-f32"), (f16, "from-f16") })
            TrainedCheckpoint.Write(Path.Combine(_root, name), source, [("transformer.wte.weight", w)]);
        Assert.Equal(File.ReadAllBytes(Path.Combine(f32, "config.json")), File.ReadAllBytes(Path.Combine(_root, "from-f32", "config.json")));
        // The rewritten config is the float32 export's, byte for byte: transformers' layout, keys sorted, indented by 2.
        Assert.Equal(File.ReadAllText(Path.Combine(f32, "config.json")), File.ReadAllText(Path.Combine(_root, "from-f16", "config.json")));
    }

    [Fact]
    public void A_load_dtype_other_than_float32_is_refused_naming_it()
    {
        string dir = Path.Combine(_root, "f32");
        Gpt2Export.Write(dir, TrainingSpec.SmallGpt2(), seed: 3);
        var spec = ModelCatalog.CheckpointSpec(dir, 1, 8, 0) with { LoadDtype = "float16" };
        var e = Assert.Throws<ArgumentException>(() => ModelCatalog.Create(spec));
        Assert.Contains("load dtype \"float16\"", e.Message);
        Assert.True(ModelCatalog.IsRefusal(e));
    }

    public new void Dispose()
    {
        base.Dispose();
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { }
    }
}
