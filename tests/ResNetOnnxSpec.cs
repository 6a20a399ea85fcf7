using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Engine;
using Microsoft.ML.OnnxRuntime;
using DenseTensor = Microsoft.ML.OnnxRuntime.Tensors.DenseTensor<float>;
using SkiaSharp;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Images;
using Superpipeline.Engine.Onnx;
using Superpipeline.Workers;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Tests;

/// <summary>The ResNet family: its layers against an independent reference written here from torchvision's resnet.py (seeded
/// weights, basic and bottleneck blocks, with and without fc), each layer's declared workspace against what its forward holds,
/// every (k, k') bit-identical to resident through the real engine. In the collection that never runs beside another test: one
/// test compares the process-wide tensor count.</summary>
[Collection(TensorCountCollection.Name)]
public sealed class ResNetOnnxSpec(ITestOutputHelper output) : TestKit(WorkerConfig.Load())
{
    static ResNetConfig Small(bool bottleneck = false, int? classes = null, double eps = 1e-5) =>
        new([2, 1, 2], bottleneck, classes, eps, ImageHeight: 40, ImageWidth: 36, Width: 8);

    /// <summary>Every layer's seeded weights, each name once: the state dict torchvision's model would hold.</summary>
    static Dictionary<string, Tensor> StateDict(LayeredModel model, IWeightSource source)
    {
        var sd = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var layer in model.Layers)
            foreach (var (name, t) in source.Load(layer)) sd.Add(name, t);
        return sd;
    }

    // ---- the independent reference: torchvision's resnet.py over the state dict, BatchNorm written out ----

    /// <summary>BatchNorm2d in eval: (x - running_mean) / sqrt(running_var + eps) * weight + bias, per channel.</summary>
    static Tensor RefBn(Dictionary<string, Tensor> sd, string bn, Tensor x, double eps)
    {
        Tensor C(string p) => sd[$"{bn}.{p}"].view(1, -1, 1, 1);
        return (x - C("running_mean")) / (C("running_var") + eps).sqrt() * C("weight") + C("bias");
    }

    /// <summary>conv3x3 / conv1x1 / the stem's 7×7: bias=False, padding = kernel // 2.</summary>
    static Tensor RefConv(Dictionary<string, Tensor> sd, string name, Tensor x, long stride)
    {
        var w = sd[name];
        return F.conv2d(x, w, null, [stride, stride], [w.shape[2] / 2, w.shape[3] / 2]);
    }

    static Tensor Reference(ResNetConfig c, Dictionary<string, Tensor> sd, Tensor x)
    {
        using var scope = NewDisposeScope();
        using var noGrad = inference_mode();
        double e = c.BatchNormEps;
        // ResNet._forward_impl: conv1, bn1, relu, maxpool(kernel_size=3, stride=2, padding=1)
        x = F.max_pool2d(RefBn(sd, "bn1", RefConv(sd, "conv1.weight", x, 2), e).relu(), [3, 3], [2, 2], [1, 1]);
        long inplanes = c.Width;
        for (int s = 0; s < c.Stages.Length; s++)
            for (int b = 0; b < c.Stages[s]; b++)
            {
                string p = $"layer{s + 1}.{b}.";
                long planes = c.Width << s, stride = s > 0 && b == 0 ? 2 : 1, expansion = c.Bottleneck ? 4 : 1;
                // _make_layer: downsample = conv1x1(inplanes, planes * expansion, stride) + norm when stride != 1 or the channels change
                var identity = stride != 1 || inplanes != planes * expansion
                    ? RefBn(sd, p + "downsample.1", RefConv(sd, p + "downsample.0.weight", x, stride), e) : x;
                Tensor o;
                if (c.Bottleneck) // Bottleneck (v1.5): the stride sits on conv2, the 3×3
                {
                    o = RefBn(sd, p + "bn1", RefConv(sd, p + "conv1.weight", x, 1), e).relu();
                    o = RefBn(sd, p + "bn2", RefConv(sd, p + "conv2.weight", o, stride), e).relu();
                    o = RefBn(sd, p + "bn3", RefConv(sd, p + "conv3.weight", o, 1), e);
                }
                else
                {
                    o = RefBn(sd, p + "bn1", RefConv(sd, p + "conv1.weight", x, stride), e).relu();
                    o = RefBn(sd, p + "bn2", RefConv(sd, p + "conv2.weight", o, 1), e);
                }
                x = (o + identity).relu();
                inplanes = planes * expansion;
            }
        // avgpool = AdaptiveAvgPool2d((1, 1)); then flatten and fc when the model has one
        x = F.adaptive_avg_pool2d(x, [1, 1]);
        if (c.Classes is not null) x = F.linear(x.flatten(1), sd["fc.weight"], sd["fc.bias"]);
        return x.MoveToOuterDisposeScope();
    }

    static double MaxDifference(Tensor expected, Tensor actual)
    {
        Assert.Equal(expected.shape, actual.shape);
        return (expected - actual).abs().max().item<float>();
    }

    [Theory]
    [InlineData(false, null, 1e-5, 2)]
    [InlineData(false, 10, 0.1, 1)]
    [InlineData(true, null, 1e-3, 2)]
    [InlineData(true, 7, 1e-5, 1)]
    public void Layers_match_an_independent_reference_of_torchvision_resnet(bool bottleneck, int? classes, double eps, int batch)
    {
        var config = Small(bottleneck, classes, eps);
        var model = ResNet.Create("resnet", config, batch);
        Assert.Equal(2 + 2 * 5, model.Layers.Count); // stem, two layers per block, head
        var source = new SeededWeights(13);
        var sd = StateDict(model, source);
        int downsamples = bottleneck ? 3 : 2; // bottleneck layer1.0 widens 8 → 32: a downsample too
        Assert.Equal(5 + 5 * (bottleneck ? 15 : 10) + 5 * downsamples + (classes is null ? 0 : 2), sd.Count);
        using var x = model.MakeInput(3);
        using var actual = OffloadEquality.HostForward(model, source, x);
        using var expected = Reference(config, sd, x);
        foreach (var t in sd.Values) t.Dispose();
        Assert.Equal(classes is int k ? new long[] { batch, k } : new long[] { batch, config.Features, 1, 1 }, actual.shape);
        double spread = expected.std().item<float>(), worst = MaxDifference(expected, actual);
        output.WriteLine($"bottleneck {bottleneck}, fc {classes}: output std {spread:G3}, max |difference| {worst:G3}");
        Assert.True(spread > 0.1, $"output std {spread:G3}: too small for mistakes to show");
        Assert.True(worst <= 1e-4 * Math.Max(1, spread), $"max |difference| {worst:G3}");
    }

    /// <summary>What each forward leaves in its dispose scope beyond its input, weights and output, plus (the stem) the max pool's
    /// int64 indices a device kernel keeps inside the call, is what the layer declares.</summary>
    [Theory]
    [InlineData(false, null, 1)]
    [InlineData(false, 5, 2)]
    [InlineData(true, 5, 2)]
    [InlineData(true, null, 1)]
    public void Each_layer_declares_the_temporaries_its_forward_holds(bool bottleneck, int? classes, int batch)
    {
        var model = ResNet.Create("resnet", Small(bottleneck, classes), batch);
        var source = new SeededWeights(8);
        var acts = model.ActivationShapes();
        for (int i = 0; i < model.Layers.Count; i++)
        {
            var layer = model.Layers[i];
            var weights = source.Load(layer);
            using var input = randn(acts[i].Shape);
            long held = TensorProbe.HeldBytes(layer, weights, input);
            foreach (var w in weights.Values) w.Dispose();
            long indices = layer is ResNetStem ? acts[i + 1].Shape.Aggregate(1L, (a, b) => a * b) * sizeof(long) : 0;
            if (layer is not ResNetHead || classes is not null) Assert.True(held > 0, $"{layer.Name} holds no temporaries: the reference is broken");
            Assert.Equal(held + indices, layer.WorkspaceBytes(acts[i].Shape));
        }
    }

    /// <summary>The rule of the split block: layer "a" carries the identity in its trailing channels, bit for bit the block's input
    /// (no downsample) or downsample.1(downsample.0(input)).</summary>
    [Fact]
    public void A_blocks_first_layer_carries_the_identity_in_its_trailing_channels()
    {
        var config = Small();
        var model = ResNet.Create("resnet", config, 2);
        var source = new SeededWeights(5);
        var a = (ResNetBlockIn)model.Layers[1];
        Assert.Equal("layer1.0.a", a.Name);
        Assert.False(a.Shape.Downsample);
        using var scope = NewDisposeScope();
        var x = randn(2, 8, 10, 9);
        var y = a.Forward(source.Load(a), x);
        Assert.Equal(new long[] { 2, 16, 10, 9 }, y.shape);
        Assert.Equal(TensorBytes.Raw(x), TensorBytes.Raw(y.narrow(1, 8, 8).contiguous()));
        var down = (ResNetBlockIn)model.Layers.First(l => l is ResNetBlockIn { Shape.Downsample: true });
        Assert.Equal("layer2.0.a", down.Name);
        var w = source.Load(down);
        var x2 = randn(2, 8, 10, 9);
        var y2 = down.Forward(w, x2);
        var expected = F.batch_norm(F.conv2d(x2, w["layer2.0.downsample.0.weight"], null, [2, 2]), w["layer2.0.downsample.1.running_mean"],
            w["layer2.0.downsample.1.running_var"], w["layer2.0.downsample.1.weight"], w["layer2.0.downsample.1.bias"], false, 0, 1e-5);
        Assert.True(MaxDifference(expected, y2.narrow(1, 16, 16)) <= 1e-5); // BatchNorm in place as x · s + t: not bit for bit F.batch_norm
    }

    [Fact]
    public async Task Every_window_and_swap_is_bit_identical_to_resident()
    {
        var model = ResNet.Create("resnet", new ResNetConfig([1, 1], Bottleneck: false, Classes: 6, ImageHeight: 32, ImageWidth: 32, Width: 8), 2);
        var source = new SeededWeights(21);
        using var x = model.MakeInput(2);
        var cases = OffloadEquality.EveryWindowAndSwap(model.Layers.Count);
        await OffloadEquality.AssertBitIdenticalToResident(Sys, model, source, x, cases);
    }

    // ---- the packaged ImageNet ResNet-18 (CNTK's export) against ONNX Runtime ----

    /// <summary>ONNX Runtime's output of <paramref name="model"/> for each row of <paramref name="pixels"/> (the file's batch is 1).</summary>
    static float[] OnnxRuntime(string model, Tensor pixels)
    {
        using var session = new InferenceSession(model);
        string input = session.InputMetadata.Keys.Single();
        var all = new List<float>();
        for (long row = 0; row < pixels.shape[0]; row++)
        {
            using var one = pixels.narrow(0, row, 1).contiguous();
            var dense = new DenseTensor(one.data<float>().ToArray(), [1, .. one.shape.Select(d => (int)d).Skip(1)]);
            using var results = session.Run([NamedOnnxValue.CreateFromTensor(input, dense)]);
            all.AddRange(results.Single().AsTensor<float>().ToArray());
        }
        return [.. all];
    }

    /// <summary>A spec for the packaged ResNet-18 over <paramref name="pixels"/> (written to a .npy: the model's input file).</summary>
    ModelSpec ResNet18Spec(Tensor pixels)
    {
        string npy = Path.Combine(Path.GetTempPath(), $"resnet-spec-{Guid.NewGuid():N}.npy");
        Npy.Write(npy, TensorPayloads.From(pixels));
        cleanup.Add(npy);
        return ModelCatalog.CheckpointSpec(OnnxFixture.ResNet18, 1, 0, 3, npy);
    }

    readonly List<string> cleanup = [];

    protected override void AfterAll()
    {
        foreach (var f in cleanup) File.Delete(f);
        base.AfterAll();
    }

    /// <summary>Seeded pixels as the CNTK graph takes them: RGB 0..255 made BGR minus a mean near ImageNet's (a random image, not
    /// noise around zero, so the features are the size real ones are).</summary>
    static Tensor SeededPixels(int batch)
    {
        using var g = new Generator(2024);
        return rand([batch, 3, 224, 224], generator: g).mul_(255).sub_(115);
    }

    async Task<(float[] Features, PassReport Report)> Run(ModelSpec spec, long capacity, int? k, int? s)
    {
        using var h = new EngineHarness(Sys, spec, capacity);
        var (bytes, report) = await h.Pass(h.Policy(k, s));
        var features = new float[bytes.Length / sizeof(float)];
        Buffer.BlockCopy(bytes, 0, features, 0, bytes.Length);
        return (features, report);
    }

    double Compare(float[] expected, float[] actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        double worst = expected.Zip(actual, (e, a) => Math.Abs((double)e - a)).Max();
        double largest = expected.Max(v => Math.Abs((double)v));
        output.WriteLine($"{what}: max |ours - ONNX Runtime| = {worst:G3} over {expected.Length} features (largest |feature| {largest:G3})");
        Assert.True(largest > 0.5, $"features as large as {largest:G3}: too small for mistakes to show");
        Assert.True(worst <= 1e-4, $"{what}: max |difference| {worst:G3} exceeds 1e-4");
        return worst;
    }

    [Fact]
    public void The_import_follows_the_graph_to_torchvisions_resnet18_without_its_fc()
    {
        var (graph, imported) = OnnxImport.Import(OnnxFixture.ResNet18, "resnet");
        var spec = ModelCatalog.CheckpointSpec(OnnxFixture.ResNet18, 1, 0, 3);
        Assert.Equal("resnet", spec.Name); // claimed by its one float image input
        var model = ModelCatalog.Create(spec);
        output.WriteLine(string.Join(", ", model.Layers.Select(l => l.Name)));
        Assert.Equal(1 + 2 * 9 + 1, model.Layers.Count); // this export's layer4 has three blocks, torchvision's resnet18 two
        Assert.Equal(spec.Blocks, model.Layers.Count);
        Assert.Equal([1L, 512, 1, 1], model.ActivationShapes()[^1].Shape);
        // every parameter of every layer is in the table, and nothing else: 22 convs (19 + 3 downsamples) and their BatchNorms
        var names = model.Layers.SelectMany(l => l.Parameters).Select(p => p.Name).ToList();
        Assert.Equal(names.Order(), imported.Table.Keys.Order());
        Assert.Equal(22 * 5, names.Count);
        Assert.Equal(graph.Nodes.Count(n => n.OpType == "Conv"), names.Count(n => n.EndsWith("conv1.weight") || n.EndsWith("conv2.weight")
            || n.EndsWith("downsample.0.weight")));
        Assert.Equal("Parameter91", imported.Table["conv1.weight"].Value); // the stem's conv, by the graph's edges, not its names
        Assert.Equal("Parameter199", imported.Table["layer2.0.downsample.0.weight"].Value);
        double mb = model.Bytes / 1e6;
        output.WriteLine($"ResNet-18 features: {model.Layers.Count} layers, {mb:F1} MB; largest layer {model.Layers.Max(l => l.Bytes) / 1e6:F1} MB");
        Assert.InRange(mb, 63, 64); // the file is 63.65 MB: its weights and little else
        using var weights = ModelCatalog.Weights(spec) as IDisposable;
    }

    [Fact]
    public async Task Features_of_seeded_pixels_match_onnx_runtime_with_window_2()
    {
        using var pixels = SeededPixels(2);
        var spec = ResNet18Spec(pixels);
        Assert.Equal(2, ModelCatalog.Create(spec).InputShape[0]); // the input file's batch
        var expected = OnnxRuntime(OnnxFixture.ResNet18, pixels);
        var (ours, _) = await Run(spec, 256L << 20, 2, 1);
        Compare(expected, ours, "seeded pixels, window 2");
    }

    /// <summary>A PNG written here with SkiaSharp, through our image path (ML.NET's ResNetPreprocess.onnx, followed by
    /// <see cref="ResNetImages"/>); ONNX Runtime runs the same preprocessed tensor. Then the same on a simulated device smaller
    /// than a quarter of the weights: window 1 (two of layer4's 9.4 MB halves do not fit in 15.9 MB).</summary>
    [Fact]
    public async Task Features_of_an_image_match_onnx_runtime_and_on_a_device_under_a_quarter_of_the_weights()
    {
        string png = WritePng(Path.Combine(Path.GetTempPath(), $"resnet-spec-{Guid.NewGuid():N}.png"), 300, 260);
        cleanup.Add(png);
        Assert.Equal(OnnxFixture.ResNetPreprocess, ResNetImages.PreprocessBeside(OnnxFixture.ResNet18));
        using var pixels = ResNetImages.Load(OnnxFixture.ResNet18, [png, png]);
        Assert.Equal(new long[] { 2, 3, 224, 224 }, pixels.shape);
        // ML.NET's graph on our RGB pixels is what ONNX Runtime makes of them too
        using (var rgb = ImageInput.Load([png, png], ResNetImages.RawPixels(224, 224)))
        {
            var prepared = OnnxRuntime(OnnxFixture.ResNetPreprocess, rgb);
            Assert.True(prepared.Zip(pixels.data<float>().ToArray(), (a, b) => Math.Abs(a - b)).Max() <= 1e-4);
        }
        var spec = ResNet18Spec(pixels);
        var expected = OnnxRuntime(OnnxFixture.ResNet18, pixels);
        var (ours, _) = await Run(spec, 256L << 20, 2, 2);
        Compare(expected, ours, "an image, window 2");

        // one image (at batch 2 the stem's own activations and workspace, 16 MB, exceed a quarter of the weights)
        using var one = pixels.narrow(0, 0, 1);
        var single = ResNet18Spec(one);
        var model = ModelCatalog.Create(single);
        long quarter = model.Bytes / 4;
        var (small, report) = await Run(single, quarter, 1, 1);
        output.WriteLine($"device {quarter} bytes (a quarter of {model.Bytes}), window 1: peak {report.PeakDeviceBytes} bytes");
        Assert.True(report.PeakDeviceBytes <= quarter);
        Assert.Equal(ours[..512], small); // bit-identical to the first row at window 2
        Compare(expected[..512], small, "an image, device under a quarter of the weights, window 1");
        await Assert.ThrowsAsync<PassFailedException>(() => Run(single, quarter, 2, 1));
    }

    [Fact]
    public async Task The_packaged_model_is_bit_identical_across_windows_and_swaps()
    {
        using var pixels = SeededPixels(1);
        var spec = ResNet18Spec(pixels);
        var (resident, _) = await Run(spec, 512L << 20, null, null);
        foreach (var (k, s) in new[] { (1, 1), (2, 1), (3, 2), (5, 5), (18, 7) })
        {
            var (ours, _) = await Run(spec, 512L << 20, k, s);
            Assert.True(resident.SequenceEqual(ours), $"k={k}, k'={s} differs from resident");
        }
    }

    [Fact]
    public void A_bert_graph_given_family_resnet_is_refused_at_its_first_node()
    {
        var e = Assert.Throws<OnnxException>(() => OnnxImport.Import(OnnxFixture.MiniLm, "resnet"));
        output.WriteLine(e.Message);
        Assert.StartsWith($"{OnnxFixture.MiniLm}: node ", e.Message);
        Assert.Contains("resnet takes one float image input", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.False(new ResNetOnnx().Claims(OnnxGraph.Load(OnnxFixture.MiniLm)));
    }

    static string WritePng(string path, int width, int height) => TestImages.Write(path, height, width,
        (y, x) => new SKColor((byte)(x * 255 / width), (byte)(y * 255 / height), (byte)((x * y / 7) % 256)));

    // ---- the CLI: run --model PATH.onnx --image ----

    /// <summary>The CLI's bound here: it loads and runs the packaged ResNet-18 twice.</summary>
    static readonly TimeSpan ResNetCli = TimeSpan.FromMinutes(3);

    /// <summary>Two images through the CLI on a device under a quarter of the weights, window 1: the .npy it writes is ONNX
    /// Runtime's features for the same preprocessed pixels; an image that does not decode is one line and a non-zero exit.</summary>
    [Fact]
    public void Run_with_images_writes_onnx_runtimes_features_and_refuses_an_image_that_does_not_decode()
    {
        string png = WritePng(Path.Combine(Path.GetTempPath(), $"resnet-cli-{Guid.NewGuid():N}.png"), 240, 320);
        string npy = Path.Combine(Path.GetTempPath(), $"resnet-cli-{Guid.NewGuid():N}.npy");
        string broken = Path.Combine(Path.GetTempPath(), $"resnet-cli-{Guid.NewGuid():N}.jpg");
        File.WriteAllText(broken, "not a JPEG\n");
        cleanup.AddRange([png, npy, broken]);
        var (code, stdout, stderr) = CliProcess.Run(ResNetCli, "run", "--model", OnnxFixture.ResNet18, "--image", png, "--window", "1", "--swap", "1",
            "--device-memory", "15MiB", "--output", npy);
        Assert.True(code == 0, stderr + stdout);
        var (descr, shape, data) = Npy.Read(npy);
        Assert.Equal("<f4", descr);
        Assert.Equal([1L, 512, 1, 1], shape);
        var ours = new float[data.Length / sizeof(float)];
        Buffer.BlockCopy(data, 0, ours, 0, data.Length);
        using var pixels = ResNetImages.Load(OnnxFixture.ResNet18, [png]);
        Compare(OnnxRuntime(OnnxFixture.ResNet18, pixels), ours, "the CLI, one image, 15 MiB device (under a quarter of the weights), window 1");

        (code, stdout, stderr) = CliProcess.Run(ResNetCli, "run", "--model", OnnxFixture.ResNet18, "--image", png, "--image", broken);
        output.WriteLine(stderr.Trim());
        Assert.NotEqual(0, code);
        Assert.Contains(broken, stderr);
        Assert.Single(stderr.Trim().Split('\n'));
    }
}
