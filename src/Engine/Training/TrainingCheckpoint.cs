using System.Collections.Immutable;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Policy;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Training;

/// <summary>The names of the optimizer state a layer keeps per parameter, as torch.optim's state_dict names them: AdamW's
/// "step", "exp_avg", "exp_avg_sq"; SGD's "momentum_buffer" (only with momentum). Saved as "{parameter}.{slot}".</summary>
public static class OptimizerSlots
{
    public const string Step = "step", ExpAvg = "exp_avg", ExpAvgSq = "exp_avg_sq", MomentumBuffer = "momentum_buffer";

    /// <summary>The slots <paramref name="optimizer"/> keeps for every parameter once it has stepped.</summary>
    public static ImmutableArray<string> Of(OptimizerSettings optimizer) => optimizer.Kind switch
    {
        OptimizerKind.AdamW => [Step, ExpAvg, ExpAvgSq],
        _ => optimizer.Momentum != 0 ? [MomentumBuffer] : [],
    };

    public static string Name(string parameter, string slot) => $"{parameter}.{slot}";
}

/// <summary>One step's loss in a run's history (the steps of earlier runs this one resumed, then its own).</summary>
public sealed record LossPoint(int Step, double Loss, double LearningRate);

/// <summary>Where a training run stands, saved beside its weights (trainer_state.json): the steps done, the next row of the
/// data, how it trains (optimizer, schedule, clipping, micro-batches, batch, rows), the RNG (none: training draws no random
/// numbers, there is no dropout) and the loss of every step so far.</summary>
/// <param name="Step">Optimizer steps done; the resumed run's first step is this one (0-based).</param>
/// <param name="NextRow">The data row the next step starts at (rows are taken in order, wrapping around).</param>
/// <param name="ScheduleSteps">The schedule's length (the run's --steps).</param>
public sealed record TrainerState(int Step, long NextRow, string Optimizer, double LearningRate, double Momentum, double WeightDecay,
    string Schedule, int Warmup, int ScheduleSteps, double? ClipNorm, int MicroBatches, int Batch, long DataRows, long DataColumns, string Rng,
    IReadOnlyList<LossPoint> History)
{
    public const int FormatVersion = 1;

    public int Format { get; init; } = FormatVersion;
}

/// <summary>A training checkpoint: a Hugging Face checkpoint directory (config.json, model.safetensors float32, the tokenizer
/// files: <see cref="TrainedCheckpoint"/>) that run and generate load as they load the source, plus the optimizer state
/// (optimizer.safetensors, "{parameter}.{slot}" tensors, each tied parameter once) and the run's state (trainer_state.json),
/// from which a run resumes exactly where it stopped. The engine refuses a resume that cannot continue the saved run, naming
/// <see cref="Field"/> and what differs.</summary>
public static class TrainingCheckpoint
{
    /// <summary>The field a refused resume names (the CLI's --resume).</summary>
    public const string Field = "resume";

    /// <summary>The field naming how often a run saves (the CLI's --save-every).</summary>
    public const string SaveEveryField = "save every";

    public const string OptimizerFile = "optimizer.safetensors", StateFile = "trainer_state.json";

    static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, DefaultIgnoreCondition = JsonIgnoreCondition.Never,
    };

    /// <summary>Writes the weights (over the source's other files), then the optimizer state, then the run's state last, so a
    /// directory with a trainer_state.json holds a whole checkpoint.</summary>
    public static void Save(string directory, string source, IReadOnlyList<(string Name, Tensor Tensor)> weights,
        IReadOnlyList<(string Name, Tensor Tensor)> optimizer, TrainerState state)
    {
        Directory.CreateDirectory(directory);
        File.Delete(Path.Combine(directory, StateFile));
        TrainedCheckpoint.Write(directory, source, weights);
        SafetensorsWriter.WriteFile(Path.Combine(directory, OptimizerFile), optimizer.Select(o => KeyValuePair.Create(o.Name, o.Tensor)));
        string partial = Path.Combine(directory, StateFile + ".partial");
        File.WriteAllText(partial, JsonSerializer.Serialize(state, Json) + "\n");
        File.Move(partial, Path.Combine(directory, StateFile), overwrite: true);
    }

    /// <summary>The run's state saved in <paramref name="directory"/>; a directory that train --save did not write is refused.</summary>
    public static TrainerState ReadState(string directory)
    {
        string path = Path.Combine(directory, StateFile);
        if (!Directory.Exists(directory)) throw new FieldException(Field, $"{directory}: no such directory");
        if (!File.Exists(path) || !File.Exists(Path.Combine(directory, OptimizerFile)))
            throw new FieldException(Field, $"{directory} holds no {StateFile} and {OptimizerFile}: not a checkpoint saved by training");
        TrainerState? state;
        try
        {
            state = JsonSerializer.Deserialize<TrainerState>(File.ReadAllText(path), Json);
        }
        catch (JsonException e)
        {
            throw new FieldException(Field, $"{path} is not a trainer state: {e.Message.ReplaceLineEndings(" ")}");
        }
        if (state is null || state.Format != TrainerState.FormatVersion)
            throw new FieldException(Field, $"{path} is not a trainer state of format {TrainerState.FormatVersion}");
        return state;
    }

    /// <summary>The optimizer state saved in <paramref name="directory"/>, by "{parameter}.{slot}" (the caller owns the tensors).</summary>
    public static Dictionary<string, Tensor> ReadOptimizer(string directory)
    {
        using var file = SafetensorsFile.Open(Path.Combine(directory, OptimizerFile));
        return file.Names.ToDictionary(n => n, file.Read, StringComparer.Ordinal);
    }

    /// <summary>Refuses a checkpoint of another model: the tensors saved in <paramref name="directory"/> must be those of the
    /// model in <paramref name="modelDir"/>, name for name and shape for shape. The message names the first difference.</summary>
    public static void CheckModel(string directory, string modelDir)
    {
        using var saved = SafetensorsCheckpoint.Open(directory);
        using var model = SafetensorsCheckpoint.Open(modelDir);
        var savedNames = saved.Names.ToHashSet(StringComparer.Ordinal);
        foreach (var name in model.Names)
        {
            if (!savedNames.Remove(name))
                throw new FieldException(Field, $"{directory} is a checkpoint of another model: it has no tensor {name}");
            var (s, m) = (saved.Entry(name).Shape, model.Entry(name).Shape);
            if (!s.SequenceEqual(m))
                throw new FieldException(Field,
                    $"{directory} is a checkpoint of another model: {name} is [{string.Join(", ", s)}] there, [{string.Join(", ", m)}] in the model");
        }
        if (savedNames.Count > 0)
            throw new FieldException(Field, $"{directory} is a checkpoint of another model: its tensor {savedNames.Order(StringComparer.Ordinal).First()} "
                + "is not the model's");
    }

    /// <summary>Refuses resuming <paramref name="state"/> with another optimizer (its state would not fit: sgd's momentum buffers
    /// are not AdamW's moments), a run already at <paramref name="steps"/> or past it, or other data than the saved run's
    /// (<paramref name="rows"/> rows of <paramref name="columns"/> tokens).</summary>
    public static void CheckContinues(TrainerState state, string directory, OptimizerSettings optimizer, int steps, long rows, long columns)
    {
        string kind = KindName(optimizer.Kind);
        if (state.Optimizer != kind)
            throw new FieldException(Field, $"{directory} holds {state.Optimizer} optimizer state; this run's optimizer is {kind}");
        if (optimizer.Kind == OptimizerKind.Sgd && (state.Momentum != 0) != (optimizer.Momentum != 0))
            throw new FieldException(Field, $"{directory} holds sgd state {(state.Momentum != 0 ? "with" : "without")} momentum buffers; "
                + $"this run's momentum is {OptimizerSettings.Format(optimizer.Momentum)}");
        if (state.Step >= steps) throw new FieldException(Field, $"{directory} is at step {state.Step}, which leaves none of the {steps} steps to train");
        if (state.DataRows != rows || state.DataColumns != columns)
            throw new FieldException(Field, string.Create(CultureInfo.InvariantCulture,
                $"{directory} trained on {state.DataRows} rows of {state.DataColumns} tokens; this run's data is {rows} rows of {columns}"));
    }

    /// <summary>What a resume changes from the saved run's settings that it can still continue under (the learning rate, momentum,
    /// weight decay, schedule, warm-up, clipping, micro-batches, batch, or the cosine schedule's length), by <see cref="TrainingFields"/>
    /// name, with the value now and the saved run's. With any, the continuation is no longer the one an uninterrupted run of the saved
    /// settings would make.</summary>
    public static IReadOnlyList<(string Field, string Now, string Saved)> Changes(TrainerState state, OptimizerSettings o, LrSchedule schedule,
        double? clipNorm, int microBatches, int batch, int steps)
    {
        var list = new List<(string, string, string)>();
        void Compare<T>(string field, T now, T saved)
        {
            static string Text(T v) => v is null ? "none" : string.Create(CultureInfo.InvariantCulture, $"{v}");
            if (!EqualityComparer<T>.Default.Equals(now, saved)) list.Add((field, Text(now), Text(saved)));
        }
        Compare(TrainingFields.LearningRate, o.LearningRate, state.LearningRate);
        Compare(TrainingFields.Momentum, o.Momentum, state.Momentum);
        Compare(TrainingFields.WeightDecay, o.WeightDecay, state.WeightDecay);
        Compare(TrainingFields.Schedule, schedule.Kind.ToString().ToLowerInvariant(), state.Schedule);
        Compare(TrainingFields.Warmup, schedule.Warmup, state.Warmup);
        if (schedule.Kind == ScheduleKind.Cosine) Compare(TrainingFields.Steps, steps, state.ScheduleSteps); // the schedule's length
        Compare(TrainingFields.ClipNorm, clipNorm, state.ClipNorm);
        Compare(TrainingFields.MicroBatches, microBatches, state.MicroBatches);
        Compare(TrainingFields.Batch, batch, state.Batch);
        return list;
    }

    /// <summary>The refusal when the optimizer state does not fit the layers (a slot missing or of another shape).</summary>
    public static FieldException Unfit(string directory, string problem) => new(Field, $"{directory}: {problem}");

    public static string KindName(OptimizerKind kind) => kind == OptimizerKind.Sgd ? "sgd" : "adamw";
}
