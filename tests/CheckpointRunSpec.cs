using System.Text.Json;
using Superpipeline.Coordinator;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Coordinator.Commands;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.IO;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Tests;

/// <summary>A Llama checkpoint written by export-demo and run from the CLI (run --model DIR) and through a cluster: every
/// (k, k') gives the resident output bit for bit, the weights are the checkpoint's, and bad checkpoints or inputs are refused
/// in one line before any work.</summary>
public sealed class CheckpointRunSpec : IAsyncLifetime
{
    readonly string _dir = Directory.CreateTempSubdirectory("superpipeline-ckpt-").FullName;
    readonly List<IAsyncDisposable> _hosts = [];

    string Path_(string name) => Path.Combine(_dir, name);

    async Task<string> Export(string name, long seed, int shards = 1)
    {
        string dir = Path_(name);
        Assert.Equal(0, await Cli.MainAsync(["export-demo", "--family", "llama", "--out", dir, "--layers", "2", "--hidden", "32", "--heads", "4",
            "--kv-heads", "2", "--ffn", "48", "--vocab", "96", "--seed", $"{seed}", "--shards", $"{shards}", "--dtype", "f32"]));
        return dir;
    }

    async Task<byte[]> Run(string dir, string window, string? swap = null, string[]? extra = null)
    {
        string output = Path_($"out-{Guid.NewGuid():N}.npy");
        string[] args = ["run", "--model", dir, "--window", window, "--seq-len", "6", "--batch", "2", "--output", output];
        if (swap is not null) args = [.. args, "--swap", swap];
        Assert.Equal(0, await Cli.MainAsync([.. args, .. extra ?? []]));
        var (descr, shape, data) = Npy.Read(output);
        Assert.Equal("<f4", descr);
        Assert.Equal([2L, 6, 96], shape); // logits [batch, seq, vocab]
        return data;
    }

    [Fact]
    public async Task An_exported_checkpoint_runs_from_the_cli_bit_identical_to_resident_for_every_window_and_swap()
    {
        string dir = await Export("ckpt", seed: 5, shards: 2);
        var config = LlamaConfig.Read(dir);
        Assert.Equal((2, 32, 4, 2, 48, 96), (config.Layers, config.Hidden, config.Heads, config.KvHeads, config.Ffn, config.Vocab));
        var resident = await Run(dir, "all");
        // 4 layers (embeddings, 2 blocks, head): window 1, 2 with swap 1 and 2, 3.
        foreach (var (k, s) in new[] { ("1", "1"), ("2", "1"), ("2", "2"), ("3", "1") })
        {
            var streamed = await Run(dir, k, s);
            Assert.True(resident.SequenceEqual(streamed), $"window {k}, swap {s} differs from resident");
        }

        // The weights come from the checkpoint: another exported seed, run with the same flags, changes the logits.
        string other = await Export("other", seed: 6);
        var otherOutput = await Run(other, "all");
        Assert.False(resident.SequenceEqual(otherOutput));
    }

    [Fact]
    public async Task An_exported_gpt2_checkpoint_runs_from_the_cli_bit_identical_to_resident()
    {
        string dir = Path_("gpt2");
        Assert.Equal(0, await Cli.MainAsync(["export-demo", "--family", "gpt2", "--out", dir, "--layers", "2", "--hidden", "32", "--heads", "4",
            "--ffn", "64", "--vocab", "96", "--max-positions", "16", "--seed", "3", "--shards", "2"]));
        var config = Gpt2Config.Read(dir);
        Assert.Equal((2, 32, 4, 64, 96, 16), (config.Layers, config.Hidden, config.Heads, config.Ffn, config.Vocab, config.MaxPositions));
        Assert.Equal(Gpt2Config.ModelType, ModelCatalog.CheckpointSpec(dir, 2, 6, 1).Name);
        var resident = await Run(dir, "all");
        foreach (var (k, s) in new[] { ("1", "1"), ("2", "2"), ("3", "1") })
        {
            var streamed = await Run(dir, k, s);
            Assert.True(resident.SequenceEqual(streamed), $"window {k}, swap {s} differs from resident");
        }
    }

    [Fact]
    public async Task Token_ids_from_a_npy_file_set_the_batch_and_sequence_and_are_checked_against_the_config()
    {
        string dir = await Export("ckpt", seed: 7);
        string ids = Path_("ids.npy");
        long[] values = [0, 1, 2, 95, 4, 5, 90, 80, 70, 60, 50, 40];
        Npy.Write(ids, new TensorPayload("Int64", [2, 6], [.. values.SelectMany(BitConverter.GetBytes)]));
        var spec = ModelCatalog.CheckpointSpec(dir, batch: 9, sequence: 9, seed: 1, input: ids);
        Assert.Equal((2, 6), (spec.Batch, spec.Sequence));
        string outA = Path_("a.npy"), outB = Path_("b.npy");
        string report = Path_("r.json");
        Assert.Equal(0, await Cli.MainAsync(["run", "--model", dir, "--input", ids, "--window", "1", "--output", outA, "--report", report]));
        using (var json = JsonDocument.Parse(File.ReadAllText(report)))
        {
            var model = json.RootElement.GetProperty("model");
            Assert.Equal((Path.GetFullPath(dir), Path.GetFullPath(ids)), (model.GetProperty("checkpoint").GetString(), model.GetProperty("input").GetString()));
            Assert.Equal((2, 6), (model.GetProperty("batch").GetInt32(), model.GetProperty("sequence").GetInt32()));
        }
        Assert.Equal(0, await Cli.MainAsync(["run", "--model", dir, "--input", ids, "--window", "all", "--seed", "99", "--output", outB]));
        Assert.Equal(Npy.Read(outA).Data, Npy.Read(outB).Data);
        Assert.NotEqual(await Run(dir, "all"), Npy.Read(outA).Data); // seeded ids differ from the file's

        string bad = Path_("bad.npy"), longer = Path_("long.npy");
        Npy.Write(bad, new TensorPayload("Int64", [1, 2], [.. new long[] { 3, 96 }.SelectMany(BitConverter.GetBytes)]));
        Npy.Write(longer, new TensorPayload("Int64", [1, 513], [.. new byte[513 * 8]]));
        var e = Assert.ThrowsAny<ArgumentException>(() => ModelCatalog.Create(spec with { Input = bad }));
        Assert.Equal($"{bad}: token id 96 at position 1 is outside the vocabulary [0, 96)", e.Message);
        e = Assert.ThrowsAny<ArgumentException>(() => ModelCatalog.Create(spec with { Input = longer }));
        Assert.Equal($"{longer}: sequence length 513 exceeds max_position_embeddings (512)", e.Message);
        Assert.Equal(1, await Cli.MainAsync(["run", "--model", dir, "--input", bad]));
        Assert.Equal(1, await Cli.MainAsync(["run", "--model", dir, "--input", ids, "--batch", "2"]));
    }

    [Fact]
    public async Task Bad_checkpoints_and_flags_are_refused_in_one_line_before_any_work()
    {
        string dir = await Export("ckpt", seed: 8, shards: 2);
        var spec = ModelCatalog.CheckpointSpec(dir, 2, 6, 1);

        string empty = Path_("empty");
        Directory.CreateDirectory(empty);
        var c = Assert.Throws<CheckpointConfigException>(() => ModelCatalog.CheckpointSpec(empty, 2, 6, 1));
        Assert.Equal($"{Path.Combine(empty, "config.json")}: not found", c.Message);
        Assert.Equal(1, await Cli.MainAsync(["run", "--model", empty]));

        string mistral = Path_("mistral");
        Directory.CreateDirectory(mistral);
        File.WriteAllText(Path.Combine(mistral, "config.json"), File.ReadAllText(Path.Combine(dir, "config.json")).Replace("\"llama\"", "\"mistral\""));
        c = Assert.Throws<CheckpointConfigException>(() => ModelCatalog.CheckpointSpec(mistral, 2, 6, 1));
        Assert.Contains("\"model_type\" is \"mistral\"", c.Message);
        Assert.Equal(1, await Cli.MainAsync(["run", "--model", mistral]));

        // A tensor missing from the index: refused from the headers by the preflight of run and submit, and by the job manager.
        string index = Path.Combine(dir, "model.safetensors.index.json");
        var json = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(File.ReadAllText(index))!;
        var map = json["weight_map"].Deserialize<Dictionary<string, string>>()!;
        map.Remove(Llama.Names.FinalNorm);
        File.WriteAllText(index, JsonSerializer.Serialize(new Dictionary<string, object> { ["metadata"] = json["metadata"], ["weight_map"] = map }));
        var s = Assert.Throws<SafetensorsException>(() => Preflight.Model(spec, new PolicySpec(1, 1)));
        Assert.Equal(Llama.Names.FinalNorm, s.Tensor);
        Assert.DoesNotContain('\n', s.Message);
        Assert.Equal(1, await Cli.MainAsync(["run", "--model", dir, "--window", "1"]));
        await using var host = EmbeddedHost.Start(new DeviceSpec(DeviceKind.Sim, 64L << 20, null), "superpipeline.pass-timeout = 60s");
        var answer = await host.RunAsync(new SubmitJob(JobId.New(), spec, new PolicySpec(1, 1))).WaitAsync(TimeSpan.FromSeconds(60));
        var refused = Assert.IsType<JobRefused>(answer);
        Assert.Contains(Llama.Names.FinalNorm, refused.Reason);

        Assert.Equal(1, await Cli.MainAsync(["run", "--model", dir, "--layers", "3"]));
        Assert.Equal(1, await Cli.MainAsync(["export-demo", "--family", "gpt2", "--kv-heads", "2", "--out", Path_("g")]));
        Assert.Equal(1, await Cli.MainAsync(["export-demo", "--out", Path_("h"), "--dtype", "f8"]));
        Assert.False(Directory.Exists(Path_("g")) || Directory.Exists(Path_("h")));
        var unknown = Assert.Throws<ArgumentException>(
            () => ExportDemoCommand.Export("opt", "f32", Path_("g"), 1, 1, () => throw new InvalidOperationException()));
        Assert.Equal("--family must be llama, gpt2, vit, clip or llava; got 'opt'", unknown.Message);
    }

    [Fact]
    public async Task A_checkpoint_job_submitted_to_a_cluster_gives_the_output_of_run()
    {
        string dir = await Export("ckpt", seed: 9);
        var expected = await Run(dir, "1", "1");

        var coordinator = ClusterHost.Start(new HostOptions(["coordinator"], "127.0.0.1", 0, [], [], ClusterSpec.TestConfig));
        _hosts.Add(coordinator);
        var worker = ClusterHost.Start(new HostOptions(["worker"], "127.0.0.1", 0, [$"127.0.0.1:{coordinator.Address.Port}"],
            DeviceSpecs.ParseList("sim:2x64MiB"), ClusterSpec.TestConfig));
        _hosts.Add(worker);
        var client = SubmitClient.Start([$"127.0.0.1:{coordinator.Address.Port}"], extraConfig: ClusterSpec.TestConfig);
        _hosts.Add(client);
        var spec = ModelCatalog.CheckpointSpec(dir, batch: 2, sequence: 6, seed: ModelSpec.Demo.Seed);
        var ok = Assert.IsType<JobSucceeded>(await client.RunAsync(new SubmitJob(new JobId("ckpt"), spec, new PolicySpec(1, 1)))
            .WaitAsync(TimeSpan.FromSeconds(120)));
        Assert.Equal(expected, ok.Output.Bytes.ToArray());
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var h in Enumerable.Reverse(_hosts)) await h.DisposeAsync();
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }
}
