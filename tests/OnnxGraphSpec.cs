using Superpipeline.Engine.Onnx;

namespace Superpipeline.Tests;

/// <summary>The ONNX reader on the real packaged files and on files that are not models.</summary>
public sealed class OnnxGraphSpec
{
    [Fact]
    public void Reads_MiniLM_inputs_outputs_and_its_numerically_named_weights()
    {
        var graph = OnnxGraph.Load(OnnxFixture.MiniLm);
        Assert.Equal(["input_ids", "attention_mask", "token_type_ids"], graph.Inputs.Select(i => i.Name));
        Assert.All(graph.Inputs, i => Assert.Equal("int64", i.ElementType));
        Assert.All(graph.Inputs, i => Assert.Equal([-1L, -1L], i.Shape));
        Assert.Equal("last_hidden_state", graph.Outputs[0].Name);
        Assert.Equal([-1L, -1L, -1L], graph.Outputs[0].Shape); // the file leaves all three symbolic; the importer finds 384 from the weights
        Assert.Equal([-1L, 384L], graph.Outputs[1].Shape);
        // Every MatMul has one constant operand, [in, out]; many of them are named by numbers only.
        var matmuls = graph.Nodes.Where(n => n.OpType == "MatMul" && n.Inputs.Any(graph.IsConstant)).ToList();
        Assert.Equal(6 * 6, matmuls.Count); // Q, K, V, output, intermediate, output per block (the pooler is a Gemm)
        Assert.Contains(matmuls, m => m.Inputs.Where(graph.IsConstant).All(v => v.All(char.IsDigit)));
        var embedding = graph.Consumers("input_ids").Single(n => n.OpType == "Gather");
        Assert.Equal([30522L, 384L], graph.ConstantShape(embedding.Inputs[0]));
        using var table = graph.ReadConstant(embedding.Inputs[0]);
        Assert.Equal(new long[] { 30522, 384 }, table.shape);
        Assert.True(table.abs().max().item<float>() > 0);
        Assert.Same(embedding, graph.Producer(embedding.Outputs[0]));
        Assert.Null(graph.Producer("input_ids"));
    }

    [Fact]
    public void Reads_ResNet18_input_and_pooled_output()
    {
        var graph = OnnxGraph.Load(OnnxFixture.ResNet18);
        Assert.Equal([1L, 3, 224, 224], Assert.Single(graph.Inputs).Shape);
        Assert.Equal([1L, 512, 1, 1], Assert.Single(graph.Outputs).Shape);
        Assert.Equal("CNTK", graph.ProducerName);
        var convs = graph.Nodes.Where(n => n.OpType == "Conv").ToList();
        Assert.All(convs, c => Assert.True(graph.IsConstant(c.Inputs[1]), $"{c.Label}'s weight is a constant"));
        Assert.Equal([64L, 3, 7, 7], graph.ConstantShape(convs[0].Inputs[1]));
        Assert.Equal([2L, 2], convs[0].Ints("strides"));
    }

    [Fact]
    public void A_file_that_is_not_protobuf_is_one_line_naming_it()
    {
        string path = Path.Combine(Path.GetTempPath(), $"not-a-model-{Guid.NewGuid():N}.onnx");
        File.WriteAllText(path, "this is a text file, not an ONNX model\n");
        try
        {
            var e = Assert.Throws<OnnxException>(() => OnnxGraph.Load(path));
            Assert.StartsWith($"{path}: not an ONNX model", e.Message);
            Assert.DoesNotContain('\n', e.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Theory]
    [InlineData(0.5)]
    [InlineData(0.999)]
    public void A_truncated_file_is_one_line_naming_it(double keep)
    {
        string path = Path.Combine(Path.GetTempPath(), $"truncated-{Guid.NewGuid():N}.onnx");
        var bytes = File.ReadAllBytes(OnnxFixture.ResNet18);
        File.WriteAllBytes(path, bytes[..(int)(bytes.Length * keep)]);
        try
        {
            var e = Assert.Throws<OnnxException>(() => OnnxGraph.Load(path));
            Assert.StartsWith($"{path}: truncated", e.Message);
            Assert.DoesNotContain('\n', e.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void An_empty_file_and_a_missing_file_are_refused()
    {
        string path = Path.Combine(Path.GetTempPath(), $"empty-{Guid.NewGuid():N}.onnx");
        File.WriteAllBytes(path, []);
        try
        {
            Assert.StartsWith($"{path}: not an ONNX model", Assert.Throws<OnnxException>(() => OnnxGraph.Load(path)).Message);
            Assert.Equal($"{path}.missing: not found", Assert.Throws<OnnxException>(() => OnnxGraph.Load(path + ".missing")).Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task The_weights_command_writes_the_packaged_files_and_run_refuses_a_graph_of_another_family()
    {
        string dir = Directory.CreateTempSubdirectory("weights-").FullName;
        try
        {
            Assert.Equal(0, await Coordinator.Cli.MainAsync(["weights", "--name", "resnet18", "--out", dir]));
            Assert.Equal(File.ReadAllBytes(OnnxFixture.ResNet18), File.ReadAllBytes(Path.Combine(dir, "ResNet18.onnx")));
            Assert.True(File.Exists(Path.Combine(dir, "ResNetPreprocess.onnx")));
            Assert.Equal(1, await Coordinator.Cli.MainAsync(["weights", "--name", "gpt-4", "--out", dir]));
            // Asked as the wrong family, the graph is refused (exit 1) instead of run.
            Assert.Equal(1, await Coordinator.Cli.MainAsync(["run", "--model", OnnxFixture.MiniLm, "--family", "resnet"]));
            Assert.Equal(1, await Coordinator.Cli.MainAsync(["run", "--model", Path.Combine(dir, "ResNet18.onnx"), "--family", "bert"]));
            Assert.Equal(1, await Coordinator.Cli.MainAsync(["run", "--model", Path.Combine(dir, "ResNet18.onnx"), "--family", "gpt2"]));
            // ML.NET's preprocessing graph has an image input, so resnet claims it; following it stops at its first node.
            Assert.Equal("resnet", OnnxImport.FamilyOf(OnnxFixture.ResNetPreprocess));
            var e = Assert.Throws<OnnxException>(() => OnnxImport.Import(OnnxFixture.ResNetPreprocess, "resnet"));
            Assert.StartsWith($"{OnnxFixture.ResNetPreprocess}: node #0 (Split): ", e.Message);
            Assert.DoesNotContain('\n', e.Message);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
