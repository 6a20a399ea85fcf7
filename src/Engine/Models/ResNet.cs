using System.Collections.Immutable;
using System.Globalization;
using Superpipeline.Engine.Policy;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Engine.Models;

/// <summary>The shape of a ResNet (torchvision's resnet.py): blocks per stage (ResNet-18: 2, 2, 2, 2; ResNet-50: 3, 4, 6, 3 with
/// bottleneck blocks), the stem's width (64), the classes of the fc head (null: the model ends at the global average pool and
/// gives the pooled features [N, C, 1, 1]), BatchNorm's epsilon and the image size the model takes.</summary>
public sealed record ResNetConfig(ImmutableArray<int> Stages, bool Bottleneck = false, int? Classes = null, double BatchNormEps = 1e-5,
    int ImageHeight = 224, int ImageWidth = 224, int Width = 64)
{
    /// <summary>torchvision's resnet18 without its fc: what the packaged ResNet18.onnx is.</summary>
    public static ResNetConfig ResNet18Features { get; } = new([2, 2, 2, 2]);

    /// <summary>Output channels of a block's last conv over its planes: 1 for basic blocks, 4 for bottlenecks.</summary>
    public int Expansion => Bottleneck ? 4 : 1;

    /// <summary>planes of stage <paramref name="stage"/> (0-based): 64, 128, 256, 512 for the standard width.</summary>
    public int Planes(int stage) => Width << stage;

    /// <summary>Channels of the features before the pool (512 for ResNet-18, 2048 for ResNet-50).</summary>
    public int Features => Planes(Stages.Length - 1) * Expansion;

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first bad field.</summary>
    public void Validate()
    {
        if (Stages.IsDefaultOrEmpty || Stages.Any(b => b < 1))
            throw new ArgumentException($"resnet: stages must be one or more blocks each (got [{string.Join(", ", Stages.IsDefault ? [] : Stages)}])");
        if (Width < 1) throw new ArgumentException($"resnet: width must be at least 1 (got {Width})");
        if (Classes is < 1) throw new ArgumentException($"resnet: classes must be at least 1 (got {Classes})");
        if (!(BatchNormEps > 0)) throw new ArgumentException($"resnet: the BatchNorm epsilon must be positive (got {BatchNormEps})");
        if (ImageHeight < 32 || ImageWidth < 32)
            throw new ArgumentException($"resnet: the image must be at least 32×32 (got {ImageHeight}×{ImageWidth})");
    }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"resnet(stages [{string.Join(", ", Stages)}], {(Bottleneck ? "bottleneck" : "basic")} blocks, width {Width}, "
        + $"{(Classes is int c ? $"fc {c}" : "no fc")}, eps {BatchNormEps}, image {ImageHeight}×{ImageWidth})");
}

/// <summary>The ResNet family as streamed layers, under torchvision's tensor names (<see cref="ResNetNames"/>): the stem (conv1,
/// bn1, ReLU, max pool 3×3/2), every residual block as TWO layers, and the head (global average pool, then fc when the config has
/// classes). Splitting a block lets a device smaller than one block's weights stream it (ResNet-18's layer4 blocks are ~9.4 MB
/// per half).
/// <para>The rule for the residual: the block's first layer ("layerL.B.a": conv1/bn1/ReLU, and conv2/bn2/ReLU for a bottleneck)
/// outputs ONE tensor [N, mid + out, H', W']: its own result in channels [0, mid) and the block's identity (the input, or
/// downsample.1(downsample.0(input)) when the block has a downsample) in channels [mid, mid + out). The second layer
/// ("layerL.B.b": conv2/bn2, or conv3/bn3 for a bottleneck) reads the two parts back by channel ranges and outputs
/// ReLU(bn(conv(part 0)) + identity), [N, out, H', W'].</para>
/// BatchNorm is the inference form with the running statistics. Conv padding is torchvision's (k / 2 each side); an importer
/// whose graph pads otherwise checks the two agree at the image size.</summary>
public static class ResNet
{
    /// <summary>Seeded weights: convs N(0, √(2 / fan_in)) (He, so activations keep their scale through the blocks), BN weight
    /// 1 + N(0, 0.2), bias and running mean N(0, 0.2), running var 0.5 + U(0, 1).</summary>
    public const double NormStd = 0.2;

    /// <summary>The model over <paramref name="batch"/> images of the config's size; its seeded input is N(0, 1) pixels (an
    /// already-normalised image); <paramref name="input"/> replaces it (a float32 [batch, 3, H, W] host tensor).</summary>
    public static LayeredModel Create(string name, ResNetConfig config, int batch, Func<long, Tensor>? input = null)
    {
        config.Validate();
        if (batch < 1) throw new FieldException(FieldException.Batch, $"must be at least 1 (got {batch})");
        var layers = new List<Layer> { new ResNetStem(0, config) };
        int inChannels = config.Width;
        for (int s = 0; s < config.Stages.Length; s++)
            for (int b = 0; b < config.Stages[s]; b++)
            {
                int stride = s > 0 && b == 0 ? 2 : 1;
                var shape = new ResNetBlockShape(s + 1, b, inChannels, config.Planes(s), config.Planes(s) * config.Expansion, stride,
                    config.Bottleneck);
                layers.Add(new ResNetBlockIn(layers.Count, shape, config));
                layers.Add(new ResNetBlockOut(layers.Count, shape, config));
                inChannels = shape.Out;
            }
        layers.Add(new ResNetHead(layers.Count, config));
        long[] inputShape = [batch, 3, config.ImageHeight, config.ImageWidth];
        return new LayeredModel(name, layers, inputShape, ScalarType.Float32, input ?? (seed =>
        {
            using var g = new Generator(unchecked((ulong)seed ^ 0x7e5_0e7UL));
            return randn(inputShape, generator: g);
        }));
    }

    /// <summary>Output size of a conv or pool along one side: (size + 2·pad − kernel) / stride + 1.</summary>
    public static long OutSize(long size, long kernel, long stride, long pad) => (size + 2 * pad - kernel) / stride + 1;

    internal static Tensor Conv(Tensor x, Tensor w, long stride) =>
        F.conv2d(x, w, null, strides: [stride, stride], padding: [w.shape[2] / 2, w.shape[3] / 2]);

    /// <summary>BatchNorm2d in inference form, in place on <paramref name="x"/> (a conv's fresh output): x · s + t per channel with
    /// s = weight / √(running_var + eps) and t = bias − running_mean · s, two [C] temporaries (<see cref="BatchNormBytes"/>).
    /// In place, a conv's output and its BN's are one tensor: the stem's workspace halves.</summary>
    internal static Tensor BatchNorm(Tensor x, IReadOnlyDictionary<string, Tensor> w, string bn, double eps)
    {
        var scale = (w[$"{bn}.running_var"] + eps).rsqrt_().mul_(w[$"{bn}.weight"]);
        var shift = (w[$"{bn}.running_mean"] * scale).neg_().add_(w[$"{bn}.bias"]);
        return x.mul_(scale.view(1, -1, 1, 1)).add_(shift.view(1, -1, 1, 1));
    }

    /// <summary>The temporaries of one <see cref="BatchNorm"/> over <paramref name="channels"/>: its scale and shift.</summary>
    internal static long BatchNormBytes(long channels) => 2 * channels * sizeof(float);

    internal static IEnumerable<ParamSpec> BatchNormParameters(string bn, long channels) =>
        [new($"{bn}.weight", channels), new($"{bn}.bias", channels), new($"{bn}.running_mean", channels), new($"{bn}.running_var", channels)];

    internal static Tensor Initial(Generator g, ParamSpec p) => p.Name switch
    {
        _ when p.Shape.Length == 4 => randn([.. p.Shape], generator: g).mul_(Math.Sqrt(2.0 / (p.Shape[1] * p.Shape[2] * p.Shape[3]))),
        _ when p.Name.EndsWith(".running_var", StringComparison.Ordinal) => rand([.. p.Shape], generator: g).add_(0.5),
        _ when p.Name.EndsWith(".weight", StringComparison.Ordinal) && p.Shape.Length == 1 =>
            randn([.. p.Shape], generator: g).mul_(NormStd).add_(1.0),
        _ when p.Shape.Length == 2 => randn([.. p.Shape], generator: g).mul_(Math.Sqrt(1.0 / p.Shape[1])),
        _ => randn([.. p.Shape], generator: g).mul_(NormStd),
    };

    internal static void Check(long[] input, long channels, string layer, string what = "activations")
    {
        if (input.Length != 4 || input[1] != channels || input[0] < 1 || input[2] < 1 || input[3] < 1)
            throw new ArgumentException($"{layer}: expected {what} [batch, {channels}, height, width], got [{string.Join(", ", input)}]");
    }

    internal static IReadOnlyDictionary<string, Tensor> Initialize(IReadOnlyList<ParamSpec> parameters, Generator g) =>
        parameters.ToDictionary(p => p.Name, p => Initial(g, p));
}

/// <summary>torchvision's state-dict names for a ResNet: conv1, bn1, layerL.B.{conv1, bn1, conv2, bn2, conv3, bn3},
/// layerL.B.downsample.{0, 1}, fc.</summary>
public static class ResNetNames
{
    public static string Block(int stage, int block, string tensor) => $"layer{stage}.{block}.{tensor}";
    public const string Conv1 = "conv1.weight", Bn1 = "bn1", FcWeight = "fc.weight", FcBias = "fc.bias";
}

/// <summary>One residual block's geometry: stage L (1-based, torchvision's layerL), block B, channels in, planes (mid),
/// channels out, stride (of conv1 in a basic block, of conv2 in a bottleneck, and of the downsample).</summary>
public sealed record ResNetBlockShape(int Stage, int Block, int In, int Mid, int Out, int Stride, bool Bottleneck)
{
    /// <summary>A downsample (1×1 conv with the stride, then BN) when the identity's shape changes.</summary>
    public bool Downsample => Stride != 1 || In != Out;
}

/// <summary>conv1 (7×7/2, pad 3) + bn1 + ReLU + max pool (3×3/2, pad 1): [N, 3, H, W] → [N, width, H/4, W/4].</summary>
public sealed class ResNetStem(int index, ResNetConfig c) : Layer(index, "stem")
{
    public override IReadOnlyList<ParamSpec> Parameters { get; } =
        [new(ResNetNames.Conv1, c.Width, 3, 7, 7), .. ResNet.BatchNormParameters(ResNetNames.Bn1, c.Width)];

    long[] ConvShape(long[] input) => [input[0], c.Width, ResNet.OutSize(input[2], 7, 2, 3), ResNet.OutSize(input[3], 7, 2, 3)];

    public override long[] OutputShape(long[] input)
    {
        ResNet.Check(input, 3, Name, "images");
        var conv = ConvShape(input);
        return [input[0], c.Width, ResNet.OutSize(conv[2], 3, 2, 1), ResNet.OutSize(conv[3], 3, 2, 1)];
    }

    public override double Flops(long[] input)
    {
        var conv = ConvShape(input);
        return 2.0 * conv[0] * conv[1] * conv[2] * conv[3] * 3 * 49;
    }

    /// <summary>The conv's output (N·C·H1·W1 floats; BN and ReLU are in place on it) and BN's scale and shift; inside the max
    /// pool, the indices a device kernel keeps beside the output (int64, the output's elements).</summary>
    public override long WorkspaceBytes(long[] input)
    {
        var conv = ConvShape(input);
        var output = OutputShape(input);
        return conv.Aggregate(1L, (a, b) => a * b) * sizeof(float) + ResNet.BatchNormBytes(c.Width)
            + output.Aggregate(1L, (a, b) => a * b) * sizeof(long);
    }

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        var h = ResNet.BatchNorm(ResNet.Conv(x, w[ResNetNames.Conv1], 2), w, ResNetNames.Bn1, c.BatchNormEps).relu_();
        return F.max_pool2d(h, [3, 3], [2, 2], [1, 1]);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => ResNet.Initialize(Parameters, g);
}

/// <summary>A block's first layer "layerL.B.a": conv1/bn1/ReLU (basic: 3×3 with the stride; bottleneck: 1×1, then conv2/bn2/ReLU
/// 3×3 with the stride) and the identity (downsample when there is one), concatenated by channels: [N, In, H, W] →
/// [N, Mid + Out, H', W'] (see <see cref="ResNet"/> for the rule).</summary>
public sealed class ResNetBlockIn(int index, ResNetBlockShape b, ResNetConfig c)
    : Layer(index, $"layer{b.Stage}.{b.Block}.a")
{
    public ResNetBlockShape Shape => b;

    string N(string tensor) => ResNetNames.Block(b.Stage, b.Block, tensor);

    public override IReadOnlyList<ParamSpec> Parameters { get; } = Specs(b);

    static IReadOnlyList<ParamSpec> Specs(ResNetBlockShape b)
    {
        string N(string tensor) => ResNetNames.Block(b.Stage, b.Block, tensor);
        var list = new List<ParamSpec>();
        if (b.Bottleneck)
        {
            list.Add(new(N("conv1.weight"), b.Mid, b.In, 1, 1)); list.AddRange(ResNet.BatchNormParameters(N("bn1"), b.Mid));
            list.Add(new(N("conv2.weight"), b.Mid, b.Mid, 3, 3)); list.AddRange(ResNet.BatchNormParameters(N("bn2"), b.Mid));
        }
        else
        {
            list.Add(new(N("conv1.weight"), b.Mid, b.In, 3, 3)); list.AddRange(ResNet.BatchNormParameters(N("bn1"), b.Mid));
        }
        if (b.Downsample)
        {
            list.Add(new(N("downsample.0.weight"), b.Out, b.In, 1, 1)); list.AddRange(ResNet.BatchNormParameters(N("downsample.1"), b.Out));
        }
        return list;
    }

    long Side(long size) => ResNet.OutSize(size, 3, b.Stride, 1);

    public override long[] OutputShape(long[] input)
    {
        ResNet.Check(input, b.In, Name);
        return [input[0], b.Mid + b.Out, Side(input[2]), Side(input[3])];
    }

    public override double Flops(long[] input)
    {
        double n = input[0], hw = input[2] * input[3], hw2 = Side(input[2]) * Side(input[3]);
        double convs = b.Bottleneck ? hw * b.Mid * b.In + hw2 * b.Mid * b.Mid * 9 : hw2 * b.Mid * b.In * 9;
        return 2 * n * (convs + (b.Downsample ? hw2 * b.Out * b.In : 0));
    }

    /// <summary>Each conv's output (BN and ReLU are in place on it) and each BN's scale and shift: basic N·Mid·H'·W'; a
    /// bottleneck adds its 1×1's at the input's size, N·Mid·H·W; a downsample adds N·Out·H'·W'. The concatenation is the output.</summary>
    public override long WorkspaceBytes(long[] input)
    {
        long n = input[0], hw = input[2] * input[3], hw2 = Side(input[2]) * Side(input[3]);
        long floats = n * b.Mid * hw2 + (b.Bottleneck ? n * b.Mid * hw : 0) + (b.Downsample ? n * b.Out * hw2 : 0);
        long norms = ResNet.BatchNormBytes(b.Mid) * (b.Bottleneck ? 2 : 1) + (b.Downsample ? ResNet.BatchNormBytes(b.Out) : 0);
        return floats * sizeof(float) + norms;
    }

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        Tensor h;
        if (b.Bottleneck)
        {
            h = ResNet.BatchNorm(ResNet.Conv(x, w[N("conv1.weight")], 1), w, N("bn1"), c.BatchNormEps).relu_();
            h = ResNet.BatchNorm(ResNet.Conv(h, w[N("conv2.weight")], b.Stride), w, N("bn2"), c.BatchNormEps).relu_();
        }
        else h = ResNet.BatchNorm(ResNet.Conv(x, w[N("conv1.weight")], b.Stride), w, N("bn1"), c.BatchNormEps).relu_();
        var identity = b.Downsample
            ? ResNet.BatchNorm(ResNet.Conv(x, w[N("downsample.0.weight")], b.Stride), w, N("downsample.1"), c.BatchNormEps)
            : x;
        return cat([h, identity], 1);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => ResNet.Initialize(Parameters, g);
}

/// <summary>A block's second layer "layerL.B.b": ReLU(bn(conv(channels [0, Mid))) + channels [Mid, Mid + Out)), with conv2/bn2
/// (3×3) in a basic block and conv3/bn3 (1×1) in a bottleneck: [N, Mid + Out, H', W'] → [N, Out, H', W'].</summary>
public sealed class ResNetBlockOut(int index, ResNetBlockShape b, ResNetConfig c)
    : Layer(index, $"layer{b.Stage}.{b.Block}.b")
{
    public ResNetBlockShape Shape => b;

    string Conv => b.Bottleneck ? "conv3" : "conv2";
    string Bn => b.Bottleneck ? "bn3" : "bn2";
    long Kernel => b.Bottleneck ? 1 : 3;

    public override IReadOnlyList<ParamSpec> Parameters { get; } =
    [
        new(ResNetNames.Block(b.Stage, b.Block, (b.Bottleneck ? "conv3" : "conv2") + ".weight"), b.Out, b.Mid, b.Bottleneck ? 1 : 3, b.Bottleneck ? 1 : 3),
        .. ResNet.BatchNormParameters(ResNetNames.Block(b.Stage, b.Block, b.Bottleneck ? "bn3" : "bn2"), b.Out),
    ];

    public override long[] OutputShape(long[] input)
    {
        ResNet.Check(input, b.Mid + b.Out, Name);
        return [input[0], b.Out, input[2], input[3]];
    }

    public override double Flops(long[] input) => 2.0 * input[0] * input[2] * input[3] * b.Out * b.Mid * Kernel * Kernel;

    /// <summary>BN's scale and shift (the conv's output, normalised, added to and ReLU'd in place, is the output), and for a
    /// batch above one the conv's input made contiguous (N·Mid·H·W: channels [0, Mid) of one image are contiguous, of several
    /// are not).</summary>
    public override long WorkspaceBytes(long[] input)
    {
        long n = input[0], hw = input[2] * input[3];
        return (n > 1 ? n * b.Mid * hw * sizeof(float) : 0) + ResNet.BatchNormBytes(b.Out);
    }

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        var h = x.narrow(1, 0, b.Mid).contiguous();
        var identity = x.narrow(1, b.Mid, b.Out);
        string conv = ResNetNames.Block(b.Stage, b.Block, Conv + ".weight"), bn = ResNetNames.Block(b.Stage, b.Block, Bn);
        return ResNet.BatchNorm(ResNet.Conv(h, w[conv], 1), w, bn, c.BatchNormEps).add_(identity).relu_();
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => ResNet.Initialize(Parameters, g);
}

/// <summary>The global average pool ([N, C, H, W] → [N, C, 1, 1], the pooled features) and, when the config has classes, the fc:
/// → [N, classes] logits (torchvision's avgpool, flatten, fc).</summary>
public sealed class ResNetHead(int index, ResNetConfig c) : Layer(index, c.Classes is null ? "pool" : "head")
{
    public override IReadOnlyList<ParamSpec> Parameters { get; } = c.Classes is int classes
        ? [new(ResNetNames.FcWeight, classes, c.Features), new(ResNetNames.FcBias, classes)]
        : [];

    public override long[] OutputShape(long[] input)
    {
        ResNet.Check(input, c.Features, Name);
        return c.Classes is int classes ? [input[0], classes] : [input[0], c.Features, 1, 1];
    }

    public override double Flops(long[] input) =>
        (double)input[0] * input[1] * input[2] * input[3] + (c.Classes is int k ? 2.0 * input[0] * input[1] * k : 0);

    /// <summary>None without an fc (the mean is the output); with one, the pooled features (N·C floats) the fc reads.</summary>
    public override long WorkspaceBytes(long[] input) => c.Classes is null ? 0 : input[0] * input[1] * sizeof(float);

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        var pooled = x.mean([2, 3], keepdim: true);
        return c.Classes is null ? pooled : F.linear(pooled.flatten(1), w[ResNetNames.FcWeight], w[ResNetNames.FcBias]);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => ResNet.Initialize(Parameters, g);
}
