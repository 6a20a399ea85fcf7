using System.CommandLine;
using System.Globalization;
using System.Text.Json.Serialization;
using Spectre.Console;
using Superpipeline.Coordinator.Bench;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;
using Superpipeline.Engine.Training;
using Superpipeline.Workers;

namespace Superpipeline.Coordinator.Commands;

/// <summary>The JSON report of <c>superpipeline train</c>: the run's figures and every step's.</summary>
public sealed record TrainReportFile(string Model, string Data, string Optimizer, string Schedule, double? ClipNorm, int Batch, int MicroBatches,
    int Window, int Swap, int Layers, long ModelBytes, IReadOnlyList<TrainingStepReport> Steps, double TokensPerSecond, long PeakDeviceBytes,
    long PeakHostBytes, string? Failure, string? Saved)
{
    /// <summary>The checkpoint's stored dtype the run upcast to float32 ("float16", "bfloat16"); left out for a float32 checkpoint.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? UpcastFrom { get; init; }

    /// <summary>The step the run resumed from (--resume), null for a run from the start.</summary>
    public int? ResumedFrom { get; init; }

    /// <summary>The loss of every step from the start of training (a resumed run's earlier steps too): the curve --plot draws.</summary>
    public IReadOnlyList<LossPoint> History { get; init; } = [];

    /// <summary>What --window auto chose (null for a window given).</summary>
    public TrainPlanReport? Plan { get; init; }
}

/// <summary>The training planner's choice as the report records it: (k, k'), the device it planned for, the step's predicted peak
/// device bytes (what the passes can reserve at most) and predicted seconds (the cost model's forward and backward passes).</summary>
public sealed record TrainPlanReport(int Window, int Swap, long DeviceBytes, long PredictedPeakDeviceBytes, double PredictedForwardSeconds,
    double PredictedBackwardSeconds, double PredictedStepSeconds, int Simulated)
{
    public static TrainPlanReport From(TrainingPlan plan, long deviceBytes) => new(plan.Window, plan.Swap, deviceBytes, plan.PeakBytes,
        plan.ForwardSeconds, plan.BackwardSeconds, plan.StepSeconds, plan.Simulated);
}

/// <summary><c>superpipeline train</c>: trains a checkpoint on token ids with the layers streamed under (k, k'), in this process
/// (<see cref="TrainingRun"/>), printing each step's loss; saves the trained checkpoint and writes the report.</summary>
public static class TrainCommand
{
    /// <summary>The flag that carries each training field the engine names in its refusals.</summary>
    static readonly IReadOnlyDictionary<string, string> FlagOfField = new Dictionary<string, string>
    {
        [TrainingFields.LearningRate] = "--lr", [TrainingFields.Momentum] = "--momentum", [TrainingFields.WeightDecay] = "--weight-decay",
        [TrainingFields.ClipNorm] = "--clip-norm", [TrainingFields.Optimizer] = "--optimizer", [TrainingFields.Schedule] = "--schedule",
        [TrainingFields.Warmup] = "--warmup", [TrainingFields.Steps] = "--steps", [TrainingFields.MicroBatches] = "--micro-batches",
        [TrainingFields.Batch] = "--batch", [TrainingFields.Labels] = "--data", [TrainingFields.Data] = "--data", [ClassificationLoss.Field] = "--labels",
        [FieldException.Window] = "--window", [FieldException.Swap] = "--swap", [FieldException.ResidentLayers] = "--resident-layers",
        [FieldException.DeviceMemory] = "--device-memory", [FieldException.Device] = "--device", [FieldException.Sequence] = "--seq-len",
        [TrainingCheckpoint.Field] = "--resume", [TrainingCheckpoint.SaveEveryField] = "--save-every",
    };

    public static Command Build()
    {
        var model = new Option<string>("--model")
        {
            Description = "a Hugging Face checkpoint directory (config.json + safetensors: F32, or F16/BF16 upcast to float32 to train)", Required = true,
        };
        var data = new Option<string>("--data")
        {
            Description = "token ids: int64 [rows, seq] in a .npy file, or a text file tokenized with the checkpoint's tokenizer; for a ViT "
                + "classifier, float32 pixels [rows, 3, H, W] in a .npy, a directory of images or a file listing them", Required = true,
        };
        var labels = new Option<string>("--labels") { Description = "a ViT classifier's labels: int64 [rows] in a .npy, each below num_labels" };
        var seqLen = new Option<int>("--seq-len") { Description = "tokens per row when --data is text", DefaultValueFactory = _ => 64 };
        var batch = new Option<int>("--batch") { Description = "rows per step, taken in order (wrapping around)", DefaultValueFactory = _ => 4 };
        var micro = new Option<int>("--micro-batches") { Description = "micro-batches per step (gradient accumulation); must divide --batch",
            DefaultValueFactory = _ => 1 };
        var steps = new Option<int>("--steps") { Description = "optimizer steps", DefaultValueFactory = _ => 10 };
        var optimizer = new Option<string>("--optimizer") { Description = "sgd or adamw (torch.optim's)", DefaultValueFactory = _ => "adamw" };
        var lr = new Option<double>("--lr") { Description = "learning rate (> 0)", DefaultValueFactory = _ => 1e-3 };
        var momentum = new Option<double>("--momentum") { Description = "SGD momentum", DefaultValueFactory = _ => 0.0 };
        var decay = new Option<double>("--weight-decay") { Description = "weight decay (AdamW: decoupled)", DefaultValueFactory = _ => 0.0 };
        var clip = new Option<double?>("--clip-norm") { Description = "clip gradients to this global 2-norm (> 0), as clip_grad_norm_" };
        var schedule = new Option<string>("--schedule") { Description = "constant, or cosine with linear warm-up (transformers')",
            DefaultValueFactory = _ => "constant" };
        var warmup = new Option<int>("--warmup") { Description = "warm-up steps of the cosine schedule", DefaultValueFactory = _ => 0 };
        var window = new WindowOptions("k: layers resident on the device at once (a number, 'all' for no offload, or 'auto' to let the training "
            + "planner choose k and k' whose step fits --device-memory)", hostMemory: false);
        var save = new Option<string>("--save")
        {
            Description = "save the trained checkpoint here (config.json, model.safetensors, tokenizer; optimizer.safetensors, trainer_state.json)",
        };
        var saveEvery = new Option<int?>("--save-every") { Description = "also save every N steps, into SAVE/checkpoint-STEP" };
        var resume = new Option<string>("--resume")
        {
            Description = "continue the run saved in this directory (weights, optimizer state, step, data position) up to --steps",
        };
        var plot = new Option<string>("--plot") { Description = "draw the loss curve (every step from the start) as a PNG" };
        var report = new Option<string>("--report") { Description = "write the JSON report (loss per step, times, peaks) to this file" };

        var command = new Command("train", "Train a checkpoint on token ids: each step a forward and a backward pass streaming the layers under "
            + "(k, k'), the gradients and optimizer state kept by each layer's actor.");
        foreach (var o in new Option[] { model, data, labels, seqLen, batch, micro, steps, optimizer, lr, momentum, decay, clip, schedule, warmup })
            command.Options.Add(o);
        window.AddTo(command);
        foreach (var o in new Option[] { save, saveEvery, resume, report, plot }) command.Options.Add(o);
        command.SetAction((r, cancel) =>
        {
            var options = GenerateCommand.InFlags(() => new TrainingRunOptions(r.GetValue(model)!, r.GetValue(data)!, r.GetValue(batch), r.GetValue(steps),
                new TrainingSettings(
                    new OptimizerSettings(OptimizerSettings.ParseKind(r.GetValue(optimizer)!), r.GetValue(lr), r.GetValue(momentum), r.GetValue(decay)),
                    new LrSchedule(LrSchedule.ParseKind(r.GetValue(schedule)!), r.GetValue(warmup), r.GetValue(steps)),
                    r.GetValue(clip), r.GetValue(micro)).Validate(),
                window.Policy(r), window.DeviceSpec(r))
            {
                SaveDir = r.GetValue(save),
                SaveEvery = r.GetValue(saveEvery),
                ResumeDir = r.GetValue(resume),
                Sequence = r.GetValue(seqLen),
                LabelsPath = r.GetValue(labels),
            }, FlagOfField);
            return RunAsync(options, r.GetValue(report), AnsiConsole.Console, cancel, r.GetValue(plot));
        });
        return command;
    }

    /// <summary>Trains, printing a line per step, writes the report and returns the exit code: 1 (with one line on stderr) when a
    /// step failed, after saving the last good weights.</summary>
    public static async Task<int> RunAsync(TrainingRunOptions o, string? reportPath, IAnsiConsole console, CancellationToken cancel,
        string? plotPath = null)
    {
        OutputPaths.CheckWritable(reportPath, "--report");
        OutputPaths.CheckWritable(plotPath, "--plot");
        console.MarkupLineInterpolated($"[bold]superpipeline train[/]: {o.ModelDir}, {o.Steps} step(s) of {o.Batch} rows, {o.Settings.Optimizer}");
        string? note = null; // said before the first step: only a resume the run accepted is worth it
        if (o.ResumeDir is { } resumed && File.Exists(Path.Combine(resumed, TrainingCheckpoint.StateFile)))
        {
            TrainerState? state = null;
            try
            {
                state = TrainingCheckpoint.ReadState(resumed);
            }
            catch (FieldException)
            {
                // the run refuses it, naming --resume
            }
            var changes = state is null ? [] : TrainingCheckpoint.Changes(state, o.Settings.Optimizer, o.Settings.Schedule, o.Settings.ClipNorm,
                o.Settings.MicroBatches, o.Batch, o.Steps);
            if (changes.Count > 0)
                note = $"superpipeline train: resuming {resumed} with "
                    + string.Join(", ", changes.Select(c => $"{FlagOfField.GetValueOrDefault(c.Field, c.Field)} {c.Now} (saved run: {c.Saved})"))
                    + ": the steps from here are not the ones the saved run would have made";
        }
        TrainingRunResult result;
        try
        {
            result = await TrainingRun.RunAsync(o, s =>
            {
                if (Interlocked.Exchange(ref note, null) is { } said) Console.Error.WriteLine(said);
                console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"step {s.Step + 1}: loss {s.Loss:0.000000}, lr {s.LearningRate:G6}"
                    + $"{(s.GradNorm is { } n ? $", grad norm {n:G6}" : "")}, {s.Seconds:0.000} s"));
            },
                cancel, p => console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"planned: {(p.Policy.Window is null ? "window all" : $"window {p.Window} / swap {p.Swap}")} for {o.Device.CapacityBytes:N0} device bytes, "
                    + $"predicted peak {p.PeakBytes:N0} bytes, {p.StepSeconds:0.000} s per step ({p.Simulated} simulated)")));
        }
        catch (FieldException e) when (FlagOfField.TryGetValue(e.Field, out var flag))
        {
            throw new ArgumentException(e.MessageFor(flag), e);
        }
        var steps = result.Steps;
        double seconds = steps.Sum(s => s.Seconds);
        var file = new TrainReportFile(result.Model, Path.GetFullPath(o.DataPath), o.Settings.Optimizer.ToString(), Describe(o.Settings.Schedule),
            o.Settings.ClipNorm, o.Batch, o.Settings.MicroBatches, result.Window, result.Swap, result.Layers, result.ModelBytes, steps,
            seconds > 0 ? steps.Sum(s => s.Tokens) / seconds : 0,
            steps.Count == 0 ? 0 : steps.Max(s => s.PeakDeviceBytes), steps.Count == 0 ? 0 : steps.Max(s => s.PeakHostBytes), result.Failure,
            o.SaveDir is null ? null : Path.GetFullPath(o.SaveDir))
        {
            UpcastFrom = result.UpcastFrom,
            ResumedFrom = o.ResumeDir is null ? null : result.History.Count - steps.Count,
            History = result.History,
            Plan = result.Plan is { } plan ? TrainPlanReport.From(plan, o.Device.CapacityBytes) : null,
        };
        if (reportPath is not null) ReportWriter.WriteJson(reportPath, file);
        if (plotPath is not null && result.History.Count > 0)
            LossPlot.Save(plotPath, result.History, $"superpipeline train: {Path.GetFileName(Path.TrimEndingDirectorySeparator(o.ModelDir))} on "
                + $"{Path.GetFileName(o.DataPath)}, {o.Settings.Optimizer.Kind.ToString().ToLowerInvariant()}, batch {o.Batch}");
        console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{steps.Count} step(s), {file.TokensPerSecond:0.0} {(o.LabelsPath is null ? "tokens" : "images")}/s, peak device bytes {file.PeakDeviceBytes:N0}, "
            + $"peak host bytes {file.PeakHostBytes:N0}{(result.UpcastFrom is { } from ? $", float32 weights (the {from} checkpoint upcast)" : "")}"));
        if (o.SaveDir is not null)
            console.MarkupLineInterpolated($"saved: {o.SaveDir}{(result.UpcastFrom is null ? "" : " (float32, config.json torch_dtype \"float32\")")}");
        if (reportPath is not null) console.MarkupLineInterpolated($"report: {reportPath}");
        if (plotPath is not null && result.History.Count > 0) console.MarkupLineInterpolated($"plot: {plotPath}");
        if (result.Failure is null) return 0;
        throw new InvalidOperationException(result.Failure + (o.SaveDir is null ? "" : $" (the last good weights are saved in {o.SaveDir})"));
    }

    static string Describe(LrSchedule s) => s.Kind == ScheduleKind.Constant ? "constant" : $"cosine (warm-up {s.Warmup} of {s.Steps} steps)";
}
