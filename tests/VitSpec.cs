using Akka.Actor;
using Akka.TestKit.Xunit2;
using SkiaSharp;
using Superpipeline.Coordinator;
using Superpipeline.Engine;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Images;
using Superpipeline.Engine.IO;
using Superpipeline.Workers;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>The ViT family (issue 9, point 4) from a Hugging Face checkpoint directory: its arithmetic against an independent port
/// of transformers' modeling_vit.py written here (patch embedding as unfold + matmul, eager attention, erf gelu, pooler and
/// classifier), every (k, k') bit-identical to resident through the real engine, the declared workspaces, export-demo → run
/// --image from the CLI, and one-line refusals for a bad config, pixels of the wrong size and an image that does not decode.</summary>
[Collection(TensorCountCollection.Name)]
public sealed class VitSpec() : TestKit(WorkerConfig.Load()), IDisposable
{
    readonly string root = Directory.CreateTempSubdirectory("vit-spec-").FullName;

    void IDisposable.Dispose()
    {
        Directory.Delete(root, recursive: true);
        base.Dispose();
    }

    static VitConfig Small(int layers = 2, double eps = 1e-12, bool qkvBias = true, int labels = 2) => new(Hidden: 32, Layers: layers, Heads: 4,
        Intermediate: 48, ImageSize: 16, PatchSize: 4, LayerNormEps: eps, QkvBias: qkvBias, Labels: labels);

    string Export(VitConfig config, long seed, bool classifier, int shards = 1, string? name = null)
    {
        string dir = Path.Combine(root, name ?? Guid.NewGuid().ToString("N")[..8]);
        VitExport.Write(dir, config, seed, classifier, shards);
        return dir;
    }

    static LayeredModel Open(string dir, int batch)
    {
        var (names, head) = Vit.LayoutIn(dir);
        return Vit.Create("vit", VitConfig.Read(dir), batch, names, head);
    }

    // ---- the independent reference: modeling_vit.py's semantics over the whole state dict, plain TorchSharp ops ----

    static Dictionary<string, Tensor> StateDict(string dir)
    {
        using var ckpt = SafetensorsCheckpoint.Open(dir);
        return ckpt.Names.ToDictionary(n => n, ckpt.Read);
    }

    /// <summary>nn.LayerNorm: (x - mean) / sqrt(var(unbiased=False) + eps) * weight + bias over the last dimension.</summary>
    static Tensor RefLayerNorm(Tensor x, Tensor w, Tensor b, double eps)
    {
        var centred = x - x.mean([-1], keepdim: true);
        var variance = centred.pow(2).mean([-1], keepdim: true);
        return centred / (variance + eps).sqrt() * w + b;
    }

    /// <summary>nn.Linear: x @ weight^T + bias (weight [out, in]).</summary>
    static Tensor RefLinear(Tensor x, Tensor w, Tensor? b) => b is null ? matmul(x, w.t()) : matmul(x, w.t()) + b;

    /// <summary>ACT2FN["gelu"] = GELUActivation: 0.5 * x * (1 + erf(x / sqrt(2))).</summary>
    static Tensor RefGelu(Tensor x) => 0.5 * x * (1.0 + (x / Math.Sqrt(2.0)).erf());

    /// <summary>ViTPatchEmbeddings' Conv2d(C, H, kernel P, stride P) written as its unfold: each P × P patch (row-major over the
    /// grid, values in (channel, row, column) order, as the weight [H, C, P, P] flattens) times the flattened weight.</summary>
    static Tensor RefPatches(Tensor pixels, Tensor weight, Tensor bias, int patch)
    {
        long b = pixels.shape[0], ch = pixels.shape[1], g = pixels.shape[2] / patch;
        var patches = pixels.reshape(b, ch, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, ch * patch * patch);
        return matmul(patches, weight.reshape(weight.shape[0], -1).t()) + bias;
    }

    static Tensor Reference(string dir, Tensor pixels)
    {
        var sd = StateDict(dir);
        try { return Reference(VitConfig.Read(dir), sd, pixels); }
        finally { foreach (var w in sd.Values) w.Dispose(); }
    }

    static Tensor Reference(VitConfig c, IReadOnlyDictionary<string, Tensor> sd, Tensor pixels)
    {
        using var scope = NewDisposeScope();
        using var noGrad = inference_mode();
        // ViTForImageClassification saves its ViTModel under "vit."; a ViTModel's own files have no prefix
        string p = sd.ContainsKey("vit.embeddings.cls_token") ? "vit." : "";
        long b = pixels.shape[0];
        int nh = c.Heads, d = c.Hidden / c.Heads;
        // ViTEmbeddings.forward: patch embeddings, cat((cls_token.expand(B, -1, -1), embeddings), dim=1) + position_embeddings
        var patches = RefPatches(pixels, sd[p + "embeddings.patch_embeddings.projection.weight"],
            sd[p + "embeddings.patch_embeddings.projection.bias"], c.PatchSize);
        var hidden = cat([sd[p + "embeddings.cls_token"].expand(b, -1, -1), patches], 1) + sd[p + "embeddings.position_embeddings"];
        long t = hidden.shape[1];
        for (int i = 0; i < c.Layers; i++)
        {
            string l = $"{p}encoder.layer.{i}.";
            Tensor? Bias(string name) => sd.TryGetValue(l + name, out var bias) ? bias : null;
            // ViTLayer: attention(layernorm_before(hidden)); ViTSelfAttention.transpose_for_scores: view(B, T, heads, d).permute(0, 2, 1, 3)
            var h = RefLayerNorm(hidden, sd[l + "layernorm_before.weight"], sd[l + "layernorm_before.bias"], c.LayerNormEps);
            Tensor Heads(string name) => RefLinear(h, sd[l + $"attention.attention.{name}.weight"], Bias($"attention.attention.{name}.bias"))
                .view(b, t, nh, d).permute(0, 2, 1, 3);
            var (q, k, v) = (Heads("query"), Heads("key"), Heads("value"));
            // eager_attention_forward: matmul(q, k^T) * head_size ** -0.5, softmax(-1), matmul with v, transpose(1, 2).contiguous()
            var weights = softmax(matmul(q, k.transpose(-1, -2)) * Math.Pow(d, -0.5), -1);
            var context = matmul(weights, v).transpose(1, 2).contiguous().view(b, t, c.Hidden);
            // ViTSelfOutput.dense; the first residual in ViTLayer
            hidden = RefLinear(context, sd[l + "attention.output.dense.weight"], sd[l + "attention.output.dense.bias"]) + hidden;
            // layernorm_after, ViTIntermediate (dense + gelu), ViTOutput (dense + the second residual)
            h = RefLayerNorm(hidden, sd[l + "layernorm_after.weight"], sd[l + "layernorm_after.bias"], c.LayerNormEps);
            var m = RefGelu(RefLinear(h, sd[l + "intermediate.dense.weight"], sd[l + "intermediate.dense.bias"]));
            hidden = RefLinear(m, sd[l + "output.dense.weight"], sd[l + "output.dense.bias"]) + hidden;
        }
        // ViTModel: sequence_output = layernorm(encoder output)
        var sequence = RefLayerNorm(hidden, sd[p + "layernorm.weight"], sd[p + "layernorm.bias"], c.LayerNormEps);
        var cls = sequence[TensorIndex.Colon, 0];
        // ViTForImageClassification: classifier(sequence_output[:, 0, :]); ViTPooler: tanh(dense(hidden_states[:, 0]))
        var output = sd.ContainsKey("classifier.weight") ? RefLinear(cls, sd["classifier.weight"], sd["classifier.bias"])
            : sd.ContainsKey(p + "pooler.dense.weight") ? RefLinear(cls, sd[p + "pooler.dense.weight"], sd[p + "pooler.dense.bias"]).tanh()
            : sequence;
        return output.MoveToOuterDisposeScope();
    }

    static void AssertClose(Tensor expected, Tensor actual, double tolerance)
    {
        Assert.Equal(expected.shape, actual.shape);
        double worst = (expected - actual).abs().max().item<float>();
        Assert.True(worst <= tolerance, $"max |difference| {worst:G3} exceeds {tolerance:G3}");
    }

    [Theory]
    [InlineData(false, true, 1e-12, 1)]
    [InlineData(true, true, 1e-12, 2)]
    [InlineData(false, false, 0.05, 1)]
    [InlineData(true, false, 0.05, 3)]
    public void Outputs_match_an_independent_port_of_modeling_vit(bool classifier, bool qkvBias, double eps, int shards)
    {
        var config = Small(layers: 3, eps: eps, qkvBias: qkvBias, labels: 7);
        string dir = Export(config, seed: 11, classifier, shards);
        var read = VitConfig.Read(dir);
        Assert.Equal(classifier ? config : config with { Labels = 2 }, read); // a ViTModel's config.json carries no id2label
        var (names, head) = Vit.LayoutIn(dir);
        Assert.Equal(classifier ? (VitNames.Vit, VitHeadKind.Classifier) : ("", VitHeadKind.Pooler), (names.Prefix, head));
        var model = Open(dir, batch: 3);
        using var pixels = model.MakeInput(5);
        using var source = new CheckpointWeights(dir);
        using var output = OffloadEquality.HostForward(model, source, pixels);
        using var expected = Reference(dir, pixels);
        Assert.Equal(classifier ? new long[] { 3, 7 } : [3, 32], output.shape);
        double spread = expected.std().item<float>();
        Assert.True(spread > 0.3, $"outputs' std {spread:G3}: too small for mistakes to show");
        AssertClose(expected, output, 1e-5);
    }

    [Fact]
    public void Without_a_pooler_or_classifier_the_head_gives_the_layernormed_last_hidden_state()
    {
        string dir = Export(Small(), seed: 4, classifier: false);
        var sd = StateDict(dir);
        try
        {
            var kept = sd.Where(kv => !kv.Key.StartsWith("pooler.", StringComparison.Ordinal)).ToList();
            File.Delete(Path.Combine(dir, "model.safetensors"));
            SafetensorsWriter.WriteFile(Path.Combine(dir, "model.safetensors"), kept, SafetensorsWriter.TransformersMetadata);
        }
        finally { foreach (var w in sd.Values) w.Dispose(); }
        Assert.Equal(VitHeadKind.HiddenStates, Vit.LayoutIn(dir).Head);
        var model = Open(dir, batch: 2);
        using var pixels = model.MakeInput(3);
        using var source = new CheckpointWeights(dir);
        using var output = OffloadEquality.HostForward(model, source, pixels);
        using var expected = Reference(dir, pixels);
        Assert.Equal(new long[] { 2, 17, 32 }, output.shape); // (16 / 4)² patches + CLS
        AssertClose(expected, output, 1e-5);
    }

    [Fact]
    public void The_patch_convolution_equals_its_unfold_and_matmul()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(3);
        // Pixels in [-1, 1] as ViT's processor gives them, weights at the seeded checkpoints' scale: outputs of order 1.
        var pixels = rand([2, 3, 24, 24], generator: g) * 2 - 1;
        var weight = randn([16, 3, 6, 6], generator: g) * Gpt2.InitStd;
        var bias = randn([16], generator: g) * Gpt2.InitStd;
        var conv = nn.functional.conv2d(pixels, weight, bias, strides: [6, 6]).flatten(2).transpose(1, 2);
        AssertClose(RefPatches(pixels, weight, bias, 6), conv, 1e-5);
    }

    [Fact]
    public void The_seeded_model_equals_its_exported_checkpoint_bit_for_bit()
    {
        var config = Small();
        string dir = Export(config, seed: 9, classifier: true);
        var model = Open(dir, batch: 2);
        using var pixels = model.MakeInput(1);
        using var fromFile = new CheckpointWeights(dir);
        using var a = OffloadEquality.HostForward(model, fromFile, pixels);
        using var b = OffloadEquality.HostForward(model, new SeededWeights(9), pixels);
        Assert.Equal(TensorBytes.Raw(b), TensorBytes.Raw(a));
    }

    [Fact]
    public async Task Every_window_and_swap_of_a_three_block_checkpoint_is_bit_identical_to_resident()
    {
        string dir = Export(Small(layers: 3), seed: 21, classifier: false, shards: 2);
        var model = Open(dir, batch: 2);
        using var source = new CheckpointWeights(dir);
        using var pixels = model.MakeInput(2);
        var cases = OffloadEquality.EveryWindowAndSwap(model.Layers.Count);
        Assert.Equal(15, cases.Length); // 5 layers: embeddings, 3 blocks, head
        await OffloadEquality.AssertBitIdenticalToResident(Sys, model, source, pixels, cases);
    }

    /// <summary>As Gpt2Spec does: what each forward leaves in its dispose scope, beyond its input, weights and output, plus the
    /// attention call's scores and softmax (blocks) and an im2col buffer the size of the pixels (the embedding), is what it declares.</summary>
    [Theory]
    [InlineData(false, 2)]
    [InlineData(true, 3)]
    public void Each_layer_declares_the_temporaries_its_forward_holds(bool classifier, int batch)
    {
        var config = Small();
        var (names, head) = classifier ? (new VitNames(VitNames.Vit), VitHeadKind.Classifier) : (new VitNames(""), VitHeadKind.Pooler);
        var model = Vit.Create("vit", config, batch, names, head);
        var source = new SeededWeights(8);
        var acts = model.ActivationShapes();
        using var pixels = model.MakeInput(1);
        for (int i = 0; i < model.Layers.Count; i++)
        {
            var layer = model.Layers[i];
            var weights = source.Load(layer);
            using var input = i == 0 ? pixels.alias() : randn(acts[i].Shape);
            long held = TensorProbe.HeldBytes(layer, weights, input);
            foreach (var w in weights.Values) w.Dispose();
            long extra = layer switch
            {
                VitBlock => 2L * batch * config.Heads * config.Tokens * config.Tokens * sizeof(float),
                VitEmbedding => pixels.NumberOfElements * sizeof(float),
                _ => 0,
            };
            Assert.True(held > 0, $"{layer.Name} holds no temporaries: the reference is broken");
            Assert.Equal(held + extra, layer.WorkspaceBytes(acts[i].Shape));
        }
    }

    // ---- the CLI: export-demo vit, run --image ----

    string Png(string name, int height, int width, Func<int, int, SKColor> colour, SKEncodedImageFormat format = SKEncodedImageFormat.Png) =>
        TestImages.Write(Path.Combine(root, name), height, width, colour, format, quality: 90);

    [Fact]
    public async Task Export_demo_vit_then_run_image_gives_the_logits_of_the_preprocessed_pixels_for_every_window()
    {
        string dir = Path.Combine(root, "cli");
        Assert.Equal(0, await Cli.MainAsync(["export-demo", "--family", "vit", "--out", dir, "--layers", "2", "--hidden", "32", "--heads", "4",
            "--ffn", "48", "--image-size", "16", "--patch-size", "4", "--labels", "5", "--seed", "3"]));
        Assert.True(File.Exists(Path.Combine(dir, ImagePreprocess.FileName)));
        var config = VitConfig.Read(dir);
        Assert.Equal((2, 32, 4, 48, 16, 4, 5), (config.Layers, config.Hidden, config.Heads, config.Intermediate, config.ImageSize, config.PatchSize,
            config.Labels));
        // A PNG of another size than the model's 16 × 16 (the processor resizes it) and a JPEG.
        string a = Png("a.png", 40, 50, (y, x) => new SKColor((byte)(5 * x), (byte)(6 * y), 128));
        string b = Png("b.jpg", 16, 16, (y, x) => new SKColor((byte)(255 - 9 * y), 30, (byte)(15 * x)), SKEncodedImageFormat.Jpeg);
        byte[] Run(string window)
        {
            string output = Path.Combine(root, $"out-{Guid.NewGuid():N}.npy");
            Assert.Equal(0, Cli.MainAsync(["run", "--model", dir, "--image", a, "--image", b, "--window", window, "--output", output]).Result);
            var (descr, shape, data) = Npy.Read(output);
            Assert.Equal("<f4", descr);
            Assert.Equal([2L, 5], shape); // logits [images, labels]
            return data;
        }
        var resident = await Task.Run(() => Run("all"));
        foreach (var window in new[] { "1", "2", "3" }) Assert.Equal(resident, await Task.Run(() => Run(window)));

        // The same logits, by hand: the images through the checkpoint's preprocessor_config.json, each layer's forward on the host.
        using var pixels = ImageInput.Load([a, b], Vit.Preprocess(dir));
        using var source = new CheckpointWeights(dir);
        using var expected = OffloadEquality.HostForward(Open(dir, batch: 2), source, pixels);
        Assert.Equal(TensorBytes.Raw(expected), resident);
        Assert.Empty(Directory.GetFiles(Path.GetTempPath(), $"superpipeline-pixels-{Environment.ProcessId}-*"));
    }

    [Fact]
    public async Task Bad_images_configs_and_flags_are_refused_in_one_line()
    {
        string dir = Export(Small(), seed: 2, classifier: false, name: "vit");
        string good = Png("good.png", 16, 16, (_, _) => SKColors.Teal);
        string bad = Path.Combine(root, "bad.png");
        File.WriteAllText(bad, "these bytes are not a PNG");
        Assert.Equal(1, await Cli.MainAsync(["run", "--model", dir, "--image", bad]));
        Assert.Equal(1, await Cli.MainAsync(["run", "--model", dir, "--image", Path.Combine(root, "missing.png")]));
        Assert.Equal(1, await Cli.MainAsync(["run", "--model", dir, "--image", good, "--batch", "2"]));
        Assert.Equal(1, await Cli.MainAsync(["run", "--image", good])); // the demo takes token ids
        Assert.Empty(Directory.GetFiles(Path.GetTempPath(), $"superpipeline-pixels-{Environment.ProcessId}-*"));

        // --image with a text family: refused naming the flag.
        string gpt2 = Path.Combine(root, "gpt2");
        Gpt2Export.Write(gpt2, new Gpt2Config(Hidden: 32, Layers: 1, Heads: 4, MaxPositions: 8, Vocab: 50), seed: 1);
        Assert.Null(ModelCatalog.ImagePreprocessOf(gpt2));
        Assert.Equal(1, await Cli.MainAsync(["run", "--model", gpt2, "--image", good]));

        // image_size not a multiple of patch_size: one line naming the key, from the config and from export-demo.
        string json = File.ReadAllText(Path.Combine(dir, "config.json"));
        string odd = Path.Combine(root, "odd");
        Directory.CreateDirectory(odd);
        File.WriteAllText(Path.Combine(odd, "config.json"), json.Replace("\"image_size\": 16", "\"image_size\": 18", StringComparison.Ordinal));
        var e = Assert.Throws<CheckpointConfigException>(() => VitConfig.Read(odd));
        Assert.Equal($"{Path.Combine(odd, "config.json")}: \"image_size\" (18) must be a multiple of patch_size (4)", e.Message);
        Assert.Equal(1, await Cli.MainAsync(["run", "--model", odd]));
        Assert.Equal(1, await Cli.MainAsync(["export-demo", "--family", "vit", "--out", Path.Combine(root, "x"), "--image-size", "30"]));
        Assert.Equal(1, await Cli.MainAsync(["export-demo", "--family", "vit", "--out", Path.Combine(root, "y"), "--vocab", "300"]));
        Assert.Equal(1, await Cli.MainAsync(["export-demo", "--family", "gpt2", "--out", Path.Combine(root, "z"), "--labels", "3"]));
        Assert.False(Directory.Exists(Path.Combine(root, "x")) || Directory.Exists(Path.Combine(root, "y")) || Directory.Exists(Path.Combine(root, "z")));

        // Pixels of another size than image_size: refused naming the file (position embeddings are not interpolated).
        string wrong = Path.Combine(root, "wrong.npy");
        Npy.Write(wrong, new TensorPayload("Float32", [1, 3, 8, 8], [.. new byte[3 * 8 * 8 * 4]]));
        var spec = ModelCatalog.CheckpointSpec(dir, 1, 1, 1);
        var p = Assert.Throws<ArgumentException>(() => ModelCatalog.Create(spec with { Input = wrong }));
        Assert.StartsWith($"{wrong}: pixels must have shape [batch, 3, 16, 16]", p.Message);
        Assert.DoesNotContain('\n', p.Message);
        var layer = Assert.Throws<ArgumentException>(() => Open(dir, 1).Layers[0].OutputShape([1, 3, 8, 8]));
        Assert.Contains("position embeddings are not interpolated", layer.Message);
    }

    [Theory]
    [InlineData("hidden_size")]
    [InlineData("num_hidden_layers")]
    [InlineData("num_attention_heads")]
    [InlineData("intermediate_size")]
    [InlineData("image_size")]
    [InlineData("patch_size")]
    public void A_missing_key_is_one_line_naming_the_file_and_the_key(string key)
    {
        string dir = Path.Combine(root, key);
        Directory.CreateDirectory(dir);
        string json = string.Join("\n", Small().ToJson(false).Split('\n').Where(l => !l.TrimStart().StartsWith($"\"{key}\"", StringComparison.Ordinal)));
        File.WriteAllText(Path.Combine(dir, "config.json"), json);
        var e = Assert.Throws<CheckpointConfigException>(() => VitConfig.Read(dir));
        Assert.Equal($"{Path.Combine(dir, "config.json")}: \"{key}\" is missing", e.Message);
    }
}
