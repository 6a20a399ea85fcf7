using Superpipeline.Coordinator;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Text;

namespace Superpipeline.Tests;

/// <summary><c>run --model DIR --prompt TEXT</c>: the prompts go through the checkpoint's tokenizer into the ids
/// <c>--input ids.npy</c> would give, bit for bit the same logits, for both families; and the one-line refusals.</summary>
public sealed class TokenizerRunSpec : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("superpipeline-prompt-spec-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    string Path_(string name) => Path.Combine(_dir, name);

    async Task<string> Export(string family, int vocab, int positions = 64)
    {
        string dir = Path_($"{family}-{vocab}-{positions}");
        Assert.Equal(0, await Cli.MainAsync(["export-demo", "--family", family, "--out", dir, "--layers", "2", "--hidden", "32", "--heads", "4",
            "--ffn", "48", "--vocab", $"{vocab}", "--max-positions", $"{positions}", "--seed", "3"]));
        return dir;
    }

    async Task<byte[]> Run(string dir, params string[] extra)
    {
        string output = Path_($"out-{Guid.NewGuid():N}.npy");
        Assert.Equal(0, await Cli.MainAsync(["run", "--model", dir, "--window", "2", "--output", output, .. extra]));
        var (descr, _, data) = Npy.Read(output);
        Assert.Equal("<f4", descr);
        return data;
    }

    static string[] TemporaryPrompts() => Directory.GetFiles(Path.GetTempPath(), $"superpipeline-prompt-{Environment.ProcessId}-*.npy");

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public async Task Run_with_prompts_gives_the_logits_of_run_with_the_same_ids_from_a_file(string family)
    {
        string dir = await Export(family, 400);
        var tokenizer = CheckpointTokenizer.Load(dir);
        // Two prompts of one length: rows of one batch.
        var prompts = new[] { "Hello world", "The model", "The device", "A window", "Each layer", "the next ones", "Hello there" }
            .GroupBy(p => tokenizer.Encode(p).Count).First(g => g.Count() >= 2).Take(2).ToArray();
        var ids = prompts.Select(tokenizer.Encode).ToArray();
        int seq = ids[0].Count;
        string file = Path_("ids.npy");
        Npy.Write(file, new TensorPayload("Int64", [2, seq], [.. ids.SelectMany(r => r).SelectMany(id => BitConverter.GetBytes((long)id))]));
        var before = TemporaryPrompts();

        var fromPrompts = await Run(dir, "--prompt", prompts[0], "--prompt", prompts[1]);
        var fromFile = await Run(dir, "--input", file);
        Assert.Equal(2 * seq * 400 * sizeof(float), fromPrompts.Length); // logits [2, seq, vocab]
        Assert.True(fromFile.AsSpan().SequenceEqual(fromPrompts), "run --prompt differs from run --input with the same ids");
        Assert.Equal(before, TemporaryPrompts()); // the temporary ids file is gone

        // Another prompt order is another batch: the rows swap (to rounding: a row's place in the batch may change the kernels' sums).
        var swapped = await Run(dir, "--prompt", prompts[1], "--prompt", prompts[0]);
        int row = seq * 400;
        var a = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(swapped).ToArray();
        var b = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(fromPrompts).ToArray();
        for (int i = 0; i < row; i++)
        {
            Assert.Equal(b[row + i], a[i], 1e-4);
            Assert.Equal(b[i], a[row + i], 1e-4);
        }
        Assert.False(a.AsSpan(0, row).SequenceEqual(a.AsSpan(row, row))); // the two prompts give two rows
    }

    [Fact]
    public async Task Bad_prompts_are_refused_in_one_line()
    {
        // 257 ids: the bytes and <|endoftext|>, no merges, so a prompt's tokens are its UTF-8 bytes.
        string dir = await Export("gpt2", 257, positions: 8);
        string small = await Export("gpt2", 256);
        var error = Console.Error;
        var captured = new StringWriter();
        Console.SetError(captured);
        try
        {
            async Task<string> Refused(params string[] args)
            {
                captured.GetStringBuilder().Clear();
                Assert.Equal(1, await Cli.MainAsync(args));
                string line = captured.ToString().TrimEnd();
                Assert.DoesNotContain('\n', line);
                return line;
            }

            Assert.Equal("superpipeline: prompts of different lengths (6, 3 tokens) need an attention mask; `generate` takes them", // é is two bytes
                await Refused("run", "--model", dir, "--prompt", "héllo", "--prompt", "abc"));
            Assert.Contains("--prompt and --input cannot be given together", await Refused("run", "--model", dir, "--prompt", "a", "--input", "x.npy"));
            Assert.Contains("--prompt needs --model to name a checkpoint directory", await Refused("run", "--prompt", "a"));
            Assert.Contains("--seq-len and --batch cannot be given with --prompt", await Refused("run", "--model", dir, "--prompt", "a", "--batch", "2"));
            Assert.Equal("superpipeline: prompt 1 is 9 tokens, more than the 8 positions the model has (n_positions)",
                await Refused("run", "--model", dir, "--prompt", "123456789"));
            Assert.Contains("prompt 1 encodes to no tokens", await Refused("run", "--model", dir, "--prompt", ""));
            Assert.Contains("has no tokenizer: expected tokenizer.json, vocab.json + merges.txt, or tokenizer.model",
                await Refused("run", "--model", small, "--prompt", "a"));
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"), "{");
            Assert.Contains("tokenizer.json: is not valid JSON", await Refused("run", "--model", dir, "--prompt", "a"));
        }
        finally
        {
            Console.SetError(error);
        }
    }
}
