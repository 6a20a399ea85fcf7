using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Engine;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Onnx;
using Superpipeline.Workers;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>The BERT family: seeded, every (k, k') bit-identical through the real engine and each layer's declared workspace equal
/// to what its forward holds; imported from all-MiniLM-L6-v2's ONNX graph, checked against ONNX Runtime on the same file.</summary>
public sealed partial class BertOnnxSpec(ITestOutputHelper output) : TestKit(WorkerConfig.Load())
{
    static BertConfig Small(bool pooler = true) => new(Hidden: 32, Layers: 2, Heads: 4, Intermediate: 48, Vocab: 300, MaxPositions: 16,
        TypeVocab: 2, Pooler: pooler);

    /// <summary>One pass of <paramref name="model"/> on a simulated device through the layer actors and the device loader.</summary>
    internal static async Task<(Tensor Output, PassReport Report)> Pass(ActorSystem system, LayeredModel model, IWeightSource weights, Tensor input,
        int? window, int? swap, long capacity)
    {
        using var device = new SimulatedDevice("sim:0", capacity);
        var tag = Guid.NewGuid().ToString("N")[..8];
        var actors = model.Layers.Select(l => system.ActorOf(LayerActor.Props(l, weights, pin: false), $"{tag}-layer-{l.Index}")).ToArray();
        var loader = system.ActorOf(DeviceLoaderActor.Props(device, TimeSpan.FromSeconds(60)), $"{tag}-loader");
        try
        {
            var answer = await loader.Ask<object>(new DeviceLoaderActor.RunPass(model, actors, input,
                OffloadPolicy.For(new PolicySpec(window, swap), model.Layers.Count)), TimeSpan.FromMinutes(3));
            return answer switch
            {
                DeviceLoaderActor.PassSucceeded ok => (ok.Output, ok.Report),
                DeviceLoaderActor.PassFailed f => throw new PassFailedException(f.Reason),
                _ => throw new InvalidOperationException(answer.ToString()),
            };
        }
        finally
        {
            foreach (var a in actors) system.Stop(a);
            system.Stop(loader);
        }
    }

    [Fact]
    public void The_word_table_is_sharded_so_no_shard_is_larger_than_a_block()
    {
        var minilm = new BertConfig(Hidden: 384, Layers: 6, Heads: 12, Intermediate: 1536, Vocab: 30522, MaxPositions: 512);
        Assert.Equal(7, minilm.WordShards); // 30522 · 384 = 11.7 M parameters, a block 1.77 M
        Assert.Equal(4361, minilm.WordShardRows);
        var model = Bert.Create("bert", minilm, 1, 8);
        var blockBytes = model.Layers.OfType<BertBlock>().First().Bytes;
        var shards = model.Layers.OfType<BertWordShard>().ToArray();
        Assert.Equal(minilm.Vocab, shards.Sum(s => s.Rows));
        Assert.All(shards, s => Assert.True(s.Bytes <= blockBytes, $"{s.Name}: {s.Bytes} bytes > a block's {blockBytes}"));
        Assert.Equal(["embed.words.0", "embed.words.6", "embed", "block.0", "block.5", "pool"],
            new[] { 0, 6, 7, 8, 13, 14 }.Select(i => model.Layers[i].Name));
        Assert.Equal(15, model.Layers.Count);
    }

    [Fact]
    public void Each_layer_declares_the_temporaries_its_forward_holds()
    {
        foreach (var pooler in new[] { true, false })
        {
            var config = Small(pooler);
            var model = Bert.Create("bert", config, 3, 7);
            var source = new SeededWeights(5);
            var acts = model.ActivationShapes();
            using var input0 = model.MakeInput(5);
            using var scope = NewDisposeScope();
            var x = input0.alias();
            for (int i = 0; i < model.Layers.Count; i++)
            {
                var layer = model.Layers[i];
                var weights = source.Load(layer);
                long held = TensorProbe.HeldBytes(layer, weights, x);
                using (inference_mode()) x = layer.Forward(weights, x);
                foreach (var w in weights.Values) w.Dispose();
                output.WriteLine($"{layer.Name}: held {held}, declared {layer.WorkspaceBytes(acts[i].Shape)}");
                Assert.True(held > 0, $"{layer.Name} holds no temporaries: the reference is broken");
                Assert.Equal(held, layer.WorkspaceBytes(acts[i].Shape));
            }
        }
    }

    [Fact]
    public async Task Every_window_and_swap_gives_the_resident_output_bit_for_bit()
    {
        var config = Small() with { Vocab = 2000 }; // 2000 · 32 over a 9.2 k-parameter block: 7 shards
        var model = Bert.Create("bert", config, 3, 9);
        Assert.True(model.Layers.OfType<BertWordShard>().Count() > 2);
        var weights = new SeededWeights(11);
        using var input = model.MakeInput(11);
        // resident is the layers' forwards on the host too: the sharded word rows are the table's rows
        await OffloadEquality.AssertBitIdenticalToResident(Sys, model, weights, input, [(1, 1), (2, 1), (3, 2), (4, 4), (5, 2)], deviceBytes: 64L << 20);
    }

    [Fact]
    public void Padding_changes_nothing_at_real_positions_and_the_embedding_is_the_normalised_mean()
    {
        var config = Small();
        var weights = new SeededWeights(3);
        using var scope = NewDisposeScope();
        using var noGrad = inference_mode();
        Tensor Run(Tensor ids)
        {
            var model = Bert.Create("bert", config, (int)ids.shape[0], (int)ids.shape[2]);
            var x = ids.alias();
            foreach (var layer in model.Layers) x = layer.Forward(weights.Load(layer), x);
            return x;
        }
        var real = tensor(new long[] { 101, 7, 42, 102, 1, 1, 1, 1, 0, 0, 0, 0 }).view(1, 3, 4);
        var padded = tensor(new long[] { 101, 7, 42, 102, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0 }).view(1, 3, 6);
        var (h1, e1, p1) = Bert.Unpack(Run(real));
        var (h2, e2, p2) = Bert.Unpack(Run(padded));
        Assert.True(h1.allclose(h2.narrow(1, 0, 4), rtol: 0, atol: 1e-5), "padding changed the hidden state at real positions");
        Assert.True(e1.allclose(e2, rtol: 0, atol: 1e-5), "padding changed the sentence embedding");
        Assert.True(p1.allclose(p2, rtol: 0, atol: 1e-5), "padding changed the pooler");
        var mean = h1.mean([1]);
        Assert.True(e1.allclose(mean / mean.norm(1, true, 2), rtol: 0, atol: 1e-6));
        Assert.Equal(1.0, e1.norm().item<float>(), 5);
    }
}

/// <summary>all-MiniLM-L6-v2 from its ONNX file against ONNX Runtime on the same file (the independent reference).</summary>
public sealed partial class BertOnnxSpec
{
    internal static readonly string[] Texts =
    [
        "This is an example sentence",
        "Each sentence is converted",
        "Superpipeline streams the layers of a model larger than the device, one window at a time, and the output does not change.",
        "Hi",
    ];

    /// <summary>ONNX Runtime's last_hidden_state [N, T, H] and pooler output [N, H] (null when the graph has none) for the encoded inputs
    /// [N, 3, T].</summary>
    internal static (float[] Hidden, float[]? Pooler) Reference(string onnx, long[] encoded, int n, int t)
    {
        using var session = new Microsoft.ML.OnnxRuntime.InferenceSession(onnx);
        Microsoft.ML.OnnxRuntime.NamedOnnxValue Input(string name, int row) => Microsoft.ML.OnnxRuntime.NamedOnnxValue.CreateFromTensor(name,
            new Microsoft.ML.OnnxRuntime.Tensors.DenseTensor<long>(Enumerable.Range(0, n).SelectMany(i => encoded.Skip((i * 3 + row) * t).Take(t)).ToArray(),
                [n, t]));
        using var results = session.Run([Input("input_ids", 0), Input("attention_mask", 1), Input("token_type_ids", 2)]);
        return (results.First(r => r.Name == "last_hidden_state").AsTensor<float>().ToArray(),
            results.FirstOrDefault(r => r.Name != "last_hidden_state")?.AsTensor<float>().ToArray());
    }

    /// <summary>sentence-transformers' Pooling(mean) + Normalize on the reference's hidden state, written here from their definitions.</summary>
    internal static float[] MeanPooled(float[] hidden, long[] encoded, int n, int t, int h)
    {
        var result = new float[n * h];
        for (int i = 0; i < n; i++)
        {
            double count = 0;
            var sum = new double[h];
            for (int j = 0; j < t; j++)
            {
                long m = encoded[(i * 3 + 1) * t + j];
                count += m;
                for (int c = 0; c < h; c++) sum[c] += m * hidden[(i * t + j) * h + c];
            }
            var mean = sum.Select(s => s / Math.Max(count, 1e-9)).ToArray();
            double norm = Math.Max(Math.Sqrt(mean.Sum(v => v * v)), 1e-12);
            for (int c = 0; c < h; c++) result[i * h + c] = (float)(mean[c] / norm);
        }
        return result;
    }

    static long[] Longs(TensorPayload p)
    {
        var data = new long[p.Elements];
        Buffer.BlockCopy(p.Bytes.ToArray(), 0, data, 0, p.Bytes.Length);
        return data;
    }

    string WriteInput(TensorPayload encoded)
    {
        string path = Path.Combine(Path.GetTempPath(), $"bert-input-{Guid.NewGuid():N}.npy");
        Engine.IO.Npy.Write(path, encoded);
        return path;
    }

    /// <summary>Our pass's three outputs against the reference at real positions; returns the largest differences.</summary>
    (double Hidden, double Embedding, double Pooler) Compare(Tensor ours, long[] encoded, float[] refHidden, float[] refPooler, int n, int t, int h)
    {
        var (hidden, embedding, pooled) = Bert.Unpack(ours);
        var refEmbedding = MeanPooled(refHidden, encoded, n, t, h);
        double dh = 0, de = 0, dp = 0;
        var ourHidden = hidden.contiguous().data<float>().ToArray();
        var ourEmbedding = embedding.contiguous().data<float>().ToArray();
        var ourPooler = pooled.contiguous().data<float>().ToArray();
        for (int i = 0; i < n; i++)
        {
            for (int j = 0; j < t; j++)
                if (encoded[(i * 3 + 1) * t + j] == 1)
                    for (int c = 0; c < h; c++) dh = Math.Max(dh, Math.Abs(ourHidden[(i * t + j) * h + c] - refHidden[(i * t + j) * h + c]));
            for (int c = 0; c < h; c++)
            {
                de = Math.Max(de, Math.Abs(ourEmbedding[i * h + c] - refEmbedding[i * h + c]));
                dp = Math.Max(dp, Math.Abs(ourPooler[i * h + c] - refPooler[i * h + c]));
            }
        }
        return (dh, de, dp);
    }

    [Fact]
    public async Task MiniLm_matches_onnx_runtime_and_every_window_is_bit_identical_on_a_device_under_a_quarter_of_the_weights()
    {
        string onnx = OnnxFixture.MiniLm;
        var config = BertOnnx.ConfigOf(OnnxGraph.Load(onnx));
        Assert.Equal(new BertConfig(384, 6, 12, 1536, 30522, 512, 2, 1e-12, -10000f, true), config with { LayerNormEps = 1e-12 });
        var encodedPayload = BertText.Encode(BertText.Load(OnnxFixture.MiniLmVocab), Texts, config.MaxPositions);
        var encoded = Longs(encodedPayload);
        int n = Texts.Length, t = (int)encodedPayload.Shape[2], h = config.Hidden;
        Assert.Contains(0L, encoded.Skip(t).Take(t)); // the second text is padded: padding is visible
        var (refHidden, refPooler) = Reference(onnx, encoded, n, t);
        string input = WriteInput(encodedPayload);
        try
        {
            var spec = ModelCatalog.CheckpointSpec(onnx, 1, 1, 0, input, "bert");
            var model = ModelCatalog.Create(spec);
            using var weights = (OnnxWeights)ModelCatalog.Weights(spec);
            using var x = model.MakeInput(spec.Seed);
            long quarter = model.Bytes / 4 - 1;
            var (resident, first) = await Pass(Sys, model, weights, x, 2, 1, quarter);
            Assert.True(first.PeakDeviceBytes <= quarter, $"peak {first.PeakDeviceBytes} > {quarter}");
            byte[] expected;
            using (resident)
            {
                var (dh, de, dp) = Compare(resident, encoded, refHidden, refPooler!, n, t, h);
                output.WriteLine($"k = 2 on {quarter} bytes against ONNX Runtime, {n} texts of up to {t} tokens: "
                    + $"max |Δ| hidden {dh:E2}, embedding {de:E2}, pooler {dp:E2}");
                Assert.True(dh <= 1e-4 && de <= 1e-4 && dp <= 1e-4, $"hidden {dh}, embedding {de}, pooler {dp}");
                expected = TensorBytes.Raw(resident);
            }

            output.WriteLine($"model {model.Bytes} bytes in {model.Layers.Count} layers, largest {model.Layers.Max(l => l.Bytes)}; device {quarter} bytes");
            foreach (var (k, swap, capacity) in new (int?, int?, long)[] { (1, 1, quarter), (2, 1, quarter), (2, 2, quarter), (3, 1, 1L << 30),
                (5, 2, 1L << 30), (null, null, 1L << 30) })
            {
                var (got, report) = await Pass(Sys, model, weights, x, k, swap, capacity);
                using (got)
                {
                    output.WriteLine($"(k, k') = ({k?.ToString() ?? "all"}, {swap?.ToString() ?? "all"}) on {capacity} bytes: peak {report.PeakDeviceBytes}");
                    Assert.True(report.PeakDeviceBytes <= capacity, $"peak {report.PeakDeviceBytes} > {capacity}");
                    Assert.True(expected.SequenceEqual(TensorBytes.Raw(got)), $"(k, k') = ({k}, {swap}) differs from k = 2");
                }
            }
        }
        finally
        {
            File.Delete(input);
        }
    }

    [Fact]
    public void BertTokenizer_gives_the_reference_ids_and_pads_with_mask_zero()
    {
        var tokenizer = BertText.Load(OnnxFixture.MiniLmVocab);
        // bert-base-uncased's ids for this sentence (the transformers documentation's tokenizer example)
        var encoded = Longs(BertText.Encode(tokenizer, ["Hello, my dog is cute", "Hi"], 512));
        Assert.Equal(new long[] { 101, 7592, 1010, 2026, 3899, 2003, 10140, 102 }, encoded.Take(8));
        Assert.Equal(new long[] { 1, 1, 1, 1, 1, 1, 1, 1 }, encoded.Skip(8).Take(8));
        Assert.Equal(new long[] { 101, 7632, 102, 0, 0, 0, 0, 0 }, encoded.Skip(24).Take(8));
        Assert.Equal(new long[] { 1, 1, 1, 0, 0, 0, 0, 0 }, encoded.Skip(32).Take(8));
        Assert.All(encoded.Skip(16).Take(8).Concat(encoded.Skip(40)), v => Assert.Equal(0L, v));
        var e = Assert.Throws<ArgumentException>(() => BertText.Encode(tokenizer, ["short", string.Join(" ", Enumerable.Repeat("word", 600))], 512));
        Assert.Equal("text 1 is 602 tokens with [CLS] and [SEP]; the model takes at most 512 positions", e.Message);
    }

    [Fact]
    public void Files_that_are_not_a_bert_encoder_are_one_line_refusals()
    {
        string dir = Directory.CreateTempSubdirectory("bert-refusals-").FullName;
        try
        {
            string garbage = Path.Combine(dir, "garbage.onnx");
            File.WriteAllBytes(garbage, [.. Enumerable.Range(0, 4096).Select(i => (byte)(i * 7919 % 251))]);
            var e = Assert.ThrowsAny<Exception>(() => OnnxImport.Import(garbage, "bert"));
            output.WriteLine(e.Message);
            Assert.Contains("not an ONNX model", e.Message);

            string truncated = Path.Combine(dir, "truncated.onnx");
            var bytes = File.ReadAllBytes(OnnxFixture.MiniLm);
            File.WriteAllBytes(truncated, bytes[..(bytes.Length / 2)]);
            e = Assert.ThrowsAny<Exception>(() => OnnxImport.Import(truncated, "bert"));
            output.WriteLine(e.Message);
            Assert.Contains("truncated", e.Message);
            Assert.DoesNotContain('\n', e.Message);

            e = Assert.Throws<OnnxException>(() => OnnxImport.Import(OnnxFixture.ResNet18, "bert"));
            output.WriteLine(e.Message);
            var first = OnnxGraph.Load(OnnxFixture.ResNet18).Nodes.First(n => n.Inputs.Contains("Input247"));
            Assert.StartsWith($"{OnnxFixture.ResNet18}: node {first.Label}: expected a BERT encoder's input 'input_ids'", e.Message);
            Assert.DoesNotContain('\n', e.Message);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    static async Task<(int Code, string Error)> Cli(params string[] args)
    {
        var saved = Console.Error;
        using var error = new StringWriter();
        Console.SetError(error);
        try
        {
            return (await Coordinator.Cli.MainAsync(args), error.ToString());
        }
        finally
        {
            Console.SetError(saved);
        }
    }

    [Fact]
    public async Task Embed_writes_the_embeddings_onnx_runtime_gives_and_refuses_bad_input_in_one_line()
    {
        string dir = Directory.CreateTempSubdirectory("bert-embed-").FullName;
        try
        {
            string emb = Path.Combine(dir, "emb.npy"), hidden = Path.Combine(dir, "hidden.npy");
            string[] texts = [Texts[0], Texts[2], Texts[3]];
            var (code, error) = await Cli(["embed", "--model", OnnxFixture.MiniLm, .. texts.SelectMany(t => new[] { "--text", t }), "--output", emb,
                "--hidden-states", hidden, "--window", "2", "--device-memory", "20MiB"]);
            Assert.True(code == 0, error);
            var encodedPayload = BertText.Encode(BertText.Load(OnnxFixture.MiniLmVocab), texts, 512);
            var encoded = Longs(encodedPayload);
            int t = (int)encodedPayload.Shape[2];
            var (refHidden, _) = Reference(OnnxFixture.MiniLm, encoded, texts.Length, t);
            var expected = MeanPooled(refHidden, encoded, texts.Length, t, 384);
            var (descr, shape, data) = Engine.IO.Npy.Read(emb);
            Assert.Equal("<f4", descr);
            Assert.Equal(new long[] { 3, 384 }, shape);
            var got = new float[3 * 384];
            Buffer.BlockCopy(data, 0, got, 0, data.Length);
            double diff = got.Zip(expected, (a, b) => Math.Abs(a - b)).Max();
            output.WriteLine($"embed on a 20 MiB device, k = 2: max |Δ| against ONNX Runtime's mean-pooled, normalised embeddings {diff:E2}");
            Assert.True(diff <= 1e-4, $"{diff}");
            Assert.Equal(new long[] { 3, t, 384 }, Engine.IO.Npy.Read(hidden).Shape);

            string tooLong = string.Join(" ", Enumerable.Repeat("word", 600));
            foreach (var (args, says) in new (string[], string)[]
            {
                (["--text", "fine", "--text", tooLong], "superpipeline: text 1 is 602 tokens with [CLS] and [SEP]; the model takes at most 512 positions"),
                (["--text", "fine", "--vocab", Path.Combine(dir, "none.txt")], $"superpipeline: {Path.Combine(dir, "none.txt")}: vocabulary not found"),
                (["--text", "fine", "--window", "0"], "superpipeline: --window"),
            })
            {
                (code, error) = await Cli(["embed", "--model", OnnxFixture.MiniLm, .. args, "--output", Path.Combine(dir, "no.npy")]);
                Assert.Equal(1, code);
                Assert.StartsWith(says, error);
                Assert.Single(error.TrimEnd().Split('\n'));
            }
            (code, error) = await Cli(["embed", "--model", OnnxFixture.ResNet18, "--family", "bert", "--text", "x", "--output", Path.Combine(dir, "no.npy")]);
            Assert.Equal(1, code);
            Assert.Contains("node 'Convolution249' (Conv): expected a BERT encoder's input 'input_ids'", error);
            Assert.False(File.Exists(Path.Combine(dir, "no.npy")));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void An_export_with_the_fused_LayerNormalization_and_Gelu_ops_and_no_pooler_matches_onnx_runtime()
    {
        string dir = Directory.CreateTempSubdirectory("bert-fused-").FullName;
        try
        {
            string onnx = Path.Combine(dir, "tiny.onnx");
            BertFusedOnnx.Write(onnx, 17);
            int n = 2, t = BertFusedOnnx.T, h = BertFusedOnnx.Hidden;
            long[] encoded = [1, 7, 33, 2, 49, /* mask */ 1, 1, 1, 1, 1, /* types */ 0, 1, 1, 0, 1,
                              1, 12, 2, 0, 0, /* mask */ 1, 1, 1, 0, 0, /* types */ 0, 0, 0, 0, 0];
            var (refHidden, refPooler) = Reference(onnx, encoded, n, t);
            Assert.Null(refPooler);
            var payload = new TensorPayload("Int64", [n, 3, t], [.. encoded.SelectMany(BitConverter.GetBytes)]);
            string input = WriteInput(payload);
            try
            {
                var spec = ModelCatalog.CheckpointSpec(onnx, 1, 1, 0, input, "bert");
                var model = ModelCatalog.Create(spec);
                Assert.Equal(["embed.words.0", "embed", "block.0", "pool"], model.Layers.Select(l => l.Name));
                var weights = ModelCatalog.Weights(spec);
                using var scope = NewDisposeScope();
                using var noGrad = inference_mode();
                var x = model.MakeInput(0);
                foreach (var layer in model.Layers) x = layer.Forward(weights.Load(layer), x);
                var (dh, de, dp) = Compare(x, encoded, refHidden, new float[n * h], n, t, h);
                output.WriteLine($"fused LayerNormalization/Gelu graph against ONNX Runtime: max |Δ| hidden {dh:E2}, embedding {de:E2}, pooler (zeros) {dp}");
                Assert.True(dh <= 1e-4 && de <= 1e-4, $"hidden {dh}, embedding {de}");
                Assert.Equal(0, dp);
            }
            finally
            {
                File.Delete(input);
            }
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}
