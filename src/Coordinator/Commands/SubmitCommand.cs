using Superpipeline.Coordinator.Cluster;
using System.CommandLine;
using System.Security.Cryptography;
using Spectre.Console;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Bench;
using Superpipeline.Engine.Generation;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using Superpipeline.Workers;
using Superpipeline.Messages;
using System.Globalization;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Training;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Coordinator.Commands;

/// <summary><c>superpipeline submit</c>: a client outside the cluster (<see cref="SubmitClient"/>) sends one job, shows its
/// progress, and writes the same files as run; with <c>--generate N</c> a generation job (prompts from <c>--input</c>), whose tokens
/// and summary it prints and writes as generate does.</summary>
public static class SubmitCommand
{
    public const string DefaultConnectTimeout = "30s";

    public static Command Build()
    {
        var model = new ModelOptions();
        var contact = new Option<string[]>("--contact") { Description = "host:port of a coordinator (repeatable)", Required = true };
        var window = new Option<string>("--window") { Description = "k per stage (a number, 'all' or 'auto')", DefaultValueFactory = _ => "3" };
        var swap = new Option<string>("--swap") { Description = "k' per stage" };
        var resident = Flags.ResidentLayersOption();
        var id = new Option<string>("--id") { Description = "job id; resubmitting an id never runs the job twice (default: a new id)" };
        var report = new Option<string>("--report") { Description = "write the JSON report (with the placement) to this file" };
        var trace = new Option<string>("--trace") { Description = "write a Chrome trace of the stages' layers" };
        var output = new Option<string>("--output") { Description = "write the output tensor to this .npy file" };
        var hostname = new Option<string>("--hostname")
        {
            Description = "the interface this client listens on for answers; the coordinator must reach it", DefaultValueFactory = _ => "127.0.0.1",
        };
        var config = new Option<string>("--config") { Description = "a HOCON file whose settings override hocon/ (e.g. TLS, as on the members)" };
        var connect = new Option<string>("--connect-timeout")
        {
            Description = "how long to wait for a coordinator at a --contact to answer before giving up (like 30s, 500ms, 2m)",
            DefaultValueFactory = _ => DefaultConnectTimeout,
        };
        var verbose = new Option<bool>("--verbose") { Description = "show Akka's own log lines (remoting, cluster client) on stderr" };
        var generate = new Option<int?>("--generate")
        {
            Description = "generate N new tokens per row of --input (a checkpoint's --model DIR) instead of one pass; --seed seeds the sampling",
        };
        var temperature = new Option<double?>("--temperature") { Description = "with --generate: sample, dividing the logits by this (> 0) first" };
        var topK = new Option<int?>("--top-k") { Description = "with --generate: sample among the k most likely tokens (k ≥ 1)" };
        var topP = new Option<double?>("--top-p") { Description = "with --generate: sample among the most likely tokens holding this mass, in (0, 1]" };
        var eos = new Option<long?>("--eos") { Description = "with --generate: end-of-sequence id (default: config.json's eos_token_id)" };
        var kv = new Option<string>("--kv")
        {
            Description = "with --generate: where each stage keeps its KV cache, device or host", DefaultValueFactory = _ => "device",
        };
        var train = new TrainFlags();
        var submit = new Command("submit", "Submit a job to a running cluster through ClusterClient, show progress, and write the same files as run.");
        model.AddTo(submit);
        foreach (var o in new Option[] { contact, window, swap, resident, id, report, trace, output, hostname, config, connect, verbose, generate, temperature,
            topK, topP, eos, kv })
            submit.Options.Add(o);
        train.AddTo(submit);
        submit.SetAction(async (r, cancel) =>
        {
            OutputPaths.CheckWritable(r.GetValue(report), "--report");
            OutputPaths.CheckWritable(r.GetValue(trace), "--trace");
            OutputPaths.CheckWritable(r.GetValue(output), "--output");
            var timeout = Flags.ParseDuration(r.GetValue(connect)!, "--connect-timeout");
            if (r.GetValue(train.Train))
                return await TrainAsync(r, model, train, Flags.ParsePolicy(r.GetValue(window)!, r.GetValue(swap), r.GetValue(resident)), r.GetValue(id),
                    r.GetValue(report), r.GetValue(contact)!, r.GetValue(hostname)!, ConfigFile.Read(r.GetValue(config)), r.GetValue(verbose), timeout, cancel);
            var spec = model.Read(r);
            var policy = Flags.ParsePolicy(r.GetValue(window)!, r.GetValue(swap), r.GetValue(resident));
            var checkedModel = Preflight.Model(spec, policy);
            var contacts = r.GetValue(contact)!;
            var jobId = r.GetValue(id) is { } given ? new JobId(given) : JobId.New();
            var job = r.GetValue(generate) is { } n
                ? GenerationJob(jobId, spec, policy, checkedModel, n, r.GetValue(temperature), r.GetValue(topK), r.GetValue(topP), r.GetValue(model.Seed),
                    r.GetValue(eos), r.GetValue(kv)!, r.GetValue(trace))
                : new SubmitJob(jobId, spec, policy);
            await using var client = SubmitClient.Start(contacts, r.GetValue(hostname)!, ConfigFile.Read(r.GetValue(config)), r.GetValue(verbose));
            if (!await client.ConnectAsync(timeout, cancel))
            {
                string at = string.Join(", ", contacts);
                throw new TimeoutException($"no coordinator answered at {at} within {timeout.TotalSeconds:0.###} s (--connect-timeout)");
            }
            Console.Error.WriteLine($"superpipeline submit: job {job.Id} to {string.Join(", ", contacts)}");
            var answer = await client.RunAsync(job, p =>
            {
                if (p.Layer == p.Layers - 1 || p.Layer % 8 == 0) Console.Error.WriteLine($"  layer {p.Layer + 1}/{p.Layers} computed");
            }, GenerateCommand.NewSteps(t => GenerateCommand.PrintToken(AnsiConsole.Console, t)));
            if (job.Generation is { } asked)
            {
                var generated = GenerateCommand.Generated(job, answer);
                var tokens = generated.Tokens;
                var tokensSha = Convert.ToHexStringLower(SHA256.HashData(tokens.Bytes.AsSpan()));
                if (r.GetValue(output) is { } op) Npy.Write(op, tokens);
                if (r.GetValue(report) is { } rp)
                    ReportWriter.WriteJson(rp, new GenerateReportFile(spec.Checkpoint!, spec.Input!, Sampling(asked), asked.Eos, generated.Report,
                        [.. tokens.Shape], tokensSha));
                GenerateCommand.Summarize(AnsiConsole.Console, generated.Report, tokens, tokensSha, r.GetValue(report), r.GetValue(output));
                Console.WriteLine($"job {job.Id} generated {generated.Report.NewTokens} token(s) per row in {generated.Report.WallSeconds:0.000} s");
                return 0;
            }
            switch (answer)
            {
                case JobSucceeded ok:
                    var sha = Convert.ToHexStringLower(SHA256.HashData(ok.Output.Bytes.AsSpan()));
                    if (r.GetValue(report) is { } rp) JsonReport.Write(rp, JsonReport.Build(spec, ok.Report, ok.Output, sha));
                    if (r.GetValue(trace) is { } tp) ChromeTrace.Write(tp, ok.Report);
                    if (r.GetValue(output) is { } op) Npy.Write(op, ok.Output);
                    PrintStages(ok.Report);
                    Console.WriteLine($"job {job.Id} succeeded in {ok.Report.WallSeconds:0.000} s; output sha256 {sha}");
                    return 0;
                case JobRefused refused: throw new ArgumentException($"job {job.Id} refused: {refused.Reason}");
                case JobFailed failed: throw new ArgumentException($"job {job.Id} failed: {failed.Reason}");
                default: throw new InvalidOperationException($"unexpected answer {answer}");
            }
        });
        return submit;
    }

    /// <summary>The flags of <c>submit --train</c> (train's names, meanings and defaults; --batch and --seq-len are the model options').</summary>
    sealed class TrainFlags
    {
        public Option<bool> Train { get; } = new("--train") { Description = "run a training job over the stages (a checkpoint's --model, --data)" };
        public Option<string> Data { get; } = new("--data") { Description = "with --train: token ids (.npy int64 [rows, seq]) or a text file" };
        public Option<int> Micro { get; } = new("--micro-batches") { Description = "with --train: micro-batches per step", DefaultValueFactory = _ => 1 };
        public Option<int> Steps { get; } = new("--steps") { Description = "with --train: optimizer steps", DefaultValueFactory = _ => 10 };
        public Option<string> Optimizer { get; } = new("--optimizer") { Description = "with --train: sgd or adamw", DefaultValueFactory = _ => "adamw" };
        public Option<double> Lr { get; } = new("--lr") { Description = "with --train: learning rate (> 0)", DefaultValueFactory = _ => 1e-3 };
        public Option<double> Momentum { get; } = new("--momentum") { Description = "with --train: SGD momentum", DefaultValueFactory = _ => 0.0 };
        public Option<double> Decay { get; } = new("--weight-decay") { Description = "with --train: weight decay", DefaultValueFactory = _ => 0.0 };
        public Option<double?> Clip { get; } = new("--clip-norm") { Description = "with --train: clip gradients to this global 2-norm (> 0)" };
        public Option<string> Schedule { get; } = new("--schedule")
        {
            Description = "with --train: constant, or cosine with linear warm-up", DefaultValueFactory = _ => "constant",
        };
        public Option<int> Warmup { get; } = new("--warmup")
        {
            Description = "with --train: warm-up steps of the cosine schedule", DefaultValueFactory = _ => 0,
        };
        public Option<string> Save { get; } = new("--save") { Description = "with --train: gather the stages' weights into this checkpoint directory" };
        public Option<int> CheckpointEvery { get; } = new("--checkpoint-every")
        {
            Description = "with --train: the coordinator saves the weights and optimizer state every N steps, and a job placed again after "
                + "a worker is lost resumes from the latest (0: never; it starts over)",
            DefaultValueFactory = _ => DefaultCheckpointEvery,
        };

        public void AddTo(Command c)
        {
            foreach (var o in new Option[] { Train, Data, Micro, Steps, Optimizer, Lr, Momentum, Decay, Clip, Schedule, Warmup, Save, CheckpointEvery })
                c.Options.Add(o);
        }
    }

    /// <summary>submit --train's --checkpoint-every when it is not given: a worker lost loses at most this many steps.</summary>
    public const int DefaultCheckpointEvery = 20;

    /// <summary>The flag that carries each training field the engine and the job manager name in their refusals.</summary>
    static readonly IReadOnlyDictionary<string, string> TrainFlagOfField = new Dictionary<string, string>
    {
        [TrainingFields.LearningRate] = "--lr", [TrainingFields.Momentum] = "--momentum", [TrainingFields.WeightDecay] = "--weight-decay",
        [TrainingFields.ClipNorm] = "--clip-norm", [TrainingFields.Optimizer] = "--optimizer", [TrainingFields.Schedule] = "--schedule",
        [TrainingFields.Warmup] = "--warmup", [TrainingFields.Steps] = "--steps", [TrainingFields.MicroBatches] = "--micro-batches",
        [TrainingFields.Batch] = "--batch", [TrainingFields.Labels] = "--data", [TrainingFields.Data] = "--data",
        [TrainingFields.CheckpointEvery] = "--checkpoint-every",
        [FieldException.Window] = "--window", [FieldException.Swap] = "--swap", [FieldException.Sequence] = "--seq-len",
    };

    /// <summary>submit --train: reads and checks the data and settings here (refusals name the flag), sends the ids with the job,
    /// prints the loss per step, and with --save writes the gathered weights as a Hugging Face checkpoint directory.</summary>
    static async Task<int> TrainAsync(ParseResult r, ModelOptions model, TrainFlags t, PolicySpec policy, string? id, string? reportPath, string[] contacts,
        string hostname, string? config, bool verbose, TimeSpan timeout, CancellationToken cancel)
    {
        string dir = r.GetValue(model.Model) ?? throw new ArgumentException("--train needs --model to name a checkpoint directory");
        string data = r.GetValue(t.Data) ?? throw new ArgumentException("--train needs --data (token ids .npy, or a text file)");
        string? save = r.GetValue(t.Save);
        OutputPaths.CheckWritable(reportPath, "--report");
        int batch = r.GetValue(model.Batch), steps = r.GetValue(t.Steps);
        var (job, settings, upcast) = GenerateCommand.InFlags(() =>
        {
            var settings = new TrainingSettings(
                new OptimizerSettings(OptimizerSettings.ParseKind(r.GetValue(t.Optimizer)!), r.GetValue(t.Lr), r.GetValue(t.Momentum), r.GetValue(t.Decay)),
                new LrSchedule(LrSchedule.ParseKind(r.GetValue(t.Schedule)!), r.GetValue(t.Warmup), steps), r.GetValue(t.Clip), r.GetValue(t.Micro)).Validate();
            using var ids = TrainingData.Read(data, dir, r.GetValue(model.SeqLen));
            var training = new TrainingParameters(TensorPayloads.From(ids), batch, steps, TrainingStageActor.Wire(settings),
                settings.Schedule.Kind.ToString().ToLowerInvariant(), settings.Schedule.Warmup, save is not null, r.GetValue(t.CheckpointEvery));
            var spec = TrainingWeights.Spec(ModelCatalog.CheckpointSpec(dir, batch, (int)ids.shape[1], 0)); // float32, as the stages load it
            var layered = ModelCatalog.Create(spec);
            TrainingJobActor.Check(layered, [new TrainingStagePlacement(Akka.Actor.ActorRefs.Nobody, "", "", 0, layered.Layers.Count, policy)], training);
            return (new SubmitJob(id is { } given ? new JobId(given) : JobId.New(), spec, policy, Training: training), settings,
                TrainingWeights.UpcastFrom(spec, layered));
        }, TrainFlagOfField);
        await using var client = SubmitClient.Start(contacts, hostname, config, verbose);
        if (!await client.ConnectAsync(timeout, cancel))
            throw new TimeoutException($"no coordinator answered at {string.Join(", ", contacts)} within {timeout.TotalSeconds:0.###} s (--connect-timeout)");
        Console.Error.WriteLine($"superpipeline submit: training job {job.Id} to {string.Join(", ", contacts)}: {steps} step(s) of {batch} rows, "
            + settings.Optimizer);
        IJobEvent? answer = null;
        int last = -1;
        await foreach (var e in client.Submit(job).ReadAllAsync(cancel))
        {
            if (e is JobTrainingStep s)
            {
                if (s.Step.Step <= last)
                    Console.Error.WriteLine($"superpipeline submit: job {job.Id} was placed again (a node was lost); "
                        + (s.Step.Step == 0 ? "it starts over" : $"it goes on from step {s.Step.Step + 1}, after its latest training checkpoint"));
                last = s.Step.Step;
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"step {s.Step.Step + 1}: loss {s.Step.Loss:0.000000}, lr {s.Step.LearningRate:G6}"
                    + $"{(s.Step.GradNorm is { } n ? $", grad norm {n:G6}" : "")}, {s.Step.Seconds:0.000} s"));
            }
            answer = e;
        }
        switch (answer)
        {
            case JobTrained trained:
                if (save is not null)
                {
                    var weights = trained.Weights.Select(w => (w.Name, TensorPayloads.ToTensor(w.Tensor))).ToArray();
                    try
                    {
                        TrainedCheckpoint.Write(save, dir, weights);
                    }
                    finally
                    {
                        foreach (var (_, w) in weights) w.Dispose();
                    }
                    Console.WriteLine($"saved: {save}{(upcast is null ? "" : " (float32, config.json torch_dtype \"float32\")")}");
                }
                if (trained.Stages.Length > 0) PrintStages(trained.Stages);
                if (reportPath is not null)
                    ReportWriter.WriteJson(reportPath, new SubmitTrainReport(dir, Path.GetFullPath(data), trained.Steps, trained.Failure, trained.Stages));
                if (trained.Failure is { } failure)
                    throw new InvalidOperationException($"job {job.Id}: {failure}" + (save is null ? "" : $" (the last good weights are saved in {save})"));
                Console.WriteLine($"job {job.Id} trained {trained.Steps.Length} step(s)"
                    + (upcast is null ? "" : $", float32 weights (the {upcast} checkpoint upcast)"));
                return 0;
            case JobRefused refused: throw new ArgumentException($"job {job.Id} refused: {refused.Reason}");
            case JobFailed failed: throw new ArgumentException($"job {job.Id} failed: {failed.Reason}");
            default: throw new InvalidOperationException($"unexpected answer {answer}");
        }
    }

    /// <summary>submit --train's JSON report: the checkpoint, the data, every step and the failure, if any.</summary>
    sealed record SubmitTrainReport(string Model, string Data, IReadOnlyList<TrainingStepLine> Steps, string? Failure, IReadOnlyList<StagePlan> Stages);

    /// <summary>--generate N: the prompts from --input (a checkpoint's token ids), checked as the job manager will check them, with
    /// the refused field named by its flag; the job's spec carries no input file (the prompts travel in the job).</summary>
    static SubmitJob GenerationJob(JobId id, ModelSpec spec, PolicySpec policy, LayeredModel model, int maxNew, double? temperature, int? topK,
        double? topP, long seed, long? eos, string kv, string? trace)
    {
        if (spec.Checkpoint is null || spec.Input is null)
            throw new ArgumentException("--generate needs --model to name a checkpoint directory and --input its prompts (int64 token ids [batch, seq])");
        if (trace is not null) throw new ArgumentException("--trace is for passes; it cannot be given with --generate");
        var read = GenerationPrompts.Read(spec.Checkpoint, spec.Input, []);
        var prompts = read.Ids;
        var (request, placement) = GenerateCommand.InFlags(() =>
        {
            var request = new GenerationRequest(maxNew, new SamplingSettings(temperature, topK, topP, seed), read.Eos(eos, spec.Checkpoint), read.Pad);
            GenerationSession.Check(model, prompts, request);
            return (request, GenerationSession.ParsePlacement(kv));
        }, FlagOfField);
        return GenerateCommand.Job(id, spec with { Input = null }, policy, prompts, request, placement);
    }

    /// <summary>Generate's flags for the generation fields, but the tokens to make are --generate's.</summary>
    static readonly IReadOnlyDictionary<string, string> FlagOfField = new Dictionary<string, string>(GenerateCommand.FlagOfField)
    {
        [GenerationFields.MaxNewTokens] = "--generate",
    };

    static string Sampling(GenerationParameters g) => new SamplingSettings(g.Temperature, g.TopK, g.TopP, g.Seed).ToString();

    static void PrintStages(PassReport report) => PrintStages(report.Stages);

    static void PrintStages(IReadOnlyList<StagePlan> stages)
    {
        var table = new Table().AddColumn("stage").AddColumn("node").AddColumn("device").AddColumn("layers").AddColumn("k/k'")
            .AddColumn(new TableColumn("peak bytes").RightAligned());
        foreach (var s in stages)
            table.AddRow(new Text($"{s.Stage}"), new Text(s.Node), new Text(s.Device), new Text($"{s.FirstLayer}..{s.FirstLayer + s.LayerCount - 1}"),
                new Text($"{s.Window}/{s.Swap}"), new Text($"{s.PeakDeviceBytes:N0}"));
        AnsiConsole.Write(table);
    }
}
