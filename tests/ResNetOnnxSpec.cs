using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Engine;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Contracts;
using Superpipeline.Workers;
using TorchSharp;
using Xunit;
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

    static Tensor LayerForward(LayeredModel model, IWeightSource source, Tensor x)
    {
        using var scope = NewDisposeScope();
        using var noGrad = inference_mode();
        foreach (var layer in model.Layers) x = layer.Forward(source.Load(layer), x);
        return x.MoveToOuterDisposeScope();
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
        using var actual = LayerForward(model, source, x);
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
        Assert.Equal(TensorBytes.Raw(expected), TensorBytes.Raw(y2.narrow(1, 16, 16).contiguous()));
    }

    [Fact]
    public async Task Every_window_and_swap_is_bit_identical_to_resident()
    {
        var model = ResNet.Create("resnet", new ResNetConfig([1, 1], Bottleneck: false, Classes: 6, ImageHeight: 32, ImageWidth: 32, Width: 8), 2);
        var source = new SeededWeights(21);
        using var device = new SimulatedDevice("sim:0", 256L << 20, null);
        var tag = Guid.NewGuid().ToString("N")[..8];
        var layers = model.Layers.Select(l => Sys.ActorOf(LayerActor.Props(l, source, pin: false), $"{tag}-layer-{l.Index}")).ToArray();
        var loader = Sys.ActorOf(DeviceLoaderActor.Props(device, TimeSpan.FromSeconds(30)), $"{tag}-loader");
        using var x = model.MakeInput(2);
        async Task<byte[]> Pass(int? k, int? s)
        {
            var policy = OffloadPolicy.For(new PolicySpec(k, s), model.Layers.Count);
            var answer = await loader.Ask<object>(new DeviceLoaderActor.RunPass(model, layers, x, policy), TimeSpan.FromMinutes(2));
            if (answer is DeviceLoaderActor.PassFailed f) throw new PassFailedException(f.Reason);
            using var result = ((DeviceLoaderActor.PassSucceeded)answer).Output;
            return TensorBytes.Raw(result);
        }
        var resident = await Pass(null, null);
        using (var plain = LayerForward(model, source, x)) Assert.Equal(TensorBytes.Raw(plain), resident);
        long tensors = TensorProbe.LiveTensors();
        int n = model.Layers.Count, cases = 0;
        for (int k = 1; k <= n; k++)
            for (int s = 1; s <= k; s++, cases++)
            {
                var result = await Pass(k, s);
                Assert.True(resident.AsSpan().SequenceEqual(result), $"k={k}, k'={s} differs from resident");
            }
        Assert.Equal(n * (n + 1) / 2, cases);
        Assert.Equal(0, device.Memory.Reserved);
        Assert.Equal(tensors, TensorProbe.LiveTensors());
        foreach (var a in layers.Append(loader)) Sys.Stop(a);
    }
}
