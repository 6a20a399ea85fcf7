using System.Text.Json;
using Superpipeline.Engine.IO;

namespace Superpipeline.Tests;

/// <summary><c>superpipeline generate</c> in its own process: tokens written as int64 [batch, prompt + new], the same for every
/// (k, k') and KV placement, a report with the generation's figures, and one line naming the flag for each bad input.</summary>
public sealed class GenerationCliSpec : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("superpipeline-gen-").FullName;


    /// <summary>A GPT-2 checkpoint (64 positions, eos_token_id 95) and a [2, 5] prompt file.</summary>
    (string Model, string Input) Checkpoint()
    {
        string model = Path.Combine(_dir, "gpt2");
        var (code, _, err) = CliProcess.Run("export-demo", "--family", "gpt2", "--out", model, "--layers", "2", "--hidden", "32", "--heads", "4", "--ffn", "64",
            "--vocab", "96", "--max-positions", "64", "--seed", "3");
        Assert.True(code == 0, err);
        string input = Path.Combine(_dir, "ids.npy");
        long[] ids = [1, 2, 3, 4, 5, 9, 8, 7, 6, 5];
        Npy.Write(input, new Superpipeline.Contracts.TensorPayload("Int64", [2, 5], [.. ids.SelectMany(BitConverter.GetBytes)]));
        return (model, input);
    }

    [Fact]
    public void Generate_writes_the_same_tokens_for_every_window_and_kv_placement_and_a_report()
    {
        var (model, input) = Checkpoint();
        byte[]? first = null;
        foreach (var extra in new[] { new[] { "--window", "all" }, ["--window", "1", "--kv", "host"], ["--window", "3", "--swap", "2"] })
        {
            string output = Path.Combine(_dir, $"tokens-{Guid.NewGuid():N}.npy"), report = Path.Combine(_dir, "report.json");
            var (code, stdout, err) = CliProcess.Run(["generate", "--model", model, "--input", input, "--max-new-tokens", "6", "--temperature", "0.8",
                "--top-k", "20", "--seed", "4", "--output", output, "--report", report, .. extra]);
            Assert.True(code == 0, err);
            Assert.Contains("token 6: ", stdout);
            var (descr, shape, data) = Npy.Read(output);
            Assert.Equal("<i8", descr);
            Assert.Equal([2L, 11], shape);
            Assert.Equal([1L, 2, 3, 4, 5], Enumerable.Range(0, 5).Select(i => BitConverter.ToInt64(data, i * 8)));
            first ??= data;
            Assert.True(first.SequenceEqual(data), $"{string.Join(' ', extra)} gives other tokens");
            using var json = JsonDocument.Parse(File.ReadAllText(report));
            var g = json.RootElement.GetProperty("generation");
            Assert.Equal(95, json.RootElement.GetProperty("eos").GetInt64()); // config.json's eos_token_id
            Assert.Equal(6, g.GetProperty("passes").GetInt32());
            Assert.True(g.GetProperty("kvBytes").GetInt64() == 2 * 2 * (2L * 4 * 11 * 8 * 4), g.ToString());
            Assert.True(g.GetProperty("peakDeviceBytes").GetInt64() > 0);
        }
    }

    [Theory]
    [InlineData("--max-new-tokens 0", "--max-new-tokens must be at least 1; got 0")]
    [InlineData("--temperature 0", "--temperature must be a positive number when sampling; got 0")]
    [InlineData("--temperature -1.5", "--temperature must be a positive number when sampling; got -1.5")]
    [InlineData("--top-k 0", "--top-k must be at least 1; got 0")]
    [InlineData("--top-p 1.5", "--top-p must be in (0, 1]; got 1.5")]
    [InlineData("--top-p 0", "--top-p must be in (0, 1]; got 0")]
    [InlineData("--max-new-tokens 60", "--max-new-tokens (60) plus the prompt's 5 tokens exceed the model's 64 positions")]
    [InlineData("--kv disk", "--kv must be 'device' or 'host'; got 'disk'")]
    [InlineData("--eos 96", "--eos id 96 is outside the vocabulary [0, 96)")]
    [InlineData("--window 9", "--window must be from 1 to 4 (the model's layers) or 'all'; got 9")]
    public void Bad_input_is_one_line_naming_the_flag_and_a_non_zero_exit(string flags, string message)
    {
        var (model, input) = Checkpoint();
        var (code, _, err) = CliProcess.Run(["generate", "--model", model, "--input", input, .. flags.Split(' ')]);
        Assert.NotEqual(0, code);
        Assert.Equal($"superpipeline: {message}", err.Trim());
    }

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }
}
