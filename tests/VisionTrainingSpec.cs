using System.Diagnostics;
using System.Text.Json.Nodes;
using Akka.TestKit.Xunit2;
using SkiaSharp;
using Superpipeline.Contracts;
using Superpipeline.Engine;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Training;
using Superpipeline.Workers;
using TorchSharp;
using TorchSharp.Modules;
using Xunit;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Tests;

/// <summary>Training a ViT image classifier (ViTForImageClassification: pixels in, logits [rows, num_labels] out, the mean
/// cross-entropy against int64 labels) with offload, against a plain resident TorchSharp loop with torch.optim, against finite
/// differences of an independent float64 ViT forward, and within the device bound the window sets; then its refusals, and the
/// train command with --labels. The equality is bitwise, for the same reasons as the decoders' (<see cref="TrainingSpec"/>): each
/// layer's recompute runs the same ops on the same values as the resident graph (the embedding's convolution over the same
/// pixels, which need no gradient in either), autograd's per-layer backward is the resident one's, micro-batches accumulate in the
/// same order, the clip coefficient is libtorch's arithmetic over the same per-tensor norms, and each layer's optimizer is
/// torch.optim's own per-parameter update. Every op involved is deterministic on the CPU, so no tolerance is needed.</summary>
[Collection(TensorCountCollection.Name)]
public sealed class VisionTrainingSpec() : TestKit(WorkerConfig.Load()), IDisposable
{
    readonly string root = Directory.CreateTempSubdirectory("vision-training-").FullName;

    const int Classes = 5;

    static VitConfig SmallVit(int layers = 2) => new(Hidden: 32, Layers: layers, Heads: 4, Intermediate: 48, ImageSize: 16, PatchSize: 8,
        Labels: Classes);

    string ExportVit(VitConfig config, string name = "vit")
    {
        string dir = Path.Combine(root, name);
        VitExport.Write(dir, config, seed: 17, classifier: true);
        return dir;
    }

    /// <summary>Seeded pixels [rows, 3, 16, 16] (N(0, 1), as a normalised image's range) and labels [rows] in [0, Classes).</summary>
    static (Tensor Pixels, Tensor Labels) Data(int rows, long seed = 7)
    {
        using var g = new Generator((ulong)seed);
        return (randn([rows, 3, 16, 16], generator: g), randint(Classes, [rows], dtype: ScalarType.Int64, generator: g));
    }

    public static TheoryData<string, int, int, int, bool> Cases() => new()
    {
        // optimizer, k, k', micro-batches, clipping and the cosine schedule (else constant, unclipped); the ViT has 4 layers
        { "sgd", 1, 1, 1, true }, { "sgd", 2, 1, 2, true }, { "sgd", 2, 2, 1, false }, { "adamw", 3, 2, 1, true }, { "adamw", 4, 4, 2, true },
        { "adamw", 1, 1, 2, false },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Every_loss_and_weight_equals_the_resident_torch_optim_loop_bit_for_bit(string optimizer, int k, int swap, int micro, bool clip)
    {
        string dir = ExportVit(SmallVit());
        const int batch = 4, steps = 4;
        var s = new TrainingSettings(
            optimizer == "sgd" ? new OptimizerSettings(OptimizerKind.Sgd, 0.05, Momentum: 0.9, WeightDecay: 0.01)
                : new OptimizerSettings(OptimizerKind.AdamW, 0.01, WeightDecay: 0.1),
            clip ? new LrSchedule(ScheduleKind.Cosine, Warmup: 1, Steps: steps) : LrSchedule.Constant, clip ? 1.0 : null, micro);
        var (pixels, labels) = Data(12);
        using var _p = pixels;
        using var _l = labels;
        var model = ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, batch, 0, 0));
        Assert.Equal(4, model.Layers.Count);
        // The plain resident loop with transformers' CrossEntropyLoss()(logits, labels), the mean.
        var (losses, expected) = TrainingSpec.Resident(model, dir, s, pixels, steps, labels, (logits, y) => F.cross_entropy(logits, y));

        using var rig = new TrainingRig(Sys, dir, batch, 0);
        var session = await rig.Session(rig.Policy(k, swap), s);
        var reports = new List<TrainingStepReport>();
        for (int step = 0; step < steps; step++)
        {
            using var x = TrainingSpec.Rows(pixels, step, batch);
            using var y = TrainingSpec.Rows(labels, step, batch);
            reports.Add(await session.StepAsync(step, x, y));
        }
        var actual = (await session.WeightsAsync()).ToDictionary(w => w.Name, w => w.Tensor);
        Assert.Equal(0, rig.Device.Memory.Reserved); // every pass freed every device byte

        string what = $"vit {optimizer} k={k} k'={swap} micro={micro} clip={clip}";
        for (int i = 0; i < steps; i++)
            Assert.True(losses[i].SequenceEqual(reports[i].MicroBatchLosses),
                $"{what}: step {i + 1} losses {string.Join(", ", reports[i].MicroBatchLosses)}, resident {string.Join(", ", losses[i])}");
        Assert.Equal(expected.Keys.Order(), actual.Keys.Order());
        Assert.Contains(VitNames.ClassifierWeight, actual.Keys);
        foreach (var (name, t) in expected)
            Assert.True(TensorBytes.Raw(t).AsSpan().SequenceEqual(TensorBytes.Raw(actual[name])),
                $"{what}: {name} differs from the resident loop's by up to {(t - actual[name]).abs().max().item<float>()}");
        Assert.All(reports, r => Assert.Equal(batch, r.Tokens)); // images per step
        Assert.All(reports, r => Assert.Equal(clip, r.GradNorm is not null));
    }

    // ---- an independent ViT forward in float64: modeling_vit.py's arithmetic over the state dict, no conv2d, no autograd ----

    static Tensor Ln(Tensor x, Tensor w, Tensor b, double eps)
    {
        var centred = x - x.mean([-1], keepdim: true);
        return centred / (centred.pow(2).mean([-1], keepdim: true) + eps).sqrt() * w + b;
    }

    static double Loss64(Dictionary<string, Tensor> w, Tensor pixels, Tensor labels, VitConfig c)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        long b = pixels.shape[0], t = c.Tokens;
        int g = c.Grid, p = c.PatchSize, hidden = c.Hidden, heads = c.Heads, d = c.HeadDim;
        // The strided convolution as a product: each patch's (channel, row, column) values against the kernel's, in that order.
        var patches = pixels.to_type(ScalarType.Float64).reshape(b, c.Channels, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, -1);
        var tokens = patches.matmul(w["vit.embeddings.patch_embeddings.projection.weight"].reshape(hidden, -1).t())
            + w["vit.embeddings.patch_embeddings.projection.bias"];
        var x = cat([w["vit.embeddings.cls_token"].expand(b, 1, hidden), tokens], 1) + w["vit.embeddings.position_embeddings"];
        for (int i = 0; i < c.Layers; i++)
        {
            string q = $"vit.encoder.layer.{i}.";
            Tensor Linear(Tensor h, string name) => h.matmul(w[q + name + ".weight"].t()) + w[q + name + ".bias"];
            var h = Ln(x, w[q + "layernorm_before.weight"], w[q + "layernorm_before.bias"], c.LayerNormEps);
            Tensor Heads(string n) => Linear(h, $"attention.attention.{n}").reshape(b, t, heads, d).permute(0, 2, 1, 3);
            var attn = (Heads("query").matmul(Heads("key").transpose(-1, -2)) / Math.Sqrt(d)).softmax(-1).matmul(Heads("value"));
            x = x + Linear(attn.permute(0, 2, 1, 3).reshape(b, t, hidden), "attention.output.dense");
            h = Ln(x, w[q + "layernorm_after.weight"], w[q + "layernorm_after.bias"], c.LayerNormEps);
            var f = Linear(h, "intermediate.dense");
            f = 0.5 * f * (1 + (f / Math.Sqrt(2)).erf()); // the exact gelu
            x = x + Linear(f, "output.dense");
        }
        var first = Ln(x, w["vit.layernorm.weight"], w["vit.layernorm.bias"], c.LayerNormEps).select(1, 0);
        var logits = first.matmul(w["classifier.weight"].t()) + w["classifier.bias"];
        return -logits.log_softmax(-1).gather(-1, labels.unsqueeze(-1)).mean().item<double>();
    }

    [Fact]
    public async Task One_sgd_step_divided_by_the_learning_rate_is_the_finite_difference_gradient_of_every_tensor()
    {
        var config = SmallVit();
        string dir = ExportVit(config);
        const int batch = 3;
        const double lr = 1.0;
        var (pixels, labels) = Data(batch, seed: 9);
        using var _p = pixels;
        using var _l = labels;
        using var rig = new TrainingRig(Sys, dir, batch, 0);
        var session = await rig.Session(rig.Policy(2, 1), new TrainingSettings(new OptimizerSettings(OptimizerKind.Sgd, lr), LrSchedule.Constant));
        var before = (await session.WeightsAsync()).ToDictionary(w => w.Name, w => w.Tensor);
        var report = await session.StepAsync(0, pixels, labels);
        var after = (await session.WeightsAsync()).ToDictionary(w => w.Name, w => w.Tensor);

        var w64 = before.ToDictionary(e => e.Key, e => e.Value.to_type(ScalarType.Float64));
        Assert.Equal(Loss64(w64, pixels, labels, config), report.Loss, 5); // the independent forward is the same model
        var worst = TrainingChecks.WorstFiniteDifference(before, after, lr, w => Loss64(w, pixels, labels, config));
        Assert.Equal(2 * 16 + 4 + 4, before.Count); // every tensor was sampled: 16 per block, the embedding's 4, the head's 4
        Assert.True(worst.Error < 2e-3, $"worst: {worst.Where} (relative error {worst.Error:G3})");
    }

    [Theory]
    [InlineData(1, 1, 1)]
    [InlineData(2, 1, 2)]
    [InlineData(3, 3, 2)]
    public async Task Peak_device_bytes_stay_within_the_k_largest_layers_their_gradients_and_the_activations_in_flight(int k, int swap, int micro)
    {
        string dir = ExportVit(SmallVit(layers: 4), "vit-4");
        const int batch = 4;
        var (pixels, labels) = Data(batch * 2);
        using var _p = pixels;
        using var _l = labels;
        using var rig = new TrainingRig(Sys, dir, batch, 0);
        var session = await rig.Session(rig.Policy(k, swap),
            new TrainingSettings(new OptimizerSettings(OptimizerKind.AdamW, 1e-3), LrSchedule.Constant, MicroBatches: micro));
        var model = ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, batch / micro, 0, 0));
        long bound = TrainingChecks.PeakBound(model, k, micro);
        var peaks = new List<long>();
        for (int step = 0; step < 2; step++)
        {
            using var x = TrainingSpec.Rows(pixels, step, batch);
            using var y = TrainingSpec.Rows(labels, step, batch);
            var r = await session.StepAsync(step, x, y);
            Assert.True(r.PeakDeviceBytes <= bound, $"step {step + 1}: peak {r.PeakDeviceBytes:N0} > bound {bound:N0}");
            Assert.True(r.PeakDeviceBytes >= model.Layers.Select(l => l.Bytes).OrderDescending().Take(k).Sum(), "the peak holds the window's weights");
        }
        Assert.True(bound < 2 * model.Bytes || k > 1, $"with k = 1 the bound ({bound:N0}) is below resident training's weights and gradients");
        Assert.Equal(0, rig.Device.Memory.Reserved);
    }

    [Fact]
    public async Task Bad_labels_are_refused_in_one_line_and_leave_the_weights_and_the_device_as_they_were()
    {
        string dir = ExportVit(SmallVit());
        using var rig = new TrainingRig(Sys, dir, 2, 0);
        var session = await rig.Session(rig.Policy(2, 1), new TrainingSettings(new OptimizerSettings(OptimizerKind.Sgd, 0.1), LrSchedule.Constant));
        var before = await session.WeightsAsync();
        var (pixels, labels) = Data(2);
        using var _p = pixels;
        using var _l = labels;
        labels[1] = tensor((long)Classes);
        var outside = await Assert.ThrowsAsync<FieldException>(() => session.StepAsync(0, pixels, labels));
        Assert.Equal(ClassificationLoss.Field, outside.Field);
        Assert.Contains($"hold {Classes} at row 1: outside the classifier's {Classes} labels", outside.Message);
        labels[1] = tensor(-1L);
        Assert.Contains("hold -1 at row 1", (await Assert.ThrowsAsync<FieldException>(() => session.StepAsync(0, pixels, labels))).Message);
        using var three = zeros(3, dtype: ScalarType.Int64);
        Assert.Contains("must be int64 [2] (one per image); got Int64[3]",
            (await Assert.ThrowsAsync<FieldException>(() => session.StepAsync(0, pixels, three))).Message);
        using var column = zeros(2, 1, dtype: ScalarType.Int64);
        Assert.Equal(ClassificationLoss.Field, (await Assert.ThrowsAsync<FieldException>(() => session.StepAsync(0, pixels, column))).Field);
        using var floats = zeros(2);
        Assert.Equal(ClassificationLoss.Field, (await Assert.ThrowsAsync<FieldException>(() => session.StepAsync(0, pixels, floats))).Field);
        using var small = zeros(2, 3, 8, 8);
        Assert.Equal(TrainingFields.Data, (await Assert.ThrowsAsync<FieldException>(() => session.StepAsync(0, small, labels))).Field);
        await Assert.ThrowsAsync<ArgumentException>(() => session.StepAsync(0, pixels)); // a classifier needs its labels
        var after = await session.WeightsAsync();
        Assert.All(before.Zip(after), p => Assert.True(TensorBytes.Raw(p.First.Tensor).AsSpan().SequenceEqual(TensorBytes.Raw(p.Second.Tensor))));
        Assert.Equal(0, rig.Device.Memory.Reserved);
    }

    [Fact]
    public void A_vit_without_its_classifier_head_is_refused_for_training_in_one_line()
    {
        string dir = Path.Combine(root, "vit-model");
        VitExport.Write(dir, SmallVit(), seed: 1, classifier: false);
        var model = ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, 2, 0, 0));
        var e = Assert.Throws<ArgumentException>(() => ClassificationLoss.ObjectiveOf(model));
        Assert.Contains("an image classifier with its classifier head", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    // ---- the train command, a real process ----

    static (int Code, string Out, string Err) Cli(params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "superpipeline.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(120_000)) { p.Kill(true); throw new TimeoutException("superpipeline did not exit"); }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    string WriteNpy(string name, Tensor t)
    {
        string path = Path.Combine(root, name);
        Npy.Write(path, TensorPayloads.From(t));
        return path;
    }

    string Png(string dir, string name, SKColor colour)
    {
        Directory.CreateDirectory(dir);
        using var bitmap = new SKBitmap(new SKImageInfo(20, 24, SKColorType.Rgba8888, SKAlphaType.Opaque));
        bitmap.Erase(colour);
        using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        string path = Path.Combine(dir, name);
        File.WriteAllBytes(path, data.ToArray());
        return path;
    }

    [Fact]
    public void Train_takes_pixels_or_images_with_labels_and_refuses_bad_labels_in_one_line_naming_the_flag()
    {
        string dir = ExportVit(SmallVit());
        var (pixels, labels) = Data(4);
        using var _p = pixels;
        using var _l = labels;
        string px = WriteNpy("pixels.npy", pixels), lb = WriteNpy("labels.npy", labels), report = Path.Combine(root, "report.json");
        string[] common = ["--batch", "2", "--steps", "2", "--optimizer", "sgd", "--lr", "0.1", "--window", "2", "--swap", "1"];
        var ok = Cli(["train", "--model", dir, "--data", px, "--labels", lb, "--report", report, .. common]);
        Assert.True(ok.Code == 0, ok.Err);
        Assert.Contains("images/s", ok.Out);
        var steps = JsonNode.Parse(File.ReadAllText(report))!["steps"]!.AsArray();
        Assert.Equal(2, steps.Count);
        Assert.All(steps, s => Assert.True(double.IsFinite(s!["loss"]!.GetValue<double>())));

        string images = Path.Combine(root, "images");
        Png(images, "a.png", new SKColor(200, 30, 30));
        Png(images, "b.png", new SKColor(20, 30, 220));
        using var two = tensor(new long[] { 0, 3 });
        var fromImages = Cli(["train", "--model", dir, "--data", images, "--labels", WriteNpy("two.npy", two), .. common]);
        Assert.True(fromImages.Code == 0, fromImages.Err);

        labels[2] = tensor((long)Classes);
        var outside = Cli(["train", "--model", dir, "--data", px, "--labels", WriteNpy("outside.npy", labels), .. common]);
        Assert.NotEqual(0, outside.Code);
        Assert.Contains($"--labels hold {Classes} at row 2: outside the classifier's {Classes} labels", outside.Err);
        Assert.DoesNotContain('\n', outside.Err.Trim());
        using var column = zeros(4, 1, dtype: ScalarType.Int64);
        var shape = Cli(["train", "--model", dir, "--data", px, "--labels", WriteNpy("column.npy", column), .. common]);
        Assert.NotEqual(0, shape.Code);
        Assert.Contains("--labels", shape.Err);
        Assert.Contains("must hold int64 labels [rows]", shape.Err);
        Assert.DoesNotContain('\n', shape.Err.Trim());
        var missing = Cli(["train", "--model", dir, "--data", px, .. common]);
        Assert.NotEqual(0, missing.Code);
        Assert.Contains("--labels are needed for an image classifier", missing.Err);
    }

    public new void Dispose()
    {
        base.Dispose();
        try { Directory.Delete(root, recursive: true); } catch (IOException) { }
    }
}
