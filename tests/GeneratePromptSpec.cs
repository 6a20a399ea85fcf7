using Superpipeline.Coordinator;
using Superpipeline.Coordinator.Commands;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Text;

namespace Superpipeline.Tests;

/// <summary><c>generate --prompt</c>: text through the checkpoint's tokenizer, prompts of different lengths batched with left
/// padding (each row equal to its prompt alone), and the knobs a user turns for generation (window auto, pinned layers, the disk
/// tier, host KV) leaving the tokens unchanged.</summary>
public sealed class GeneratePromptSpec : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("superpipeline-prompt-").FullName;

    /// <summary>A Llama checkpoint with grouped heads and a SentencePiece tokenizer (vocab 300: the 256 bytes, specials, merges).</summary>
    async Task<string> Checkpoint()
    {
        string dir = Path.Combine(_dir, "llama");
        Assert.Equal(0, await Cli.MainAsync(["export-demo", "--family", "llama", "--out", dir, "--layers", "3", "--hidden", "32", "--heads", "4",
            "--kv-heads", "2", "--ffn", "48", "--vocab", "300", "--max-positions", "64", "--seed", "12", "--dtype", "bf16"]));
        Assert.True(File.Exists(Path.Combine(dir, "tokenizer.model")));
        return dir;
    }

    async Task<long[,]> Generate(string dir, params string[] args)
    {
        string output = Path.Combine(_dir, $"tokens-{Guid.NewGuid():N}.npy");
        Assert.Equal(0, await Cli.MainAsync(["generate", "--model", dir, "--max-new-tokens", "7", "--device-memory", "4MiB", "--output", output, .. args]));
        var (_, shape, data) = Npy.Read(output);
        var tokens = new long[shape[0], shape[1]];
        Buffer.BlockCopy(data, 0, tokens, 0, data.Length);
        return tokens;
    }

    static long[] Generated(long[,] tokens, int row) =>
        [.. Enumerable.Range(tokens.GetLength(1) - 7, 7).Select(t => tokens[row, t])];

    [Fact]
    public async Task Prompts_of_different_lengths_give_each_row_the_tokens_of_its_prompt_alone()
    {
        string dir = await Checkpoint();
        string[] prompts = ["The layers stream onto the device", "A cat", "Offload"];
        var tokenizer = CheckpointTokenizer.Load(dir);
        Assert.Equal(3, prompts.Select(p => tokenizer.Encode(p).Count).Distinct().Count()); // three lengths: padding is exercised
        var batch = await Generate(dir, ["--window", "1", "--kv", "host", .. prompts.SelectMany(p => new[] { "--prompt", p })]);
        for (int row = 0; row < prompts.Length; row++)
        {
            var alone = await Generate(dir, "--window", "all", "--prompt", prompts[row]);
            Assert.Equal(Generated(alone, 0), Generated(batch, row));
            var ids = tokenizer.Encode(prompts[row]);
            int pad = batch.GetLength(1) - 7 - ids.Count; // left padding, then the prompt's own ids
            Assert.Equal(ids.Select(i => (long)i), Enumerable.Range(pad, ids.Count).Select(t => batch[row, t]));
        }
    }

    [Fact]
    public async Task Window_auto_pinned_layers_and_the_disk_tier_give_the_tokens_of_a_resident_run()
    {
        string dir = await Checkpoint();
        string[] prompts = ["--prompt", "Weights live in host memory", "--prompt", "k and k'"];
        var resident = await Generate(dir, ["--window", "all", .. prompts]);
        Assert.Equal(resident, await Generate(dir, ["--window", "auto", .. prompts]));
        Assert.Equal(resident, await Generate(dir, ["--window", "1", "--resident-layers", "2", .. prompts]));
        Assert.Equal(resident, await Generate(dir, ["--window", "2", "--resident-layers", "auto", "--kv", "host", .. prompts]));
        long half = new DirectoryInfo(dir).GetFiles("*.safetensors").Sum(f => f.Length) / 2; // half the weights: the disk tier reads layers
        string report = Path.Combine(_dir, "disk.json");
        Assert.Equal(resident, await Generate(dir, ["--window", "2", "--host-memory", $"{half}", "--report", report, .. prompts]));
        using var json = System.Text.Json.JsonDocument.Parse(File.ReadAllText(report));
        long peakHost = json.RootElement.GetProperty("generation").GetProperty("peakHostWeightBytes").GetInt64();
        Assert.InRange(peakHost, 1, half); // measured, and within the budget
    }

    [Fact]
    public async Task Bad_prompts_are_refused_in_one_line()
    {
        string dir = await Checkpoint();
        var e = Assert.Throws<ArgumentException>(() => GenerationPrompts.Read(dir, "ids.npy", ["a"]));
        Assert.Equal("--prompt and --input cannot be given together: each gives the token ids", e.Message);
        e = Assert.Throws<ArgumentException>(() => GenerationPrompts.Read(dir, null, []));
        Assert.Equal("no prompts: give --prompt TEXT (once per row) or --input ids.npy", e.Message);
        e = Assert.Throws<ArgumentException>(() => GenerationPrompts.Read(dir, null, [string.Concat(Enumerable.Repeat("zq ", 80))]));
        Assert.StartsWith("prompt 1 is ", e.Message);
        Assert.EndsWith("more than the 64 positions the model has (max_position_embeddings)", e.Message);
        Assert.NotEqual(0, await Cli.MainAsync(["generate", "--model", dir, "--prompt", "a", "--input", "ids.npy"]));
        Assert.NotEqual(0, await Cli.MainAsync(["generate", "--model", Path.Combine(_dir, "nowhere"), "--prompt", "a"]));
    }

    [Fact]
    public void Steps_a_failed_over_job_sends_again_are_shown_once()
    {
        var shown = new List<int>();
        var onToken = GenerateCommand.NewSteps(t => shown.Add(t.Step));
        foreach (int step in new[] { 0, 1, 2, 0, 1, 2, 3, 4 }) // a restart from the prompt after step 2
            onToken(new Superpipeline.Messages.JobProtocol.JobToken(new Superpipeline.Contracts.JobId("j"), step, [7]));
        Assert.Equal([0, 1, 2, 3, 4], shown);
    }

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }
}
