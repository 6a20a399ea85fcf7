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
        var (resident, _) = await Pass(Sys, model, weights, input, null, null, 64L << 20);
        byte[] expected;
        using (resident) expected = TensorBytes.Raw(resident);
        foreach (var (k, swap) in new (int, int)[] { (1, 1), (2, 1), (3, 2), (4, 4), (5, 2) })
        {
            var (got, _) = await Pass(Sys, model, weights, input, k, swap, 64L << 20);
            using (got) Assert.True(expected.SequenceEqual(TensorBytes.Raw(got)), $"(k, k') = ({k}, {swap}) differs from resident");
        }
        // and resident is the layers' forwards on the host: the sharded word rows are the table's rows
        using var scope = NewDisposeScope();
        using var noGrad = inference_mode();
        var x = input.alias();
        foreach (var layer in model.Layers) x = layer.Forward(weights.Load(layer), x);
        Assert.True(expected.SequenceEqual(TensorBytes.Raw(x)));
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
