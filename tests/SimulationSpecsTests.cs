using System.Text.Json;
using Superpipeline.Coordinator;
using Superpipeline.Coordinator.Bench;
using Superpipeline.Coordinator.Commands;
using Superpipeline.Engine.Simulation;

namespace Superpipeline.Tests;

/// <summary>The generation simulator's specs, cost model, policies, calibration and <c>simulate</c> command. Never
/// asserts a wall-clock time.</summary>
public sealed class SimulationSpecsTests
{
    public static TheoryData<string> Models() => [.. ModelCatalog.Shapes.Select(m => m.Name)];
    public static TheoryData<string> BuiltIns() => [.. SimulationSpecs.BuiltInNames];

    [Theory]
    [MemberData(nameof(Models))]
    public void Built_in_model_parameter_counts_land_near_the_published_sizes(string name)
    {
        var model = ModelCatalog.FindShape(name)!;
        double published = ModelCatalog.PublishedParameters[name];
        double error = Math.Abs(model.ParameterCount - published) / published;
        Assert.True(error < 0.03, $"{name}: {model.ParameterCount:N0} parameters, {error:P2} from the published {published:N0}");
    }

    [Fact]
    public void Layer_bytes_follow_from_the_shape()
    {
        var llama = ModelCatalog.FindShape("llama2-7b")!;
        // q, k, v, o: 4 × 4096²; gate, up, down: 3 × 4096 × 11008; two RMSNorm weights of 4096; fp16.
        Assert.Equal(2L * (4L * 4096 * 4096 + 3L * 4096 * 11008 + 2 * 4096), llama.BlockBytes(WeightFormat.Fp16));
        Assert.Equal(2L * 32000 * 4096, llama.EmbeddingBytes(WeightFormat.Fp16));
        Assert.Equal(2L * (32000 * 4096 + 4096), llama.HeadBytes(WeightFormat.Fp16));

        var l70 = ModelCatalog.FindShape("llama2-70b")!;
        // Grouped-query attention: k and v are 8192 × (8 heads × 128).
        Assert.Equal(2L * 8192 * 8192 + 2L * 8192 * 1024, l70.BlockMatrixParams - 3L * 8192 * 28672);

        var opt = ModelCatalog.FindShape("opt-30b")!;
        // int4 matrices: 0.5 B + fp16 scale and zero per 64 weights; biases and LayerNorms stay fp16.
        double int4 = opt.BlockMatrixParams * 0.5625 + opt.BlockVectorParams * 2.0;
        Assert.Equal((long)Math.Ceiling(int4), opt.BlockBytes(WeightFormat.Int4));
    }

    [Fact]
    public void Layer_flops_follow_from_the_shape_in_prefill_and_decode()
    {
        var m = ModelCatalog.FindShape("llama2-13b")!;
        var prefill = m.Work(WeightFormat.Fp16, batch: 2, tokens: 100, past: 0, kvOnDevice: true);
        Assert.Equal(m.Layers + 2, prefill.Length);
        Assert.Equal(2.0 * 2 * 100 * m.BlockMatrixParams + 4.0 * 2 * 100 * 100 * m.Hidden, prefill[1].DeviceFlops);
        Assert.Equal(2.0 * 2 * m.Hidden * m.Vocab, prefill[^1].DeviceFlops); // logits of the last position only

        var decode = m.Work(WeightFormat.Fp16, batch: 2, tokens: 1, past: 100, kvOnDevice: true);
        Assert.Equal(2.0 * 2 * m.BlockMatrixParams + 4.0 * 2 * 101 * m.Hidden, decode[1].DeviceFlops);
        Assert.Equal(0, decode[1].HostFlops);

        var host = m.Work(WeightFormat.Fp16, batch: 2, tokens: 1, past: 100, kvOnDevice: false);
        Assert.Equal(2.0 * 2 * m.BlockMatrixParams, host[1].DeviceFlops);
        Assert.Equal(4.0 * 2 * 101 * m.Hidden, host[1].HostFlops);
    }

    [Theory]
    [MemberData(nameof(BuiltIns))]
    public void Every_built_in_spec_simulates(string name)
    {
        var spec = SimulationSpecs.BuiltIn(name);
        foreach (var policy in spec.ComparePolicies().Prepend(spec.Policy))
        {
            var r = GenerationSimulator.Run(spec, policy);
            Assert.Equal(spec.Workload.Generate, r.Passes.Length);
            Assert.True(r.TotalSeconds > 0 && double.IsFinite(r.TotalSeconds), $"{name} {policy}: total {r.TotalSeconds}");
            Assert.True(r.TokensPerSecond > 0, $"{name} {policy}: throughput {r.TokensPerSecond}");
            Assert.True(r.PeakDeviceBytes > 0);
            Assert.Equal(spec.Model.Layers + 2, r.Prefill.Pass.Timeline.Length);
        }
    }

    [Theory]
    [InlineData("llama2-7b@t4", 1)]
    [InlineData("opt-30b@a6000", 3)]
    [InlineData("calib-accelerate-opt30b-t4", 1)]
    public void Synchronous_makespan_is_the_sum_of_every_transfer_and_compute(string name, int microBatches)
    {
        var spec = SimulationSpecs.BuiltIn(name);
        spec = spec with { Workload = spec.Workload with { Generate = 5, MicroBatches = microBatches } };
        var device = spec.Gpu.ToDeviceCost();
        var r = GenerationSimulator.Run(spec, OffloadPolicy.Synchronous);

        double total = 0;
        foreach (var pass in r.Passes)
        {
            // One layer at a time: input up, then load i, compute i, load i+1, ..., then the output back.
            double t = device.TransferSeconds(pass.Cost.InputBytes);
            foreach (var layer in pass.Cost.Layers) t = t + device.TransferSeconds(layer.Bytes) + device.ComputeSeconds(layer.Flops);
            t += device.TransferSeconds(pass.Cost.Layers[^1].OutputBytes);
            Assert.Equal(t, pass.Pass.MakespanSeconds);
            total += t;

            // Each layer's compute time is the cost model's, from the shape: device-bound or memory-bound, per micro-batch.
            for (int i = 0; i < pass.Work.Length; i++)
            {
                var w = pass.Work[i];
                double expected = Math.Max(w.DeviceFlops / spec.Gpu.FlopsPerSecond, w.DeviceTrafficBytes / spec.Gpu.MemoryBytesPerSecond);
                Assert.Equal(expected, device.ComputeSeconds(pass.Cost.Layers[i].Flops), 12);
            }
        }
        Assert.Equal(microBatches * total, r.TotalSeconds, 9);
        Assert.Equal((long)spec.Workload.Batch * microBatches * 5, r.TokensGenerated);
        Assert.Equal(r.TokensGenerated / r.TotalSeconds, r.TokensPerSecond, 12);
    }

    [Fact]
    public void Batched_throughput_grows_with_micro_batches_when_transfer_bound()
    {
        var spec = SimulationSpecs.BuiltIn("llama2-70b@t4");
        double previous = 0;
        foreach (int m in new[] { 1, 2, 4, 8 })
        {
            var r = GenerationSimulator.Run(spec, OffloadPolicy.BatchedOf(2, 1, m));
            var decode = r.FirstDecode!.Pass;
            Assert.True(decode.Timeline.Sum(t => t.LoadSeconds) > decode.Timeline.Sum(t => t.ComputeSeconds), $"M = {m}: decode is not transfer-bound");
            Assert.True(r.Fits, r.OutOfMemory);
            Assert.Equal(spec.Workload.Batch * m, r.Sequences);
            Assert.True(r.TokensPerSecond > 1.5 * previous, $"M = {m}: {r.TokensPerSecond} tokens/s after {previous}");
            previous = r.TokensPerSecond;
        }
    }

    [Fact]
    public void A_resident_model_loads_nothing_during_generation_and_a_streamed_one_reloads_every_pass()
    {
        var spec = SimulationSpecs.BuiltIn("llama2-7b@a100-80gb");
        var resident = GenerationSimulator.Run(spec, OffloadPolicy.Resident);
        Assert.True(resident.Fits, resident.OutOfMemory);
        Assert.All(resident.Passes, p => Assert.All(p.Cost.Layers, l => Assert.Equal(0, l.Bytes)));
        Assert.True(resident.FixedDeviceBytes >= spec.Streamed().Sum());

        var streamed = GenerationSimulator.Run(spec, OffloadPolicy.WindowOf(2, 1));
        Assert.All(streamed.Passes, p => Assert.Equal(spec.Streamed().Sum(), p.Cost.Layers.Sum(l => l.Bytes)));
        Assert.True(streamed.PeakDeviceBytes < resident.PeakDeviceBytes / 5);
    }

    [Fact]
    public void The_resident_policy_reports_out_of_memory_when_the_model_is_larger_than_the_device()
    {
        var r = GenerationSimulator.Run(SimulationSpecs.BuiltIn("llama2-70b@a100-80gb"), OffloadPolicy.Resident);
        Assert.False(r.Fits);
        Assert.StartsWith("device a100-80gb out of memory", r.OutOfMemory);
    }

    [Theory]
    [InlineData("sync")]
    [InlineData("resident")]
    [InlineData("window:4:2")]
    [InlineData("bytes:2147483648:1073741824")]
    [InlineData("batched:2:1:3")]
    public void Policies_read_back_their_own_text(string text) => Assert.Equal(text, OffloadPolicy.Parse(text).ToString());

    [Fact]
    public void Policy_sizes_take_suffixes() => Assert.Equal(OffloadPolicy.BytesOf(2L << 30, 512L << 20), OffloadPolicy.Parse("bytes:2GiB:512MiB"));

    [Theory]
    [InlineData("fast", "'fast' is not a policy")]
    [InlineData("window:3", "'window:3' is not a policy")]
    [InlineData("window:x:1", "'window:x:1' has k 'x', not a whole number")]
    [InlineData("window:2:3", "'window:2:3' has k' = 3 above k = 2")]
    [InlineData("batched:2:1:0", "'batched:2:1:0' has micro-batches M 0, below 1")]
    [InlineData("bytes:lots:1GiB", "'bytes:lots:1GiB': live budget must be a positive size")]
    public void A_bad_policy_is_one_line_naming_the_field_and_what_is_wrong(string text, string problem)
    {
        var e = Assert.Throws<FieldException>(() => OffloadPolicy.Parse(text));
        Assert.Equal("policy", e.Field);
        Assert.StartsWith(problem, e.Problem);
        Assert.StartsWith($"policy {problem}", e.Message);
        Assert.DoesNotContain('\n', e.Message);
        Assert.DoesNotContain("--", e.Message);
    }

    [Fact]
    public void The_cli_names_a_refused_field_by_its_own_flag_only_where_the_command_has_that_flag()
    {
        var policy = Assert.Throws<FieldException>(() => OffloadPolicy.Parse("fast"));
        Assert.StartsWith("--policy 'fast' is not a policy", Flags.Describe(policy, SimulateCommand.Build()));
        Assert.StartsWith("policy 'fast' is not a policy", Flags.Describe(policy, RunCommand.Build()));
        var window = Assert.Throws<FieldException>(() => OffloadPolicy.For(new(9, 1), layers: 5));
        Assert.Equal("--window must be from 1 to 5 (the model's layers) or 'all'; got 9", Flags.Describe(window, RunCommand.Build()));
        Assert.Equal("window must be from 1 to 5 (the model's layers) or 'all'; got 9", Flags.Describe(window, SimulateCommand.Build()));
    }

    [Fact]
    public void A_policy_that_does_not_fit_the_model_is_refused_naming_it()
    {
        var spec = SimulationSpecs.BuiltIn("llama2-7b@t4");
        var window = Assert.Throws<FieldException>(() => GenerationSimulator.Run(spec, OffloadPolicy.Parse("window:99:1")));
        Assert.Equal("policy window:99:1: k = 99 is above the model's 34 streamed layers", window.Message);
        var bytes = Assert.Throws<FieldException>(() => GenerationSimulator.Run(spec, OffloadPolicy.Parse("bytes:1MiB:1MiB")));
        Assert.StartsWith("policy bytes:1048576:1048576: live-parameter budget", bytes.Message);
    }

    [Theory]
    [InlineData("llama2-9000@t4", "spec 'llama2-9000@t4': unknown model 'llama2-9000' (known: llama2-7b,")]
    [InlineData("llama2-7b@v100", "spec 'llama2-7b@v100': unknown GPU 'v100' (known: t4,")]
    [InlineData("banana", "spec 'banana' is neither a file nor a built-in spec")]
    [InlineData("no/such/spec.json", "spec file 'no/such/spec.json' does not exist")]
    public void A_bad_spec_name_is_one_line_naming_it(string name, string message)
    {
        var e = Assert.Throws<FieldException>(() => SimulationSpecs.Resolve(name));
        Assert.Equal(FieldException.Spec, e.Field);
        Assert.StartsWith(message, e.Message);
        Assert.DoesNotContain('\n', e.Message);
        // simulate names its own flag for the field.
        Assert.StartsWith("--" + message, Flags.Describe(e, SimulateCommand.Build()));
    }

    [Theory]
    [InlineData("{ \"model\": \"llama2-7b\", \"gpu\": ", "x.json is not valid JSON")]
    [InlineData("[1, 2]", "x.json: the spec must be a JSON object")]
    [InlineData("{ \"gpu\": \"t4\" }", "x.json: 'model' is missing")]
    [InlineData("{ \"model\": \"llama2-7b\", \"gpu\": \"t4\", \"wokload\": {} }", "x.json: unknown field 'wokload' (known: ")]
    [InlineData("{ \"model\": \"gpt-5\", \"gpu\": \"t4\" }", "x.json: 'model' 'gpt-5' is not a built-in model")]
    [InlineData("{ \"model\": \"llama2-7b\", \"gpu\": \"t4\", \"workload\": { \"batch\": \"eight\" } }",
        "x.json: 'workload.batch' must be a whole number; got \"eight\"")]
    [InlineData("{ \"model\": \"llama2-7b\", \"gpu\": \"t4\", \"workload\": { \"batch\": 0 } }", "x.json: 'workload.batch' must be at least 1; got 0")]
    [InlineData("{ \"model\": \"llama2-7b\", \"gpu\": \"t4\", \"workload\": { \"kvCache\": \"disk\" } }",
        "x.json: 'workload.kvCache' must be device or host; got 'disk'")]
    [InlineData("{ \"model\": \"llama2-7b\", \"gpu\": \"t4\", \"dtype\": \"int3\" }",
        "x.json: 'dtype' must be one of fp32, fp16, bf16, int8, int4; got 'int3'")]
    [InlineData("{ \"model\": \"llama2-7b\", \"gpu\": \"t4\", \"policy\": \"window:0:1\" }", "x.json: 'policy' 'window:0:1' has k 0, below 1")]
    [InlineData("{ \"model\": \"llama2-7b\", \"gpu\": \"t4\", \"workload\": { \"prompt\": 4000, \"generate\": 200 } }",
        "x.json: workload.prompt + workload.generate (4200) exceeds llama2-7b's 4096 positions")]
    [InlineData("{ \"model\": { \"family\": \"llama\", \"layers\": 2, \"hidden\": 100, \"heads\": 3, \"ffn\": 10, \"vocab\": 10 }, \"gpu\": \"t4\" }",
        "x.json: model custom: hidden (100) must be a multiple of heads (3)")]
    [InlineData("{ \"model\": \"llama2-7b\", \"gpu\": { \"memoryGiB\": 16, \"linkGBps\": 12 } }", "x.json: 'gpu.tflops' is missing")]
    public void Bad_json_is_one_line_naming_the_field(string json, string message)
    {
        var e = Assert.Throws<ArgumentException>(() => SimulationSpecs.Parse(json, "x.json"));
        Assert.StartsWith(message, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void A_json_spec_with_its_own_model_and_gpu_simulates()
    {
        var spec = SimulationSpecs.Parse("""
            {
              "name": "tiny", "dtype": "int8",
              "model": { "name": "tiny-llama", "family": "llama", "layers": 4, "hidden": 256, "heads": 8, "kvHeads": 2, "ffn": 688,
                         "vocab": 1000, "maxPositions": 512 },
              "gpu": { "name": "toy", "memoryGiB": 0.05, "linkGBps": 1, "tflops": 1, "memoryGBps": 100, "latencyUs": 0 },
              "host": { "attentionGflops": 5 },
              "workload": { "batch": 2, "prompt": 16, "generate": 3, "microBatches": 2, "kvCache": "host", "residentLayers": [0] },
              "policy": "batched:2:1:2",
              "compare": ["sync", "window:3:1"]
            }
            """, "tiny.json");
        Assert.Equal("tiny", spec.Name);
        Assert.Equal(WeightFormat.Int8, spec.Format);
        Assert.Equal(2, spec.Model.KvHeads);
        Assert.Equal(0, spec.Gpu.TransferLatencySeconds);
        Assert.Equal(KvPlacement.Host, spec.Workload.Kv);
        Assert.Equal(new[] { OffloadPolicy.Synchronous, OffloadPolicy.WindowOf(3, 1) }, spec.ComparePolicies().ToArray());
        var r = GenerationSimulator.Run(spec, spec.Policy);
        Assert.Equal(0, r.Prefill.Cost.Layers[0].Bytes); // the resident embedding is not streamed
        Assert.True(r.Passes[1].Work[1].HostFlops > 0);
        Assert.Equal(2 * 2 * 3, r.TokensGenerated);
    }

    [Fact]
    public void The_example_spec_in_the_repository_parses_and_simulates()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !Directory.Exists(Path.Combine(dir.FullName, "specs"))) dir = dir.Parent;
        Assert.NotNull(dir);
        var files = Directory.GetFiles(Path.Combine(dir!.FullName, "specs"), "*.json");
        Assert.NotEmpty(files);
        foreach (var file in files)
        {
            var spec = SimulationSpecs.Resolve(file);
            Assert.True(GenerationSimulator.Run(spec, spec.Policy).TokensPerSecond > 0);
        }
    }

    [Fact]
    public void Calibration_simulates_every_published_case_with_documented_inputs()
    {
        var rows = Calibration.Run();
        Assert.Equal(Calibration.Cases.Length, rows.Length);
        Assert.Contains(rows, r => r.Case.System == "FlexGen" && r.Case.PublishedTokensPerSecond == 7.32 && r.Case.Spec.Policy.Kind == PolicyKind.Batched);
        Assert.Contains(rows, r => r.Case.System == "HF Accelerate" && r.Case.PublishedTokensPerSecond == 0.62
            && r.Case.Spec.Policy.Kind == PolicyKind.Synchronous);
        Assert.Contains(rows, r => r.Case.PublishedTokensPerSecond == 21.84 && r.Case.Spec.Policy.Kind == PolicyKind.ByteBudget
            && r.Case.Spec.Format == WeightFormat.Int4);
        // One row per published measurement: a figure simulated twice would count one data point as two.
        Assert.Equal(rows.Length, rows.Select(r => (r.Case.System, r.Case.PublishedTokensPerSecond)).Distinct().Count());
        foreach (var r in rows)
        {
            Assert.True(r.Result.Fits, $"{r.Case.Spec.Name}: {r.Result.OutOfMemory}");
            Assert.True(r.PredictedTokensPerSecond > 0);
            Assert.Equal((r.PredictedTokensPerSecond / r.Case.PublishedTokensPerSecond - 1) * 100, r.ErrorPercent, 9);
            Assert.NotEmpty(r.Case.Inputs);
        }
        var text = SimulationReport.CalibrationText(rows, 0.01);
        Assert.Contains("| case | system | policy | GPU | weights | batch | predicted tok/s | published tok/s | error | within 25 % |", text);
    }

    [Fact]
    public async Task Simulate_cli_writes_the_json_with_every_policy()
    {
        var dir = Directory.CreateTempSubdirectory("superpipeline-simulate-");
        try
        {
            var path = Path.Combine(dir.FullName, "sim.json");
            int code = await Cli.MainAsync(["simulate", "--spec", "llama2-7b@a6000", "--compare", "--generate", "4", "--timeline", "3", "--json", path]);
            Assert.Equal(0, code);
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            var root = doc.RootElement;
            Assert.Equal("llama2-7b@a6000", root.GetProperty("spec").GetProperty("name").GetString());
            Assert.Equal(4, root.GetProperty("spec").GetProperty("workload").GetProperty("generate").GetInt32());
            var policies = root.GetProperty("policies");
            Assert.Equal(5, policies.GetArrayLength());
            foreach (var p in policies.EnumerateArray())
            {
                Assert.True(p.GetProperty("tokensPerSecond").GetDouble() > 0);
                Assert.Equal(4, p.GetProperty("passes").GetArrayLength());
                Assert.Equal(34, p.GetProperty("timelines")[0].GetProperty("layers").GetArrayLength());
            }
            Assert.Equal(JsonValueKind.Number, root.GetProperty("wallSeconds").ValueKind);

            var calibration = Path.Combine(dir.FullName, "calibration.json");
            Assert.Equal(0, await Cli.MainAsync(["simulate", "--calibrate", "--json", calibration]));
            using var cal = JsonDocument.Parse(File.ReadAllText(calibration));
            Assert.Equal(Calibration.Cases.Length, cal.RootElement.GetProperty("cases").GetArrayLength());
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task Simulate_refuses_bad_input_before_any_work()
    {
        var output = new StringWriter();
        var f = await Assert.ThrowsAsync<FieldException>(() => SimulateCommand.RunAsync(new SimulateOptions(Spec: "llama2-7b@t4", Policy: "fast"), output));
        Assert.StartsWith("--policy 'fast' is not a policy", Flags.Describe(f, SimulateCommand.Build()));
        var e = await Assert.ThrowsAsync<ArgumentException>(() => SimulateCommand.RunAsync(new SimulateOptions(Spec: "llama2-7b@t4", Batch: 0), output));
        Assert.Equal("--batch must be at least 1; got 0", e.Message);
        e = await Assert.ThrowsAsync<ArgumentException>(() => SimulateCommand.RunAsync(new SimulateOptions(Spec: "llama2-7b@t4", Kv: "disk"), output));
        Assert.Equal("--kv must be device or host; got 'disk'", e.Message);
        Assert.Equal("", output.ToString());
        Assert.Equal(1, await Cli.MainAsync(["simulate", "--spec", "nope@t4"]));
    }
}
