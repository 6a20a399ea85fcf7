using Superpipeline.Contracts;
using Superpipeline.Coordinator;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Training;
using Superpipeline.Workers;
using Xunit;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>Fine-tuning on the repository's corpus (data/corpus/genesis.txt, tokenized with the checkpoint's tokenizer): the loss
/// falls; a saved training checkpoint (weights, optimizer state, run state) resumes exactly as the uninterrupted run goes on,
/// weights and losses bit for bit; a checkpoint of another model or optimizer is refused in one line; the saved checkpoint runs
/// with run and generate.</summary>
[Collection(TensorCountCollection.Name)]
public sealed class TrainingResumeSpec : IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("training-resume-").FullName;

    static readonly DeviceSpec Device = new(DeviceKind.Sim, 64L << 20, null);

    /// <summary>The corpus, found from the test's directory upwards (the repository root holds data/).</summary>
    internal static string Corpus
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                string path = Path.Combine(dir.FullName, "data", "corpus", "genesis.txt");
                if (File.Exists(path)) return path;
            }
            throw new FileNotFoundException("data/corpus/genesis.txt above " + AppContext.BaseDirectory);
        }
    }

    /// <summary>A 2-layer GPT-2 from export-demo with a vocabulary large enough for its byte-level tokenizer.</summary>
    async Task<string> Demo(string name = "demo", int hidden = 32)
    {
        string dir = Path.Combine(_root, name);
        var (code, error) = await Cli("export-demo", "--family", "gpt2", "--out", dir, "--layers", "2", "--hidden", hidden.ToString(), "--heads", "4",
            "--ffn", "64", "--vocab", "300", "--max-positions", "64");
        Assert.True(code == 0, error);
        return dir;
    }

    static TrainingRunOptions Options(string model, string data, int steps, TrainingSettings settings, int window, int swap) =>
        new(model, data, Batch: 4, steps, settings, new PolicySpec(window, swap), Device) { Sequence = 16 };

    static TrainingSettings AdamW(double? clip = 1.0, int micro = 2) =>
        new(new OptimizerSettings(OptimizerKind.AdamW, 3e-3, WeightDecay: 0.01), LrSchedule.Constant, clip, micro);

    static Task<TrainingRunResult> Train(TrainingRunOptions o) => TrainingRun.RunAsync(o, _ => { }, CancellationToken.None);

    /// <summary>The weights and optimizer state of two checkpoints are the same bytes, and the later steps' losses the same doubles.</summary>
    static void AssertSameRun(string expectedDir, string actualDir, IReadOnlyList<TrainingStepReport> expected, IReadOnlyList<TrainingStepReport> actual)
    {
        Assert.Equal(expected.Select(s => s.Step), actual.Select(s => s.Step));
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.True(expected[i].Loss == actual[i].Loss,
                $"step {expected[i].Step + 1}: loss {expected[i].Loss:R} uninterrupted, {actual[i].Loss:R} resumed");
            Assert.Equal(expected[i].MicroBatchLosses.ToArray(), actual[i].MicroBatchLosses.ToArray());
            Assert.Equal(expected[i].LearningRate, actual[i].LearningRate);
        }
        using var a = SafetensorsFile.Open(Path.Combine(expectedDir, SafetensorsCheckpoint.SingleFile));
        using var b = SafetensorsFile.Open(Path.Combine(actualDir, SafetensorsCheckpoint.SingleFile));
        Assert.Equal(a.Names, b.Names);
        foreach (var name in a.Names)
        {
            using var x = a.Read(name);
            using var y = b.Read(name);
            Assert.True(x.bytes.SequenceEqual(y.bytes), $"{name} differs from the uninterrupted run's");
        }
        Assert.Equal(File.ReadAllBytes(Path.Combine(expectedDir, TrainingCheckpoint.OptimizerFile)),
            File.ReadAllBytes(Path.Combine(actualDir, TrainingCheckpoint.OptimizerFile)));
    }

    [Fact]
    public async Task Training_n_steps_saving_and_resuming_for_m_more_equals_n_plus_m_uninterrupted_steps_bit_for_bit()
    {
        string model = await Demo();
        const int n = 3, m = 3;
        var settings = AdamW();
        string whole = Path.Combine(_root, "whole"), part = Path.Combine(_root, "part"), resumed = Path.Combine(_root, "resumed");
        var uninterrupted = await Train(Options(model, Corpus, n + m, settings, window: 2, swap: 1) with { SaveDir = whole });
        var first = await Train(Options(model, Corpus, n, settings, window: 2, swap: 1) with { SaveDir = part });
        Assert.Null(first.Failure);
        var state = TrainingCheckpoint.ReadState(part);
        Assert.Equal(n, state.Step);
        Assert.Equal(n * 4, state.NextRow);
        Assert.Equal("adamw", state.Optimizer);
        Assert.Equal(first.Steps.Select(s => s.Loss), state.History.Select(h => h.Loss));

        // Resumed under another window: the layers' arithmetic is the same whatever (k, k').
        var rest = await Train(Options(model, Corpus, n + m, settings, window: 1, swap: 1) with { SaveDir = resumed, ResumeDir = part });
        Assert.Null(rest.Failure);
        AssertSameRun(whole, resumed, uninterrupted.Steps.Skip(n).ToList(), rest.Steps);
        Assert.Equal(uninterrupted.Steps.Select(s => s.Loss), rest.History.Select(h => h.Loss));
    }

    [Fact]
    public async Task A_checkpoint_saved_every_n_steps_resumes_sgd_momentum_under_a_cosine_schedule_exactly()
    {
        string model = await Demo();
        var settings = new TrainingSettings(new OptimizerSettings(OptimizerKind.Sgd, 0.05, Momentum: 0.9, WeightDecay: 0.01),
            new LrSchedule(ScheduleKind.Cosine, 2, 6), ClipNorm: null, MicroBatches: 1);
        string whole = Path.Combine(_root, "whole"), resumed = Path.Combine(_root, "resumed");
        var uninterrupted = await Train(Options(model, Corpus, 6, settings, window: 2, swap: 2) with { SaveDir = whole, SaveEvery = 2 });
        Assert.Equal([2, 4], Directory.GetDirectories(whole).Select(d => int.Parse(Path.GetFileName(d)["checkpoint-".Length..])).Order());
        Assert.True(File.Exists(Path.Combine(whole, "checkpoint-4", TrainingCheckpoint.OptimizerFile)));
        var rest = await Train(Options(model, Corpus, 6, settings, window: 1, swap: 1)
            with { SaveDir = resumed, ResumeDir = Path.Combine(whole, "checkpoint-2") });
        AssertSameRun(whole, resumed, uninterrupted.Steps.Skip(2).ToList(), rest.Steps);
        Assert.NotEqual(rest.Steps[0].LearningRate, rest.Steps[^1].LearningRate); // the schedule moved on from where it stood
    }

    [Fact]
    public async Task Resuming_from_a_checkpoint_of_another_model_or_optimizer_is_one_line_naming_what_differs()
    {
        string model = await Demo(), wider = await Demo("wider", hidden: 48);
        string saved = Path.Combine(_root, "saved"), sgdSaved = Path.Combine(_root, "sgd");
        Assert.Equal(0, (await Cli(TrainArgs(model, "--steps", "2", "--save", saved))).Code);
        Assert.Equal(0, (await Cli(TrainArgs(model, "--steps", "2", "--optimizer", "sgd", "--momentum", "0.9", "--save", sgdSaved))).Code);

        var (code, error) = await Cli(TrainArgs(wider, "--steps", "4", "--resume", saved));
        Assert.Equal(1, code);
        Assert.Matches(@"^superpipeline: --resume \S+ is a checkpoint of another model: \S+ is \[\d+(, \d+)*\] there, \[\d+(, \d+)*\] in the model$",
            error.Trim());

        (code, error) = await Cli(TrainArgs(model, "--steps", "4", "--optimizer", "adamw", "--resume", sgdSaved));
        Assert.Equal(1, code);
        Assert.Equal($"superpipeline: --resume {sgdSaved} holds sgd optimizer state; this run's optimizer is adamw", error.Trim());

        (code, error) = await Cli(TrainArgs(model, "--steps", "4", "--optimizer", "sgd", "--resume", saved));
        Assert.Equal(1, code);
        Assert.Equal($"superpipeline: --resume {saved} holds adamw optimizer state; this run's optimizer is sgd", error.Trim());

        (code, error) = await Cli(TrainArgs(model, "--steps", "2", "--resume", saved));
        Assert.Equal(1, code);
        Assert.Equal($"superpipeline: --resume {saved} is at step 2, which leaves none of the 2 steps to train", error.Trim());

        (code, error) = await Cli(TrainArgs(model, "--steps", "4", "--resume", model));
        Assert.Equal(1, code);
        Assert.Contains("--resume", error);
        Assert.Single(error.Trim().Split('\n'));

        // A resume that changes a setting it can continue under runs, and says what it changed (the continuation is then its own).
        (code, error) = await Cli(TrainArgs(model, "--steps", "3", "--lr", "0.002", "--clip-norm", "0.5", "--resume", saved));
        Assert.Equal(0, code);
        Assert.Equal($"superpipeline train: resuming {saved} with --lr 0.002 (saved run: 0.001), --clip-norm 0.5 (saved run: none): the steps from "
            + "here are not the ones the saved run would have made", error.Trim());
        (code, error) = await Cli(TrainArgs(model, "--steps", "3", "--resume", saved));
        Assert.Equal(0, code);
        Assert.Equal("", error.Trim()); // the same settings: nothing to say

        (code, error) = await Cli(TrainArgs(model, "--steps", "4", "--save-every", "2"));
        Assert.Equal(1, code);
        Assert.Equal("superpipeline: --save-every needs a directory to save into (save)", error.Trim());
    }

    [Fact]
    public async Task The_loss_falls_over_a_short_run_on_the_corpus()
    {
        string model = await Demo();
        // One epoch is the corpus's first 5 · batch rows: steps 0-4 and 15-19 see the same rows in the same order, so the two means
        // differ only by what training changed (equal if the optimizer never moved the weights).
        string ids = Path.Combine(_root, "corpus.npy");
        using (var all = TrainingData.ReadText(Corpus, model, 16))
        using (var epoch = all.narrow(0, 0, 20).contiguous())
            Npy.Write(ids, new TensorPayload("Int64", [20, 16], [.. epoch.bytes.ToArray()]));
        var run = await Train(Options(model, ids, 20, AdamW(clip: null, micro: 1), window: 1, swap: 1));
        Assert.Null(run.Failure);
        double head = run.Steps.Take(5).Average(s => s.Loss), tail = run.Steps.TakeLast(5).Average(s => s.Loss);
        Assert.True(head > tail + 0.5, $"first 5 steps' mean loss {head:G6}, last 5 steps' {tail:G6}");
    }

    [Fact]
    public async Task A_saved_training_checkpoint_runs_with_run_and_generate_and_holds_the_trained_weights()
    {
        string model = await Demo(), saved = Path.Combine(_root, "saved"), report = Path.Combine(_root, "report.json"), plot = Path.Combine(_root, "loss.png");
        var (code, error) = await Cli(TrainArgs(model, "--steps", "3", "--save", saved, "--report", report, "--plot", plot));
        Assert.True(code == 0, error);
        Assert.True(new FileInfo(plot).Length > 1000);
        Assert.Contains("\"history\"", File.ReadAllText(report));
        using (var before = SafetensorsCheckpoint.Open(model))
        using (var after = SafetensorsCheckpoint.Open(saved))
        using (var w0 = before.Read("transformer.h.0.attn.c_attn.weight"))
        using (var w1 = after.Read("transformer.h.0.attn.c_attn.weight"))
            Assert.False(w0.bytes.SequenceEqual(w1.bytes), "training left the weights as they were");

        string output = Path.Combine(_root, "out.npy");
        (code, error) = await Cli("run", "--model", saved, "--seq-len", "6", "--batch", "2", "--window", "1", "--output", output);
        Assert.True(code == 0, error);
        var shape = Npy.Read(output).Shape;
        Assert.Equal(2, shape[0]);
        (code, error) = await Cli("generate", "--model", saved, "--prompt", "And God said", "--max-new-tokens", "4", "--window", "1");
        Assert.True(code == 0, error);
    }

    static string[] TrainArgs(string model, params string[] extra) =>
        ["train", "--model", model, "--data", Corpus, "--seq-len", "16", "--batch", "4", "--window", "1", "--device-memory", "64MiB", .. extra];

    internal static async Task<(int Code, string Error)> Cli(params string[] args)
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

    public void Dispose() => Directory.Delete(_root, recursive: true);
}
