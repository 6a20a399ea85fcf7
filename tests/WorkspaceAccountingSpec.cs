using Akka.TestKit.Xunit2;
using Superpipeline.Engine.Simulation;
using Superpipeline.Workers;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>Honest device accounting: each layer declares the temporaries its forward holds, a pass reserves them
/// while the layer computes, and the simulator predicts the same peak.</summary>
public sealed class WorkspaceAccountingSpec() : TestKit(WorkerConfig.Load())
{
    public static TheoryData<int, int, int, int, int, int> Shapes => new()
    {
        { 2, 512, 8, 4096, 128, 4 }, // the demo's block, embedding and head
        { 1, 48, 3, 50, 12, 3 },
        { 1, 64, 1, 10, 1, 1 },
    };

    /// <summary>The reference is what the forward really leaves in its dispose scope: every distinct storage there
    /// that is not the input's, a weight's or the output's, plus for a block what the test's own reasoning adds for
    /// the attention call's inside (scores [B, heads, T, T] and their softmax, as a kernel that materialises them holds).</summary>
    [Theory]
    [MemberData(nameof(Shapes))]
    public void Each_layer_declares_the_temporaries_its_forward_holds(int blocks, int hidden, int heads, int vocab, int seq, int batch)
    {
        var spec = new ModelSpec("demo", blocks, hidden, heads, vocab, seq, batch, 3);
        var model = ModelCatalog.Create(spec);
        var source = ModelCatalog.Weights(spec);
        var acts = model.ActivationShapes();
        using var input0 = model.MakeInput(spec.Seed);
        for (int i = 0; i < model.Layers.Count; i++)
        {
            var layer = model.Layers[i];
            var weights = source.Load(layer);
            using var input = i == 0 ? input0.alias() : randn(acts[i].Shape);
            long held = TensorProbe.HeldBytes(layer, weights, input);
            foreach (var w in weights.Values) w.Dispose();
            long attention = layer is Gpt2Block ? 2L * batch * heads * seq * seq * sizeof(float) : 0;
            Assert.True(held > 0, $"{layer.Name} holds no temporaries: the reference is broken");
            Assert.Equal(held + attention, layer.WorkspaceBytes(acts[i].Shape));
        }
    }


    /// <summary>With window 1 nothing overlaps, so the peak is, by hand, the fullest layer's weights, input, output
    /// and workspace. The device measures it, the simulator predicts it, and one byte less fails at a workspace.</summary>
    [Fact]
    public async Task A_pass_holds_each_layers_workspace_while_it_computes_and_the_simulator_agrees()
    {
        var spec = EngineHarness.Tiny(blocks: 3, hidden: 64, heads: 4, vocab: 32, seq: 16, batch: 2);
        var model = ModelCatalog.Create(spec);
        var acts = model.ActivationShapes().Select(a => Engine.TensorBytes.Of(a.Shape, a.DType)).ToArray();
        long Need(int i) => model.Layers[i].Bytes + acts[i] + acts[i + 1] + model.Layers[i].WorkspaceBytes(model.ActivationShapes()[i].Shape);
        int fullest = Enumerable.Range(0, model.Layers.Count).MaxBy(Need);
        long peak = Need(fullest);
        Assert.IsType<Gpt2Block>(model.Layers[fullest]); // a block's workspace decides (it is larger than its input and output)

        var cost = ModelCost.From(model);
        var gate = new WindowGate(OffloadPolicy.For(new PolicySpec(1, 1), cost.Layers.Length), [.. cost.Layers.Select(l => l.Bytes)]);
        var predicted = PassSimulator.Run(cost, new DeviceCost("sim:0", peak, 1e9, 1e11), gate);
        Assert.Equal(peak, predicted.PeakDeviceBytes);
        Assert.True(predicted.Fits);

        using (var h = new EngineHarness(Sys, spec, peak))
        {
            var (_, report) = await h.Pass(h.Policy(1, 1));
            Assert.Equal(peak, report.PeakDeviceBytes);
            Assert.Equal(0, h.Device.Memory.Reserved);
        }
        using (var h = new EngineHarness(Sys, spec, peak - 1))
        {
            var e = await Assert.ThrowsAsync<PassFailedException>(() => h.Pass(h.Policy(1, 1)));
            Assert.Contains($"the workspace of layer {fullest}", e.Message);
            Assert.Equal(0, h.Device.Memory.Reserved);
        }
    }
}
