using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Coordinator;
using Superpipeline.Coordinator.Commands;
using Superpipeline.Engine;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Workers;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>Checkpoints stored as F16 and BF16: LayerActors hold the stored dtype, the link carries it (bytes transferred are
/// half of F32's), the device widens to float32 with exact accounting, and the outputs equal, for every (k, k'), those of the
/// float32 model whose weights are the stored values widened (widening F16/BF16 to float32 is exact, so that model is the
/// independent expectation). export-demo --dtype writes them; a dtype that is not a weight dtype is one line naming the tensor.</summary>
public sealed class DtypeSpec() : TestKit(WorkerConfig.Load()), IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("dtype-spec-").FullName;

    static LlamaConfig Config(string torchDtype) => new(Hidden: 32, Ffn: 48, Layers: 3, Heads: 4, KvHeads: 2, RmsNormEps: 1e-5,
        RopeTheta: 10000.0, Vocab: 61, MaxPositions: 64, TieWordEmbeddings: false, TorchDtype: torchDtype);

    /// <summary>The same checkpoint with every tensor widened to F32 (read back through the parser, widened on the host).</summary>
    string Widened(string dir, string name)
    {
        string wide = Path.Combine(_root, name);
        Directory.CreateDirectory(wide);
        using var ckpt = SafetensorsCheckpoint.Open(dir);
        var tensors = ckpt.Names.Select(n =>
        {
            using var stored = ckpt.Read(n);
            return new KeyValuePair<string, Tensor>(n, stored.to_type(ScalarType.Float32));
        }).ToList();
        SafetensorsWriter.WriteCheckpoint(wide, tensors);
        foreach (var kv in tensors) kv.Value.Dispose();
        File.WriteAllText(Path.Combine(wide, "config.json"), Config("float32").ToJson());
        return wide;
    }

    sealed class Engine : IDisposable
    {
        readonly ActorSystem _system;
        readonly CheckpointWeights _source;
        public readonly LayeredModel Model;
        public readonly IActorRef[] Layers;
        readonly IActorRef _loader;
        public readonly SimulatedDevice Device = new("sim:0", 64L << 20, null);
        readonly Tensor _ids;

        public Engine(ActorSystem system, string dir)
        {
            _system = system;
            _source = new CheckpointWeights(dir);
            Model = Llama.Create("llama", LlamaConfig.Read(dir), batch: 2, sequence: 5);
            var tag = Guid.NewGuid().ToString("N")[..8];
            Layers = [.. Model.Layers.Select(l => system.ActorOf(LayerActor.Props(l, _source, pin: false), $"{tag}-layer-{l.Index}"))];
            _loader = system.ActorOf(DeviceLoaderActor.Props(Device, TimeSpan.FromSeconds(30)), $"{tag}-loader");
            _ids = Model.MakeInput(3);
        }

        public long InputBytes => TensorBytes.Of(_ids);

        public async Task<(byte[] Output, PassReport Report)> Pass(int? k, int? s)
        {
            var policy = OffloadPolicy.For(new PolicySpec(k, s), Model.Layers.Count);
            var answer = await _loader.Ask<object>(new DeviceLoaderActor.RunPass(Model, Layers, _ids, policy), TimeSpan.FromMinutes(2));
            if (answer is DeviceLoaderActor.PassFailed f) throw new PassFailedException(f.Reason);
            var ok = (DeviceLoaderActor.PassSucceeded)answer;
            using var output = ok.Output;
            return (TensorBytes.Raw(output), ok.Report);
        }

        public void Dispose()
        {
            foreach (var a in Layers.Append(_loader)) _system.Stop(a);
            _ids.Dispose();
            _source.Dispose();
            Device.Dispose();
        }
    }

    [Theory]
    [InlineData("bf16", "bfloat16", "BF16", ScalarType.BFloat16)]
    [InlineData("f16", "float16", "F16", ScalarType.Float16)]
    public async Task A_half_checkpoint_runs_bit_identical_for_every_window_and_swap_to_the_float32_model_of_its_widened_values(
        string flag, string torchDtype, string stored, ScalarType type)
    {
        string dir = Path.Combine(_root, flag);
        var config = Config("float32");
        ExportDemoCommand.Export("llama", flag, dir, seed: 4, shards: 2, () => config);
        Assert.Equal(torchDtype, LlamaConfig.Read(dir).TorchDtype);
        using (var ckpt = SafetensorsCheckpoint.Open(dir))
            Assert.All(ckpt.Names, n => Assert.Equal(stored, ckpt.Entry(n).Dtype));
        string wide = Widened(dir, flag + "-widened");

        using var half = new Engine(Sys, dir);
        using var f32 = new Engine(Sys, wide);
        var (expected, f32Report) = await f32.Pass(null, null);

        // The LayerActors hold the stored dtype: half the bytes of the float32 layer.
        foreach (var (actor, layer) in half.Layers.Zip(half.Model.Layers))
        {
            var held = await actor.Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, TimeSpan.FromSeconds(30));
            Assert.All(held.Tensors, t => Assert.Equal(type, t.Tensor.dtype));
            Assert.Equal(layer.Bytes, 2 * held.Tensors.Sum(t => TensorBytes.Of(t.Tensor)));
        }

        int n = half.Model.Layers.Count, cases = 0;
        for (int k = 1; k <= n; k++)
            for (int s = 1; s <= k; s++, cases++)
            {
                var (output, report) = await half.Pass(k, s);
                Assert.True(expected.AsSpan().SequenceEqual(output), $"{flag}: k={k}, k'={s} differs from the widened float32 model");
                // The link carried the stored bytes: the input, then every layer's weights at half their float32 size.
                Assert.Equal(half.InputBytes + half.Model.Bytes / 2, report.BytesTransferred);
            }
        Assert.Equal(15, cases); // 5 layers
        var (resident, halfReport) = await half.Pass(null, null);
        Assert.Equal(expected, resident);
        Assert.Equal(f32Report.BytesTransferred - f32.InputBytes, 2 * (halfReport.BytesTransferred - half.InputBytes));
        Assert.Equal(0, half.Device.Memory.Reserved);
    }

    [Fact]
    public async Task Widening_on_the_device_holds_the_float32_bytes_and_moves_the_stored_ones()
    {
        using var device = new SimulatedDevice("sim:0", 1L << 20, null);
        using var a = arange(0, 100, dtype: ScalarType.Float32).div(3).to_type(ScalarType.BFloat16);
        using var b = arange(-50, 50, dtype: ScalarType.Float32).div(7).to_type(ScalarType.Float16);
        using var c = ones(10, dtype: ScalarType.Float32);
        var placed = await device.OnTransferThread(() => device.Upload([("a", a), ("b", b), ("c", c)], "test"));
        // Stored: a 200, b 200, c 40 bytes; on the device a and b hold 400 each (float32) and c 40. The simulated device widens
        // as it copies, so nothing beyond those 840 bytes is ever held.
        Assert.Equal(840, device.Memory.Reserved);
        Assert.Equal(840, device.Memory.Peak);
        Assert.Equal((840L, 440L), (placed.Bytes, placed.TransferredBytes));
        Assert.All(placed.Tensors.Values, t => Assert.Equal(ScalarType.Float32, t.dtype));
        // torch's own widening is the reference, bit for bit.
        using (var wa = a.to_type(ScalarType.Float32)) Assert.Equal(TensorBytes.Raw(wa), TensorBytes.Raw(placed["a"]));
        using (var wb = b.to_type(ScalarType.Float32)) Assert.Equal(TensorBytes.Raw(wb), TensorBytes.Raw(placed["b"]));
        Assert.Equal(TensorBytes.Raw(c), TensorBytes.Raw(placed["c"]));
        placed.Dispose();
        Assert.Equal(0, device.Memory.Reserved);

        // A device with room for the stored copy but not the widened one refuses, and keeps nothing reserved.
        using var small = new SimulatedDevice("sim:1", 300, null);
        var e = await Assert.ThrowsAsync<DeviceOutOfMemoryException>(() => small.OnTransferThread(() => small.Upload([("c", c), ("a", a)], "layer 0")));
        Assert.Contains("layer 0 (widened to Float32) needs 400 bytes", e.Message);
        Assert.Equal(0, small.Memory.Reserved);
    }

    [Fact]
    public async Task A_weight_of_another_dtype_and_an_unknown_dtype_are_one_line_naming_the_file_and_tensor()
    {
        var config = Config("float32");
        string dir = Path.Combine(_root, "ints");
        LlamaExport.Write(dir, config, seed: 2);
        string file = Path.Combine(dir, SafetensorsCheckpoint.SingleFile);
        Dictionary<string, Tensor> sd;
        using (var ckpt = SafetensorsCheckpoint.Open(dir)) sd = ckpt.Names.ToDictionary(n => n, ckpt.Read);
        string norm = Llama.Names.FinalNorm;
        sd[norm] = sd[norm].to_type(ScalarType.Int64);
        SafetensorsWriter.WriteCheckpoint(dir, sd);
        foreach (var t in sd.Values) t.Dispose();
        using (var source = new CheckpointWeights(dir))
        {
            var e = Assert.Throws<SafetensorsException>(() => source.Load(Llama.Create("llama", config, 1, 1).Layers[^1]));
            Assert.Equal($"{file}: tensor '{norm}': is I64; weights are read as F32, F16, BF16", e.Message);
        }

        // An unknown dtype in a header: refused when the file opens, naming the file and the tensor.
        byte[] bytes = File.ReadAllBytes(file);
        int headerLength = (int)BitConverter.ToUInt64(bytes, 0);
        int at = bytes.AsSpan(8, headerLength).IndexOf("\"I64\""u8);
        Assert.True(at > 0);
        "\"Q64\""u8.CopyTo(bytes.AsSpan(8 + at));
        File.WriteAllBytes(file, bytes);
        var u = Assert.Throws<SafetensorsException>(() => { using var f = SafetensorsFile.Open(file); });
        Assert.Equal($"{file}: tensor '{norm}': unknown dtype 'Q64'", u.Message);
        Assert.Equal(1, await Cli.MainAsync(["run", "--model", dir]));
    }

    [Fact]
    public async Task Export_demo_writes_the_dtype_asked_for_and_refuses_others_naming_the_flag()
    {
        string dir = Path.Combine(_root, "gpt2-bf16");
        Assert.Equal(0, await Cli.MainAsync(["export-demo", "--family", "gpt2", "--out", dir, "--layers", "1", "--hidden", "16", "--heads", "2",
            "--ffn", "32", "--vocab", "40", "--max-positions", "8", "--dtype", "bf16"]));
        Assert.Equal("bfloat16", Gpt2Config.Read(dir).TorchDtype);
        using (var ckpt = SafetensorsCheckpoint.Open(dir))
        {
            Assert.All(ckpt.Names, n => Assert.Equal("BF16", ckpt.Entry(n).Dtype));
            // The stored values are the seeded float32 weights rounded to bfloat16.
            var model = Gpt2.Create("gpt2", Gpt2Config.Read(dir), 1, 1, Gpt2.PrefixIn(dir));
            var seeded = new SeededWeights(1).Load(model.Layers[1]);
            foreach (var (name, w) in seeded)
            {
                using var rounded = w.to_type(ScalarType.BFloat16);
                using var read = ckpt.Read(name);
                Assert.Equal(TensorBytes.Raw(rounded), TensorBytes.Raw(read));
                w.Dispose();
            }
        }
        Assert.Equal(0, await Cli.MainAsync(["run", "--model", dir, "--window", "1", "--seq-len", "4", "--batch", "1"]));
        var e = Assert.Throws<ArgumentException>(() => ExportDemoCommand.Export("llama", "f8", Path.Combine(_root, "x"), 1, 1, () => Config("float32")));
        Assert.Equal("--dtype must be f32, f16 or bf16; got 'f8'", e.Message);
        Assert.False(Directory.Exists(Path.Combine(_root, "x")));
    }

    public new void Dispose()
    {
        base.Dispose();
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { }
    }
}
