using System.Collections.Immutable;
using Superpipeline.Contracts;
using Superpipeline.Engine.Images;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Onnx;

/// <summary>The "resnet" ONNX family: a torchvision-shaped ResNet (basic or bottleneck blocks) recognised by following the graph
/// from its one image input, node by node: the stem (Conv 7×7/2, BatchNormalization, Relu, MaxPool 3×3/2), residual blocks
/// (Conv, BatchNormalization, Relu, Conv, BatchNormalization [, Relu, Conv, BatchNormalization], the downsample Conv 1×1 +
/// BatchNormalization when there is one, Add, Relu), the pool (GlobalAveragePool, an AveragePool over the whole map, or
/// ReduceMean over H and W) and, when the graph goes on, the fc (Flatten or Reshape, then Gemm). Conv pads may be asymmetric
/// (CNTK's exports pad [1, 1, 0, 0]) when they give torchvision's windows at the graph's image size. The output is the graph's:
/// the pooled features [N, C, 1, 1] when it ends at the pool, logits [N, classes] when it ends in the fc. Input (ModelSpec.Input):
/// a float32 .npy [N, 3, H, W] of preprocessed pixels at the graph's image size; without one, N(0, 1) pixels seeded.</summary>
public sealed class ResNetOnnx : IOnnxFamily
{
    /// <summary>The family's name ("resnet"), as --family and ModelSpec.Name give it.</summary>
    public const string Family = "resnet";

    public string Name => Family;

    /// <summary>One float input [N, 3, H, W].</summary>
    public bool Claims(OnnxGraph g) =>
        g.Inputs is [var x] && x.ElementType == "float" && x.Shape.Length == 4 && x.Shape[1] == 3;

    public OnnxImported Import(OnnxGraph g)
    {
        var walk = new Walk(g);
        var config = walk.Run();
        return new OnnxImported(Name, walk.Table, spec => Create(spec, config));
    }

    /// <summary>The model for <paramref name="spec"/>: the batch of its input file when it has one (float32 [N, 3, H, W] at the
    /// config's image size), else spec.Batch seeded images.</summary>
    public static LayeredModel Create(ModelSpec spec, ResNetConfig config)
    {
        if (spec.Input is null) return ResNet.Create(spec.Name, config, spec.Batch);
        var (shape, data) = Pixels(spec.Input, config);
        return ResNet.Create(spec.Name, config, (int)shape[0], _ => TensorPayloads.ToTensor(new TensorPayload("Float32", shape, data)));
    }

    static (ImmutableArray<long> Shape, ImmutableArray<byte> Data) Pixels(string path, ResNetConfig c)
    {
        if (!File.Exists(path)) throw new ArgumentException($"{path}: not found");
        var (descr, shape, data) = Npy.Read(path);
        if (descr != "<f4") throw new ArgumentException($"{path}: pixels must be float32 (<f4), got '{descr}'");
        if (shape is not [>= 1, 3, var h, var w] || h != c.ImageHeight || w != c.ImageWidth)
            throw new ArgumentException(
                $"{path}: pixels must have shape [batch, 3, {c.ImageHeight}, {c.ImageWidth}], got [{string.Join(", ", shape)}]");
        if (data.Length != shape.Aggregate(1L, (a, b) => a * b) * sizeof(float))
            throw new ArgumentException($"{path}: data is {data.Length} bytes, not [{string.Join(", ", shape)}] float32");
        return ([.. shape], [.. data]);
    }

    /// <summary>One pass over the graph: the current value and its spatial size, the table of tensors found, the config.</summary>
    sealed class Walk(OnnxGraph g)
    {
        public Dictionary<string, OnnxParam> Table { get; } = new(StringComparer.Ordinal);
        double? eps;
        long height, width;

        OnnxException Misfit(OnnxNode n, string why) => OnnxException.AtNode(g, n, why);

        public ResNetConfig Run()
        {
            var input = g.Inputs.Count > 0 ? g.Inputs[0] : throw new OnnxException($"{g.File}: the graph has no input");
            var first = g.Consumers(input.Name) is [var c, ..] ? c : throw new OnnxException($"{g.File}: the input '{input.Name}' is not used");
            if (g.Inputs.Count != 1 || input.ElementType != "float" || input.Shape.Length != 4 || input.Shape[1] != 3)
                throw Misfit(first, $"resnet takes one float image input [N, 3, H, W]; '{input.Name}' is {input.ElementType} "
                    + $"[{string.Join(", ", input.Shape)}]{(g.Inputs.Count > 1 ? $" and the graph has {g.Inputs.Count} inputs" : "")}");
            first = Only(input.Name, "the image input");
            (height, width) = (input.Shape[2] > 0 ? input.Shape[2] : 224, input.Shape[3] > 0 ? input.Shape[3] : 224);
            long imageHeight = height, imageWidth = width;

            // stem: Conv 7×7/2 → BatchNormalization → Relu → MaxPool 3×3/2
            var conv = Expect(first, "Conv", "the stem's Conv 7×7/2 on the image input");
            int stemWidth = (int)ConvWeight(conv, ResNetNames.Conv1, null, 3, 7, 2);
            string x = Relu(BatchNorm(conv, ResNetNames.Bn1, stemWidth));
            var pool = Expect(Only(x, "the stem's ReLU"), "MaxPool", "the stem's MaxPool 3×3/2");
            Window(pool, 3, 2);
            x = pool.Outputs[0];

            // blocks, until the value is pooled
            var stages = new List<int>();
            bool? bottleneck = null;
            long channels = stemWidth;
            while (true)
            {
                var consumers = g.Consumers(x);
                if (consumers is [var only] && only.OpType is "GlobalAveragePool" or "AveragePool" or "ReduceMean") break;
                var main = consumers.FirstOrDefault(n => n.OpType == "Conv" && !IsDownsample(n));
                if (main is null || consumers.Count != 2)
                    throw Misfit(consumers.Count > 0 ? consumers[0] : throw new OnnxException($"{g.File}: '{x}' is not used"),
                        $"expected a residual block (its Conv and the identity's Add or downsample Conv) or the global pool after '{x}'");
                // a stage starts at the first block and at each block whose downsample strides (torchvision's layerL.0, L > 1)
                bool starts = stages.Count == 0 || consumers.Any(n => n != main && n.OpType == "Conv" && Stride(n) == 2);
                if (starts) stages.Add(0);
                int stage = stages.Count, block = stages[^1]++;
                long planes = (long)stemWidth << (stage - 1);
                (x, channels, bottleneck) = Block(consumers, main, x, stage, block, channels, planes, bottleneck);
            }
            if (stages.Count == 0) throw Misfit(g.Consumers(x)[0], "expected at least one residual block before the pool");

            // pool, then an optional fc
            var poolNode = g.Consumers(x)[0];
            GlobalPool(poolNode);
            x = poolNode.Outputs[0];
            int? classes = null;
            if (!IsOutput(x))
            {
                var flatten = Only(x, "the pool");
                if (flatten.OpType is not ("Flatten" or "Reshape"))
                    throw Misfit(flatten, "expected the graph's output, or Flatten/Reshape and the fc's Gemm after the pool");
                if (flatten.OpType == "Flatten" && flatten.Int("axis", 1) != 1) throw Misfit(flatten, "only Flatten with axis 1 is supported");
                var gemm = Expect(Only(flatten.Outputs[0], "the flatten"), "Gemm", "the fc's Gemm");
                classes = Fc(gemm, channels);
                x = gemm.Outputs[0];
                if (!IsOutput(x)) throw Misfit(Only(x, "the fc"), "expected the graph's output after the fc");
            }
            if (g.Outputs.Count != 1) throw new OnnxException($"{g.File}: resnet gives one output; the graph has {g.Outputs.Count}");
            var config = new ResNetConfig([.. stages], bottleneck ?? false, classes, eps ?? 1e-5, (int)imageHeight, (int)imageWidth, stemWidth);
            if (config.Features != channels) throw new OnnxException($"{g.File}: {channels} channels reach the pool, not {config.Features}");
            return config;
        }

        bool IsOutput(string value) => g.Outputs.Any(o => o.Name == value);

        /// <summary>The one consumer of <paramref name="value"/>; a refusal at its second consumer, or at its producer when none.</summary>
        OnnxNode Only(string value, string what)
        {
            var consumers = g.Consumers(value);
            if (consumers.Count == 1) return consumers[0];
            if (consumers.Count > 1) throw Misfit(consumers[1], $"{what}'s output '{value}' feeds {consumers.Count} nodes; expected one");
            var producer = g.Producer(value);
            throw producer is not null ? Misfit(producer, $"{what}'s output '{value}' is not used") : new OnnxException($"{g.File}: '{value}' is not used");
        }

        OnnxNode Expect(OnnxNode n, string op, string what) => n.OpType == op ? n : throw Misfit(n, $"expected {what}");

        /// <summary>A Conv followed by a BatchNormalization whose output feeds an Add: a block's downsample.</summary>
        bool IsDownsample(OnnxNode conv) =>
            g.Consumers(conv.Outputs[0]) is [{ OpType: "BatchNormalization" } bn] && g.Consumers(bn.Outputs[0]) is [{ OpType: "Add" }];

        long Stride(OnnxNode conv) => conv.Ints("strides") is [var s, ..] ? s : 1;

        /// <summary>A block from its input <paramref name="x"/>: the main path, the downsample, the Add and the Relu.</summary>
        (string, long, bool?) Block(IReadOnlyList<OnnxNode> consumers, OnnxNode conv1, string x, int stage, int block, long inChannels,
            long planes, bool? bottleneck)
        {
            string N(string tensor) => ResNetNames.Block(stage, block, tensor);
            long stride = stage > 1 && block == 0 ? 2 : 1; // torchvision's; each Conv's strides are checked against it
            var other = consumers.First(n => n != conv1);
            long hIn = height, wIn = width;

            // main path: basic conv1 3×3/s; bottleneck conv1 1×1, conv2 3×3/s
            long k1 = g.ConstantShape(Weight(conv1)) is [_, _, var kh, _] ? kh : 0;
            bool isBottleneck = k1 == 1;
            if (bottleneck is bool b && b != isBottleneck)
                throw Misfit(conv1, $"a {(isBottleneck ? "bottleneck" : "basic")} block after {(b ? "bottleneck" : "basic")} ones");
            long outChannels = isBottleneck ? planes * 4 : planes;
            string h;
            if (isBottleneck)
            {
                ConvWeight(conv1, N("conv1.weight"), planes, inChannels, 1, 1);
                h = Relu(BatchNorm(conv1, N("bn1"), planes));
                var conv2 = Expect(Only(h, $"layer{stage}.{block}'s first ReLU"), "Conv", $"layer{stage}.{block}'s conv2");
                ConvWeight(conv2, N("conv2.weight"), planes, planes, 3, stride);
                h = Relu(BatchNorm(conv2, N("bn2"), planes));
                var conv3 = Expect(Only(h, $"layer{stage}.{block}'s second ReLU"), "Conv", $"layer{stage}.{block}'s conv3");
                ConvWeight(conv3, N("conv3.weight"), outChannels, planes, 1, 1);
                h = BatchNorm(conv3, N("bn3"), outChannels);
            }
            else
            {
                ConvWeight(conv1, N("conv1.weight"), planes, inChannels, 3, stride);
                h = Relu(BatchNorm(conv1, N("bn1"), planes));
                var conv2 = Expect(Only(h, $"layer{stage}.{block}'s ReLU"), "Conv", $"layer{stage}.{block}'s conv2");
                ConvWeight(conv2, N("conv2.weight"), planes, planes, 3, 1);
                h = BatchNorm(conv2, N("bn2"), planes);
            }
            var add = Expect(Only(h, $"layer{stage}.{block}'s last BatchNormalization"), "Add", $"layer{stage}.{block}'s residual Add");

            // identity: x itself, or downsample.1(downsample.0(x))
            bool needsDownsample = stride != 1 || inChannels != outChannels;
            string identity = x;
            if (other.OpType == "Conv")
            {
                if (!needsDownsample) throw Misfit(other, $"a downsample where torchvision's layer{stage}.{block} has none");
                (long hOut, long wOut) = (height, width);
                (height, width) = (hIn, wIn);
                ConvWeight(other, N("downsample.0.weight"), outChannels, inChannels, 1, stride);
                identity = BatchNorm(other, N("downsample.1"), outChannels);
                if ((height, width) != (hOut, wOut)) throw Misfit(other, $"the downsample gives {height}×{width}, the main path {hOut}×{wOut}");
            }
            else if (other != add) throw Misfit(other, $"expected layer{stage}.{block}'s residual Add or downsample Conv");
            else if (needsDownsample) throw Misfit(add, $"layer{stage}.{block} changes the shape but adds its input without a downsample");
            if (add.Inputs.Count != 2 || !add.Inputs.Contains(h) || !add.Inputs.Contains(identity))
                throw Misfit(add, $"expected the sum of '{h}' and the identity '{identity}'");
            return (Relu(add.Outputs[0]), outChannels, isBottleneck);
        }

        string Weight(OnnxNode conv) => conv.Inputs.Count >= 2 ? conv.Inputs[1] : throw Misfit(conv, "has no weight input");

        /// <summary>Checks a Conv (kernel, stride, pads equivalent to k / 2 each side at the current size, no group, dilation or
        /// bias), records its weight under <paramref name="name"/> and moves the spatial size on; returns its output channels.</summary>
        long ConvWeight(OnnxNode conv, string name, long? outChannels, long inChannels, long kernel, long stride)
        {
            string w = Weight(conv);
            if (!g.IsConstant(w)) throw Misfit(conv, $"the weight '{w}' is not a constant");
            var shape = g.ConstantShape(w);
            if (shape is not [var o, var i, var kh, var kw] || (outChannels is long oc && o != oc) || i != inChannels || kh != kernel || kw != kernel)
                throw Misfit(conv, $"weight [{string.Join(", ", shape)}] where {name} is [{outChannels?.ToString() ?? "C"}, {inChannels}, {kernel}, {kernel}]");
            if (conv.Inputs.Count > 2 && conv.Inputs[2] != "")
                throw Misfit(conv, "a conv bias (BatchNorm folded into the conv) is not supported: torchvision's convs have none");
            if (conv.Int("group", 1) != 1) throw Misfit(conv, $"group {conv.Int("group", 1)}; only 1 is supported");
            if (conv.Ints("dilations").Any(d => d != 1)) throw Misfit(conv, "dilations other than 1 are not supported");
            Window(conv, kernel, stride);
            Table[name] = new OnnxParam(w);
            return shape[0];
        }

        /// <summary>Checks a Conv's or pool's kernel, strides and pads against torchvision's (k / 2 each side): the pads' begins must
        /// be k / 2 and the output size the same at the current spatial size; moves the size on.</summary>
        void Window(OnnxNode n, long kernel, long stride)
        {
            var k = n.Ints("kernel_shape");
            if (k.Length != 0 && (k.Length != 2 || k[0] != kernel || k[1] != kernel))
                throw Misfit(n, $"kernel [{string.Join(", ", k)}] where {kernel}×{kernel} is expected");
            var s = n.Ints("strides");
            if (s.Length != 0 && s.Any(v => v != stride)) throw Misfit(n, $"strides [{string.Join(", ", s)}] where {stride} is expected");
            if (s.Length == 0 && stride != 1) throw Misfit(n, $"stride 1 where {stride} is expected");
            string pad = n.String("auto_pad") ?? "NOTSET";
            if (pad != "NOTSET") throw Misfit(n, $"auto_pad {pad}; only explicit pads are supported");
            if (n.Int("ceil_mode", 0) != 0) throw Misfit(n, "ceil_mode 1 is not supported");
            var p = n.Ints("pads");
            if (p.Length == 0) p = [0, 0, 0, 0];
            long half = kernel / 2;
            long h = ResNet.OutSize(height, kernel, stride, half), w = ResNet.OutSize(width, kernel, stride, half);
            if (p.Length != 4 || p[0] != half || p[1] != half
                || (height + p[0] + p[2] - kernel) / stride + 1 != h || (width + p[1] + p[3] - kernel) / stride + 1 != w)
                throw Misfit(n, $"pads [{string.Join(", ", p)}] do not give torchvision's windows (pad {half}) on {height}×{width}");
            (height, width) = (h, w);
        }

        /// <summary>The BatchNormalization after <paramref name="conv"/> (inference form, one epsilon for the model); its output.</summary>
        string BatchNorm(OnnxNode conv, string name, long channels)
        {
            var bn = Expect(Only(conv.Outputs[0], $"{name}'s Conv"), "BatchNormalization", $"{name} (BatchNormalization) after the Conv");
            if (bn.Inputs.Count != 5 || bn.Outputs.Count(o => o != "") != 1 || bn.Int("training_mode", 0) != 0 || bn.Int("spatial", 1) != 1)
                throw Misfit(bn, "expected the inference form: five inputs, one output, spatial");
            string[] parts = ["weight", "bias", "running_mean", "running_var"];
            for (int i = 0; i < 4; i++)
            {
                string v = bn.Inputs[i + 1];
                if (!g.IsConstant(v) || g.ConstantShape(v) is not [var c] || c != channels)
                    throw Misfit(bn, $"{name}.{parts[i]} '{v}' is not a constant [{channels}]");
                Table[$"{name}.{parts[i]}"] = new OnnxParam(v);
            }
            double e = bn.Float("epsilon", 1e-5f);
            if (eps is double known && known != e) throw Misfit(bn, $"epsilon {e} where the model's other BatchNorms have {known}");
            eps = e;
            return bn.Outputs[0];
        }

        string Relu(string value) => Expect(Only(value, $"'{value}'"), "Relu", $"a Relu after '{value}'").Outputs[0];

        void GlobalPool(OnnxNode n)
        {
            switch (n.OpType)
            {
                case "GlobalAveragePool": break;
                case "AveragePool":
                    var k = n.Ints("kernel_shape");
                    var p = n.Ints("pads");
                    if (k is not [var kh, var kw] || kh != height || kw != width || p.Any(v => v != 0) || n.Int("ceil_mode", 0) != 0)
                        throw Misfit(n, $"an AveragePool over the whole {height}×{width} map (no pads) is expected, got kernel [{string.Join(", ", k)}]");
                    break;
                case "ReduceMean":
                    var axes = n.Inputs.Count > 1 && n.Inputs[1] != "" ? g.Longs(n.Inputs[1]) : n.Ints("axes");
                    if (axes.Order().ToArray() is not ([2, 3] or [-2, -1]) || n.Int("keepdims", 1) != 1)
                        throw Misfit(n, "a ReduceMean over axes 2 and 3 keeping them is expected");
                    break;
            }
        }

        /// <summary>The fc: Gemm(x, fc.weight, fc.bias) with alpha = beta = 1; transB 1 stores Linear's [classes, C].</summary>
        int Fc(OnnxNode gemm, long channels)
        {
            if (gemm.Inputs.Count != 3 || gemm.Int("transA", 0) != 0 || gemm.Float("alpha", 1f) != 1f || gemm.Float("beta", 1f) != 1f)
                throw Misfit(gemm, "expected fc: x · Wᵀ + b (three inputs, alpha = beta = 1, no transA)");
            string w = gemm.Inputs[1], b = gemm.Inputs[2];
            bool transposed = gemm.Int("transB", 0) == 1;
            if (!g.IsConstant(w) || !g.IsConstant(b)) throw Misfit(gemm, "the fc's weight and bias must be constants");
            var shape = g.ConstantShape(w);
            long classes = shape is [var r, var c] ? (transposed ? r : c) : 0;
            long inner = shape is [var r2, var c2] ? (transposed ? c2 : r2) : 0;
            if (inner != channels || classes < 1 || g.ConstantShape(b) is not [var bc] || bc != classes)
                throw Misfit(gemm, $"fc weight [{string.Join(", ", shape)}] and bias [{string.Join(", ", g.ConstantShape(b))}] do not fit {channels} features");
            Table[ResNetNames.FcWeight] = new OnnxParam(w, Transpose: !transposed);
            Table[ResNetNames.FcBias] = new OnnxParam(b);
            return (int)classes;
        }
    }
}

/// <summary>Images for a "resnet" ONNX model. Beside the packaged ResNet18.onnx sits ML.NET's <c>ResNetPreprocess.onnx</c>
/// (<see cref="MlNetPreprocess"/>), which says what the CNTK export takes: ML.NET's ResizeImages (IsoCrop: the shortest edge to
/// 224, center crop) and ExtractPixels give RGB pixels 0..255 channel-first [1, 3, 224, 224]; the graph then splits the channels,
/// concatenates them as B, G, R, and subtracts its MeanImage constant [1, 3, 224, 224] (a per-pixel ImageNet mean image, BGR,
/// channel averages 103.1, 115.9, 123.2). When that file sits beside the model it is followed (<see cref="Apply"/>); otherwise
/// the model is taken to be torchvision's and gets <see cref="ImagePreprocess.ImageNet"/> (shortest edge 256, center crop 224,
/// 1/255, ImageNet mean and std).</summary>
public static class ResNetImages
{
    public const string MlNetPreprocess = "ResNetPreprocess.onnx";

    /// <summary>The RGB pixels 0..255 ML.NET's ResizeImages and ExtractPixels give at <paramref name="height"/> ×
    /// <paramref name="width"/>: shortest edge to the larger side, bilinear (ML.NET resizes bicubic through System.Drawing),
    /// center crop, no rescale, no normalisation.</summary>
    public static ImagePreprocess RawPixels(int height, int width) =>
        new(Math.Max(height, width), null, ResampleFilter.Bilinear, new ImageSize(height, width), null, [], []);

    /// <summary>ML.NET's preprocessing graph beside <paramref name="model"/>, or null when there is none.</summary>
    public static string? PreprocessBeside(string model)
    {
        string path = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(model))!, MlNetPreprocess);
        return File.Exists(path) ? path : null;
    }

    /// <summary>The float32 pixels [N, 3, H, W] <paramref name="model"/> takes for <paramref name="images"/>: through
    /// ML.NET's preprocessing graph when it sits beside the model, else torchvision's ImageNet transform. The caller disposes it.
    /// A file that is missing or does not decode is one line naming it.</summary>
    public static Tensor Load(string model, IReadOnlyList<string> images)
    {
        var (preprocess, pipeline) = PipelineOf(model);
        if (preprocess is null) return ImageInput.Load(images, pipeline);
        using var rgb = ImageInput.Load(images, pipeline);
        return Apply(OnnxGraph.Load(preprocess), rgb);
    }

    /// <summary><see cref="Load"/>'s pixels in a temporary .npy (<see cref="ImageInput.WriteTemporary"/>'s, so
    /// <see cref="ImageInput.DeleteTemporary"/> removes it): the job's input. Returns its path.</summary>
    public static string WriteTemporary(string model, IReadOnlyList<string> images)
    {
        var (preprocess, pipeline) = PipelineOf(model);
        string path = ImageInput.WriteTemporary(images, pipeline);
        if (preprocess is null) return path;
        try
        {
            using var scope = NewDisposeScope();
            var (_, shape, data) = Npy.Read(path);
            var rgb = TensorPayloads.ToTensor(new TensorPayload("Float32", [.. shape], [.. data]));
            Npy.Write(path, TensorPayloads.From(Apply(OnnxGraph.Load(preprocess), rgb)));
            return path;
        }
        catch
        {
            ImageInput.DeleteTemporary(path);
            throw;
        }
    }

    /// <summary>ML.NET's preprocessing graph beside <paramref name="model"/> (null: none) and the pixel pipeline before it: the
    /// raw RGB pixels at the model's size for the graph, else ImageNet's transform.</summary>
    static (string? Preprocess, ImagePreprocess Pipeline) PipelineOf(string model)
    {
        var (graph, imported) = OnnxImport.Import(model, ResNetOnnx.Family);
        var shape = imported.Create(new ModelSpec(ResNetOnnx.Family, 0, 0, 0, 0, 0, 1, 0, Path.GetFullPath(model))).InputShape;
        int h = (int)shape[2], w = (int)shape[3];
        if (PreprocessBeside(graph.File) is { } preprocess) return (preprocess, RawPixels(h, w));
        if (h != w) throw new ArgumentException($"{model}: torchvision's ImageNet transform crops squares; the model takes {h}×{w}");
        return (null, ImagePreprocess.ImageNet(h));
    }

    /// <summary>ML.NET's preprocessing graph on <paramref name="rgb"/> (float32 [N, 3, H, W]), followed node by node: Split of the
    /// input into its three channels (axis 1), Concat of them (axis 1) in some order, Sub of a constant (broadcast over the batch).
    /// Anything else is refused at the first node that does not fit.</summary>
    public static Tensor Apply(OnnxGraph g, Tensor rgb)
    {
        using var scope = NewDisposeScope();
        if (g.Inputs is not [var input] || g.Outputs.Count != 1) throw new OnnxException($"{g.File}: expected one input and one output");
        var split = g.Consumers(input.Name) is [var only] ? only : throw new OnnxException($"{g.File}: expected one node on '{input.Name}'");
        if (split.OpType != "Split" || split.Int("axis", 0) != 1 || split.Outputs.Count != 3 || split.Ints("split").Any(s => s != 1))
            throw OnnxException.AtNode(g, split, "expected a Split of the input into its three channels (axis 1)");
        var concat = g.Consumers(split.Outputs[0]) is [var c] ? c : throw OnnxException.AtNode(g, split, "expected one Concat of its outputs");
        var order = concat.Inputs.Select(v => (long)split.Outputs.ToList().IndexOf(v)).ToArray();
        if (concat.OpType != "Concat" || concat.Int("axis", 0) != 1 || order.Length != 3 || order.Order().ToArray() is not [0, 1, 2])
            throw OnnxException.AtNode(g, concat, "expected a Concat of the three channels (axis 1)");
        var sub = g.Consumers(concat.Outputs[0]) is [var s] ? s : throw OnnxException.AtNode(g, concat, "expected one Sub of its output");
        if (sub.OpType != "Sub" || sub.Inputs[0] != concat.Outputs[0] || !g.IsConstant(sub.Inputs[1]) || sub.Outputs[0] != g.Outputs[0].Name)
            throw OnnxException.AtNode(g, sub, "expected the graph's output: the channels minus a constant");
        var mean = g.ReadConstant(sub.Inputs[1]);
        if (mean.dim() == 4 && (mean.shape[0] != 1 || mean.shape[2] != rgb.shape[2] || mean.shape[3] != rgb.shape[3]))
            throw OnnxException.AtNode(g, sub, $"the constant [{string.Join(", ", mean.shape)}] does not fit images [{string.Join(", ", rgb.shape)}]");
        return (rgb.index_select(1, tensor(order)) - mean).MoveToOuterDisposeScope();
    }
}
