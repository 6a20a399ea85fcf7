using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Training;
using Superpipeline.Contracts;
using Superpipeline.Workers;
using TorchSharp;
using Xunit;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>Training's gradients against finite differences of an independent float64 forward, its device peak against the
/// bound the window sets, its refusals and failures (the weights of the last good step kept, every device byte freed), and a
/// kept pinned layer dropped once the optimizer changed its weights.</summary>
[Collection(TensorCountCollection.Name)]
public sealed class TrainingChecksSpec() : TestKit(WorkerConfig.Load()), IDisposable
{
    readonly string root = Directory.CreateTempSubdirectory("training-checks-").FullName;

    // ---- an independent GPT-2 forward in float64: modeling_gpt2.py's arithmetic over the state dict, no autograd ----

    static Tensor Ln(Tensor x, Tensor w, Tensor b, double eps)
    {
        var mean = x.mean([-1], keepdim: true);
        var centred = x - mean;
        return centred / (centred.pow(2).mean([-1], keepdim: true) + eps).sqrt() * w + b;
    }

    static double Loss64(Dictionary<string, Tensor> w, Tensor ids, Gpt2Config c)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        long b = ids.shape[0], t = ids.shape[1];
        int heads = c.Heads, d = c.HeadDim, hidden = c.Hidden;
        var x = w["transformer.wte.weight"].index_select(0, ids.reshape(-1)).reshape(b, t, hidden) + w["transformer.wpe.weight"].narrow(0, 0, t);
        var future = ones(t, t, dtype: ScalarType.Bool).triu(1);
        for (int i = 0; i < c.Layers; i++)
        {
            string p = $"transformer.h.{i}.";
            var h = Ln(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], c.LayerNormEps);
            var qkv = h.matmul(w[p + "attn.c_attn.weight"]) + w[p + "attn.c_attn.bias"];
            Tensor Heads(int part) => qkv.narrow(-1, part * hidden, hidden).reshape(b, t, heads, d).permute(0, 2, 1, 3);
            var scores = Heads(0).matmul(Heads(1).transpose(-1, -2)) / Math.Sqrt(d);
            var attn = scores.masked_fill(future, double.NegativeInfinity).softmax(-1).matmul(Heads(2));
            x = x + attn.permute(0, 2, 1, 3).reshape(b, t, hidden).matmul(w[p + "attn.c_proj.weight"]) + w[p + "attn.c_proj.bias"];
            h = Ln(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], c.LayerNormEps);
            var f = h.matmul(w[p + "mlp.c_fc.weight"]) + w[p + "mlp.c_fc.bias"];
            f = 0.5 * f * (1 + (Math.Sqrt(2 / Math.PI) * (f + 0.044715 * f.pow(3))).tanh());
            x = x + f.matmul(w[p + "mlp.c_proj.weight"]) + w[p + "mlp.c_proj.bias"];
        }
        var logits = Ln(x, w["transformer.ln_f.weight"], w["transformer.ln_f.bias"], c.LayerNormEps).matmul(w["transformer.wte.weight"].t());
        var logp = logits.narrow(1, 0, t - 1).log_softmax(-1);
        var labels = ids.narrow(1, 1, t - 1);
        return -logp.gather(-1, labels.unsqueeze(-1)).mean().item<double>();
    }

    [Fact]
    public async Task One_sgd_step_divided_by_the_learning_rate_is_the_finite_difference_gradient_of_every_tensor()
    {
        var config = TrainingSpec.SmallGpt2();
        string dir = TrainingSpec.ExportGpt2(root, config);
        const int batch = 2, seq = 8;
        const double lr = 1.0;
        using var data = TrainingSpec.Data(batch, seq, config.Vocab);
        using var rig = new TrainingRig(Sys, dir, batch, seq);
        var session = await rig.Session(rig.Policy(2, 1), new TrainingSettings(new OptimizerSettings(OptimizerKind.Sgd, lr), LrSchedule.Constant));
        var before = (await session.WeightsAsync()).ToDictionary(w => w.Name, w => w.Tensor);
        await session.StepAsync(0, data);
        var after = (await session.WeightsAsync()).ToDictionary(w => w.Name, w => w.Tensor);

        var worst = TrainingChecks.WorstFiniteDifference(before, after, lr, w => Loss64(w, data, config));
        Assert.True(worst.Error < 2e-3, $"worst: {worst.Where} (relative error {worst.Error:G3})");
    }

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(2, 1, 2)]
    [InlineData(3, 3, 2)]
    public async Task Peak_device_bytes_stay_within_the_k_largest_layers_their_gradients_and_the_activations_in_flight(int k, int swap, int micro)
    {
        var config = TrainingSpec.SmallGpt2() with { Layers = 4 };
        string dir = TrainingSpec.ExportGpt2(root, config, "gpt2-4");
        const int batch = 4, seq = 8;
        using var data = TrainingSpec.Data(batch * 2, seq, config.Vocab);
        using var rig = new TrainingRig(Sys, dir, batch, seq);
        var session = await rig.Session(rig.Policy(k, swap),
            new TrainingSettings(new OptimizerSettings(OptimizerKind.AdamW, 1e-3), LrSchedule.Constant, MicroBatches: micro));
        var model = ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, batch / micro, seq, 0));
        long bound = TrainingChecks.PeakBound(model, k, micro);
        for (int step = 0; step < 2; step++)
        {
            using var ids = TrainingSpec.Rows(data, step, batch);
            var r = await session.StepAsync(step, ids);
            Assert.True(r.PeakDeviceBytes <= bound, $"step {step + 1}: peak {r.PeakDeviceBytes:N0} > bound {bound:N0}");
            Assert.True(r.PeakDeviceBytes >= model.Layers.Select(l => l.Bytes).OrderDescending().Take(k).Sum(), "the peak holds the window's weights");
        }
        Assert.True(bound < 2 * model.Bytes || k > 1, $"with k = 1 the bound ({bound:N0}) is below resident training's weights and gradients");
        Assert.Equal(0, rig.Device.Memory.Reserved);
    }

    [Fact]
    public async Task Bad_labels_are_refused_in_one_line_and_leave_the_weights_and_the_device_as_they_were()
    {
        var config = TrainingSpec.SmallGpt2();
        string dir = TrainingSpec.ExportGpt2(root, config);
        using var rig = new TrainingRig(Sys, dir, 2, 8);
        var session = await rig.Session(rig.Policy(2, 1), new TrainingSettings(new OptimizerSettings(OptimizerKind.Sgd, 0.1), LrSchedule.Constant));
        var before = await session.WeightsAsync();
        using var ids = TrainingSpec.Data(2, 8, config.Vocab);
        ids[1, 3] = tensor(config.Vocab);
        var outside = await Assert.ThrowsAsync<FieldException>(() => session.StepAsync(0, ids));
        Assert.Equal(TrainingFields.Labels, outside.Field);
        Assert.Contains($"token id {config.Vocab} at row 1, position 3", outside.Message);
        using var shorter = TrainingSpec.Data(2, 7, config.Vocab);
        var shape = await Assert.ThrowsAsync<FieldException>(() => session.StepAsync(0, shorter));
        Assert.Contains("must be [2, 8]", shape.Message);
        using var flat = TrainingSpec.Data(1, 16, config.Vocab).view(-1);
        Assert.Equal(TrainingFields.Labels, (await Assert.ThrowsAsync<FieldException>(() => session.StepAsync(0, flat))).Field);
        var after = await session.WeightsAsync();
        Assert.All(before.Zip(after), p => Assert.True(TensorBytes.Raw(p.First.Tensor).AsSpan().SequenceEqual(TensorBytes.Raw(p.Second.Tensor))));
        Assert.Equal(0, rig.Device.Memory.Reserved);
    }

    [Fact]
    public async Task A_nan_loss_stops_training_with_the_last_good_weights_kept_and_every_device_byte_freed()
    {
        var config = TrainingSpec.SmallGpt2();
        string dir = TrainingSpec.ExportGpt2(root, config);
        using var rig = new TrainingRig(Sys, dir, 2, 8);
        var session = await rig.Session(rig.Policy(2, 1), new TrainingSettings(new OptimizerSettings(OptimizerKind.Sgd, 1e30), LrSchedule.Constant));
        using var data = TrainingSpec.Data(4, 8, config.Vocab);
        using (var first = TrainingSpec.Rows(data, 0, 2)) await session.StepAsync(0, first); // finite loss, then weights blown up
        var good = await session.WeightsAsync();
        using var second = TrainingSpec.Rows(data, 1, 2);
        var e = await Assert.ThrowsAsync<TrainingStepException>(() => session.StepAsync(1, second));
        Assert.Matches("step 2: .*the loss of micro-batch 0 is (NaN|∞|-∞|Infinity)", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.Equal(0, rig.Device.Memory.Reserved);
        var kept = await session.WeightsAsync();
        Assert.All(good.Zip(kept), p => Assert.True(TensorBytes.Raw(p.First.Tensor).AsSpan().SequenceEqual(TensorBytes.Raw(p.Second.Tensor)),
            $"{p.First.Name} changed in the failed step"));
    }

    [Theory]
    [InlineData(0.0, null, TrainingFields.LearningRate)]
    [InlineData(-1e-3, null, TrainingFields.LearningRate)]
    [InlineData(double.NaN, null, TrainingFields.LearningRate)]
    [InlineData(1e-3, 0.0, TrainingFields.ClipNorm)]
    [InlineData(1e-3, -1.0, TrainingFields.ClipNorm)]
    public void A_learning_rate_or_clip_norm_out_of_range_is_refused_naming_it(double lr, double? clip, string field)
    {
        var e = Assert.Throws<FieldException>(() => new TrainingSettings(new OptimizerSettings(OptimizerKind.AdamW, lr), LrSchedule.Constant, clip).Validate());
        Assert.Equal(field, e.Field);
        Assert.StartsWith(field + " must be a positive number", e.Message);
    }

    [Fact]
    public async Task A_pinned_layer_kept_on_the_device_is_loaded_again_once_a_step_changed_its_weights()
    {
        var config = TrainingSpec.SmallGpt2();
        string dir = TrainingSpec.ExportGpt2(root, config);
        using var rig = new TrainingRig(Sys, dir, 2, 8);
        var pinned = OffloadPolicy.For(new PolicySpec(1, 1, ResidentLayers: 2), rig.Model.Layers.Count);
        using var ids = TrainingSpec.Data(2, 8, config.Vocab);
        async Task<(byte[] Output, PassReport Report)> Infer(object key)
        {
            var answer = await rig.Loader.Ask<object>(new DeviceLoaderActor.RunPass(rig.Model, rig.Layers, ids, pinned) { ResidentKey = key },
                TimeSpan.FromMinutes(1));
            var ok = Assert.IsType<DeviceLoaderActor.PassSucceeded>(answer);
            using var output = ok.Output;
            return (TensorBytes.Raw(output), ok.Report);
        }
        var (untrained, _) = await Infer("model");
        var (again, reused) = await Infer("model");
        Assert.Equal(untrained, again);
        Assert.Equal(2, reused.PinnedReused);

        // Train on another device of the same process: this loader's kept copies stay, and the step changes the weights under them.
        using var other = new SimulatedDevice("sim:1", 1L << 30);
        var otherLoader = Sys.ActorOf(DeviceLoaderActor.Props(other, TimeSpan.FromSeconds(30)), "other-sim-loader");
        var session = new TrainingSession(otherLoader, rig.Model, rig.Layers, rig.Policy(2, 1),
            new TrainingSettings(new OptimizerSettings(OptimizerKind.Sgd, 0.1), LrSchedule.Constant), TimeSpan.FromSeconds(60));
        await session.StartAsync();
        await session.StepAsync(0, ids);
        var (stale, dropped) = await Infer("model");
        Assert.Equal(0, dropped.PinnedReused); // both kept layers were of the old version: loaded again
        var (fresh, _) = await Infer("another model");
        Assert.NotEqual(untrained, fresh);
        Assert.Equal(fresh, stale);
        Sys.Stop(otherLoader);
    }

    [Fact]
    public async Task A_trained_checkpoint_saves_as_float32_safetensors_that_load_back_to_the_same_weights()
    {
        var config = TrainingSpec.SmallGpt2();
        string dir = TrainingSpec.ExportGpt2(root, config);
        using var rig = new TrainingRig(Sys, dir, 2, 8);
        var session = await rig.Session(rig.Policy(2, 1), new TrainingSettings(new OptimizerSettings(OptimizerKind.AdamW, 1e-2), LrSchedule.Constant));
        using var ids = TrainingSpec.Data(2, 8, config.Vocab);
        await session.StepAsync(0, ids);
        var trained = await session.WeightsAsync();
        string saved = Path.Combine(root, "saved");
        TrainedCheckpoint.Write(saved, dir, trained);
        Assert.True(File.Exists(Path.Combine(saved, "config.json")));
        using var back = SafetensorsCheckpoint.Open(saved);
        Assert.Equal(trained.Select(t => t.Name).Order(), back.Names.Order());
        foreach (var (name, t) in trained)
        {
            using var read = back.Read(name);
            Assert.Equal(ScalarType.Float32, read.dtype);
            Assert.True(TensorBytes.Raw(t).AsSpan().SequenceEqual(TensorBytes.Raw(read)), name);
        }
        Assert.Equal(rig.Model.Layers.Count, ModelCatalog.Create(ModelCatalog.CheckpointSpec(saved, 2, 8, 0)).Layers.Count);
    }

    [Fact]
    public async Task Weights_held_as_float16_are_refused_in_one_line_naming_the_tensor()
    {
        // Training loads a float16 checkpoint upcast (HalfTrainingSpec); layer actors holding it as stored (inference's way) cannot train.
        string dir = Path.Combine(root, "f16");
        Gpt2Export.Write(dir, TrainingSpec.SmallGpt2() with { TorchDtype = "float16" }, seed: 3);
        using var rig = new TrainingRig(Sys, dir, 2, 8, asStored: true);
        var e = await Assert.ThrowsAnyAsync<Exception>(() => rig.Session(rig.Policy(2, 1),
            new TrainingSettings(new OptimizerSettings(OptimizerKind.Sgd, 0.1), LrSchedule.Constant)));
        Assert.Matches("layer 0 \\(embed\\): transformer.wte.weight is held as Float16; training needs float32 weights", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    public new void Dispose()
    {
        base.Dispose();
        try { Directory.Delete(root, recursive: true); } catch (IOException) { }
    }
}
