using Akka.Actor;
using Superpipeline.Contracts;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;
using Superpipeline.Engine.Text;
using Superpipeline.Engine.Training;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>What a training run was asked to do: the checkpoint, the token ids, rows per step, steps, how to train, the window
/// and the device.</summary>
public sealed record TrainingRunOptions(string ModelDir, string DataPath, int Batch, int Steps, TrainingSettings Settings, PolicySpec Policy,
    DeviceSpec Device)
{
    /// <summary>Tokens per row when the data is text (cut from the tokenized file); a .npy file's rows are its own.</summary>
    public int Sequence { get; init; } = 64;

    /// <summary>Where to save the trained checkpoint (also after a step failed: the last good weights); null: not saved. It is a
    /// <see cref="TrainingCheckpoint"/>: the weights as a Hugging Face checkpoint, the optimizer state and the run's state.</summary>
    public string? SaveDir { get; init; }

    /// <summary>An image classifier's int64 labels [rows] (.npy), one per row of the pixels in DataPath; null for a decoder.</summary>
    public string? LabelsPath { get; init; }

    /// <summary>Also save every this many steps, into SaveDir/checkpoint-{step} (as transformers' Trainer names them); null: only
    /// at the end.</summary>
    public int? SaveEvery { get; init; }

    /// <summary>A <see cref="TrainingCheckpoint"/> to continue from: its weights, optimizer state, step and data position. The run
    /// then trains from its step up to <see cref="Steps"/> (the run's whole length, as the schedule sees it).</summary>
    public string? ResumeDir { get; init; }
}

/// <summary>The steps that ran and, when a step failed, why (the weights are then those of the last good step).</summary>
public sealed record TrainingRunResult(string Model, IReadOnlyList<TrainingStepReport> Steps, int Layers, long ModelBytes, string? Failure)
{
    /// <summary>The window the run trained under (k; the model's layers for window = all): the one asked for, or planned.</summary>
    public int Window { get; init; }

    /// <summary>k' of <see cref="Window"/>.</summary>
    public int Swap { get; init; }

    /// <summary>What the training planner chose for window auto (null for a window given): (k, k'), the predicted peak and step time.</summary>
    public TrainingPlan? Plan { get; init; }

    /// <summary>The loss of every step from the run's start: those of the checkpoint it resumed from, then its own.</summary>
    public IReadOnlyList<LossPoint> History { get; init; } = [];

    /// <summary>The model checkpoint's stored dtypes the run upcast to float32 ("float16", "bfloat16"; <see cref="TrainingWeights"/>),
    /// null for a float32 checkpoint. The trained weights, and a saved checkpoint, are float32 either way.</summary>
    public string? UpcastFrom { get; init; }
}

/// <summary>A training run in this process: the checkpoint's layer actors, one device and its loader in an actor system of their
/// own, a <see cref="TrainingSession"/> stepping through the data in order, the trained checkpoint saved at the end.</summary>
public static class TrainingRun
{
    /// <summary>Checks everything before any work (one line naming the field on a refusal), then trains.
    /// <paramref name="onStep"/> sees each step as it ends; <paramref name="onPlan"/> the plan of window auto before the first.</summary>
    public static async Task<TrainingRunResult> RunAsync(TrainingRunOptions o, Action<TrainingStepReport> onStep, CancellationToken cancel,
        Action<TrainingPlan>? onPlan = null)
    {
        if (o.Batch < 1) throw new FieldException(TrainingFields.Batch, $"must be at least 1; got {o.Batch}");
        if (o.Steps < 1) throw new FieldException(TrainingFields.Steps, $"must be at least 1; got {o.Steps}");
        var settings = o.Settings with { Schedule = o.Settings.Schedule with { Steps = o.Steps } };
        settings.Validate();
        if (o.Batch % settings.MicroBatches != 0)
            throw new FieldException(TrainingFields.MicroBatches, $"({settings.MicroBatches}) must divide the batch ({o.Batch} rows)");
        if (o.Policy.ResidentAuto)
            throw new FieldException(FieldException.ResidentLayers, "auto is not planned for training; give a number, or none (a pinned layer "
                + "stays on the device for the step's backward pass, which then does not load it again)");
        if (o.Policy.Auto && o.Policy.ResidentLayers > 0)
            throw new FieldException(FieldException.ResidentLayers, $"{o.Policy.ResidentLayers} cannot go with window auto: training plans the window "
                + "without pinned layers; give k and k'");
        if (o.SaveEvery is { } every && every < 1) throw new FieldException(TrainingCheckpoint.SaveEveryField, $"must be at least 1; got {every}");
        if (o.SaveEvery is not null && o.SaveDir is null)
            throw new FieldException(TrainingCheckpoint.SaveEveryField, "needs a directory to save into (save)");
        var resumed = o.ResumeDir is null ? null : TrainingCheckpoint.ReadState(o.ResumeDir);
        bool images = ModelCatalog.ImagePreprocessOf(o.ModelDir) is not null; // pixels and class labels, not token ids
        if (!images && o.LabelsPath is not null)
            throw new FieldException(ClassificationLoss.Field, "are for an image classifier; a decoder's labels are its token ids");
        using var data = images ? ClassificationLoss.ReadPixels(o.DataPath, o.ModelDir) : TrainingData.Read(o.DataPath, o.ModelDir, o.Sequence);
        using var labels = images
            ? ClassificationLoss.ReadLabels(o.LabelsPath ?? throw new FieldException(ClassificationLoss.Field, "are needed for an image classifier"))
            : null;
        if (data.shape[0] < o.Batch)
            throw new FieldException(TrainingFields.Batch, $"({o.Batch}) exceeds the {data.shape[0]} rows of {o.DataPath}");
        if (resumed is not null)
        {
            TrainingCheckpoint.CheckContinues(resumed, o.ResumeDir!, settings.Optimizer, o.Steps, data.shape[0], data.shape[1]);
            TrainingCheckpoint.CheckModel(o.ResumeDir!, o.ModelDir);
        }
        if (!images)
        {
            var limits = ModelCatalog.TokenLimits(o.ModelDir);
            TrainingLoss.CheckLabels(data, limits.Vocab, limits.MaxPositions); // before the model: a row too long is the data's fault
        }
        var spec = TrainingWeights.Spec(ModelCatalog.CheckpointSpec(o.ModelDir, o.Batch, images ? 0 : (int)data.shape[1], 0)); // float32
        var model = ModelCatalog.Create(spec);
        if (images)
        {
            ClassificationLoss.ObjectiveOf(model); // a ViTModel (pooler, no classifier) is refused here
            ClassificationLoss.CheckLabels(labels!, data.shape[0], model.ActivationShapes()[^1].Shape[^1]); // every row, before any work
        }
        if (o.Policy.Auto) TrainingPlanner.CheckFits(model, settings.MicroBatches, o.Device.CapacityBytes); // before any work: window 1 must fit
        var policy = o.Policy.Auto ? null : OffloadPolicy.For(o.Policy, model.Layers.Count);
        ModelCatalog.CheckWeights(spec, model);

        var config = WorkerConfig.Load();
        var system = ActorSystem.Create("superpipeline-train", config);
        var device = DeviceFactory.Create(o.Device);
        try
        {
            TrainingPlan? plan = null;
            if (policy is null)
            {
                plan = TrainingPlanner.Choose(model, settings.MicroBatches, (await DeviceCalibration.MeasureAsync(device)).Validated());
                policy = OffloadPolicy.For(plan.Policy, model.Layers.Count);
                onPlan?.Invoke(plan);
            }
            var timeout = SuperpipelineSettings.Create(config).AskTimeout;
            IActorRef[] layers;
            using (var weights = CheckpointWeights.For(spec, o.ResumeDir))
            {
                layers = [.. model.Layers.Select(l => system.ActorOf(LayerActor.Props(l, weights, device.WantsPinnedHost), $"layer-{l.Index}"))];
                foreach (var a in layers) await a.Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, timeout, cancel); // loaded
            }
            var loader = system.ActorOf(DeviceLoaderActor.Props(device, timeout), $"{device.Name.Replace(':', '-')}-loader");
            var session = new TrainingSession(loader, model, layers, policy, settings, timeout);
            await session.StartAsync();
            if (o.ResumeDir is not null) await LoadOptimizerAsync(o.ResumeDir, layers, timeout);
            int first = resumed?.Step ?? 0;
            long firstRow = resumed?.NextRow ?? 0, rows = data.shape[0];
            long RowOf(int step) => (firstRow + (long)(step - first) * o.Batch) % rows;
            var history = new List<LossPoint>(resumed?.History ?? []);
            var steps = new List<TrainingStepReport>();
            string? failure = null;
            int done = first;
            async Task Save(string dir)
            {
                var state = settings.State(done, RowOf(done), o.Steps, o.Batch, rows, data.shape[1], [.. history]);
                var trained = await session.WeightsAsync();
                var optimizer = await OptimizerStateAsync(layers, timeout);
                try
                {
                    TrainingCheckpoint.Save(dir, o.ModelDir, trained, optimizer, state);
                }
                finally
                {
                    foreach (var (_, t) in trained.Concat(optimizer)) t.Dispose();
                }
            }
            for (int step = first; step < o.Steps; step++)
            {
                cancel.ThrowIfCancellationRequested();
                using var ids = TrainingData.Rows(data, RowOf(step), o.Batch);
                using var rowLabels = labels is null ? null : TrainingData.Rows(labels, RowOf(step), o.Batch);
                try
                {
                    var report = await session.StepAsync(step, ids, rowLabels);
                    steps.Add(report);
                    history.Add(new LossPoint(step, report.Loss, report.LearningRate));
                    done = step + 1;
                    onStep(report);
                }
                catch (TrainingStepException e)
                {
                    failure = e.Message;
                    break;
                }
                if (o.SaveEvery is { } interval && done % interval == 0 && done < o.Steps) await Save(Path.Combine(o.SaveDir!, $"checkpoint-{done}"));
            }
            if (o.SaveDir is not null) await Save(o.SaveDir);
            return new TrainingRunResult(spec.Checkpoint!, steps, model.Layers.Count, model.Bytes, failure)
            {
                History = history, Window = policy.Window, Swap = policy.Swap, Plan = plan, UpcastFrom = TrainingWeights.UpcastFrom(spec, model),
            };
        }
        finally
        {
            await system.Terminate();
            device.Dispose();
        }
    }

    /// <summary>Every layer's optimizer state, each tied parameter's once (its first layer's: the layers holding it apply the same
    /// gradients, so their states are equal); the caller owns the tensors.</summary>
    static async Task<IReadOnlyList<(string Name, Tensor Tensor)>> OptimizerStateAsync(IReadOnlyList<IActorRef> layers, TimeSpan timeout)
    {
        var list = new List<(string, Tensor)>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var actor in layers)
        {
            var state = await actor.Ask<LayerActor.OptimizerState>(LayerActor.GetOptimizerState.Instance, timeout);
            foreach (var (name, t) in state.Tensors)
                if (seen.Add(name)) list.Add((name, t));
                else t.Dispose();
        }
        return list;
    }

    /// <summary>Loads the optimizer state saved in <paramref name="directory"/> into every layer; a slot missing or of another
    /// shape is refused naming the directory and the slot.</summary>
    static async Task LoadOptimizerAsync(string directory, IReadOnlyList<IActorRef> layers, TimeSpan timeout)
    {
        var state = TrainingCheckpoint.ReadOptimizer(directory);
        try
        {
            await Task.WhenAll(layers.Select(a => a.Ask<LayerActor.OptimizerStateLoaded>(new LayerActor.LoadOptimizerState(state), timeout)));
        }
        catch (ArgumentException e)
        {
            throw TrainingCheckpoint.Unfit(directory, e.Message);
        }
        finally
        {
            foreach (var t in state.Values) t.Dispose();
        }
    }
}
