using Akka.Actor;
using Superpipeline.Contracts;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
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

    /// <summary>Where to save the trained checkpoint (also after a step failed: the last good weights); null: not saved.</summary>
    public string? SaveDir { get; init; }

    /// <summary>An image classifier's int64 labels [rows] (.npy), one per row of the pixels in DataPath; null for a decoder.</summary>
    public string? LabelsPath { get; init; }
}

/// <summary>The steps that ran and, when a step failed, why (the weights are then those of the last good step).</summary>
public sealed record TrainingRunResult(string Model, IReadOnlyList<TrainingStepReport> Steps, int Layers, long ModelBytes, string? Failure);

/// <summary>A training run in this process: the checkpoint's layer actors, one device and its loader in an actor system of their
/// own, a <see cref="TrainingSession"/> stepping through the data in order, the trained checkpoint saved at the end.</summary>
public static class TrainingRun
{
    /// <summary>Checks everything before any work (one line naming the field on a refusal), then trains.
    /// <paramref name="onStep"/> sees each step as it ends.</summary>
    public static async Task<TrainingRunResult> RunAsync(TrainingRunOptions o, Action<TrainingStepReport> onStep, CancellationToken cancel)
    {
        if (o.Batch < 1) throw new FieldException(TrainingFields.Batch, $"must be at least 1; got {o.Batch}");
        if (o.Steps < 1) throw new FieldException(TrainingFields.Steps, $"must be at least 1; got {o.Steps}");
        var settings = o.Settings with { Schedule = o.Settings.Schedule with { Steps = o.Steps } };
        settings.Validate();
        if (o.Batch % settings.MicroBatches != 0)
            throw new FieldException(TrainingFields.MicroBatches, $"({settings.MicroBatches}) must divide the batch ({o.Batch} rows)");
        if (o.Policy.Auto || o.Policy.ResidentAuto) throw new FieldException(FieldException.Window, "auto is not planned for training; give k and k'");
        bool images = ModelCatalog.ImagePreprocessOf(o.ModelDir) is not null; // pixels and class labels, not token ids
        if (!images && o.LabelsPath is not null)
            throw new FieldException(ClassificationLoss.Field, "are for an image classifier; a decoder's labels are its token ids");
        using var data = images ? ClassificationLoss.ReadPixels(o.DataPath, o.ModelDir) : TrainingData.Read(o.DataPath, o.ModelDir, o.Sequence);
        using var labels = images
            ? ClassificationLoss.ReadLabels(o.LabelsPath ?? throw new FieldException(ClassificationLoss.Field, "are needed for an image classifier"))
            : null;
        if (data.shape[0] < o.Batch)
            throw new FieldException(TrainingFields.Batch, $"({o.Batch}) exceeds the {data.shape[0]} rows of {o.DataPath}");
        if (!images)
        {
            var limits = ModelCatalog.TokenLimits(o.ModelDir);
            TrainingLoss.CheckLabels(data, limits.Vocab, limits.MaxPositions); // before the model: a row too long is the data's fault
        }
        var spec = ModelCatalog.CheckpointSpec(o.ModelDir, o.Batch, images ? 0 : (int)data.shape[1], 0);
        var model = ModelCatalog.Create(spec);
        if (images)
        {
            ClassificationLoss.ObjectiveOf(model); // a ViTModel (pooler, no classifier) is refused here
            ClassificationLoss.CheckLabels(labels!, data.shape[0], model.ActivationShapes()[^1].Shape[^1]); // every row, before any work
        }
        var policy = OffloadPolicy.For(o.Policy, model.Layers.Count);
        ModelCatalog.CheckWeights(spec, model);

        var config = WorkerConfig.Load();
        var system = ActorSystem.Create("superpipeline-train", config);
        var device = DeviceFactory.Create(o.Device);
        try
        {
            var timeout = SuperpipelineSettings.Create(config).AskTimeout;
            IActorRef[] layers;
            using (var weights = new CheckpointWeights(o.ModelDir))
            {
                layers = [.. model.Layers.Select(l => system.ActorOf(LayerActor.Props(l, weights, device.WantsPinnedHost), $"layer-{l.Index}"))];
                foreach (var a in layers) await a.Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, timeout, cancel); // loaded
            }
            var loader = system.ActorOf(DeviceLoaderActor.Props(device, timeout), $"{device.Name.Replace(':', '-')}-loader");
            var session = new TrainingSession(loader, model, layers, policy, settings, timeout);
            await session.StartAsync();
            var steps = new List<TrainingStepReport>();
            string? failure = null;
            for (int step = 0; step < o.Steps; step++)
            {
                cancel.ThrowIfCancellationRequested();
                using var ids = TrainingData.Batch(data, step, o.Batch);
                using var rowLabels = labels is null ? null : TrainingData.Batch(labels, step, o.Batch);
                try
                {
                    var report = await session.StepAsync(step, ids, rowLabels);
                    steps.Add(report);
                    onStep(report);
                }
                catch (TrainingStepException e)
                {
                    failure = e.Message;
                    break;
                }
            }
            if (o.SaveDir is not null)
            {
                var trained = await session.WeightsAsync();
                try
                {
                    TrainedCheckpoint.Write(o.SaveDir, o.ModelDir, trained);
                }
                finally
                {
                    foreach (var (_, t) in trained) t.Dispose();
                }
            }
            return new TrainingRunResult(spec.Checkpoint!, steps, model.Layers.Count, model.Bytes, failure);
        }
        finally
        {
            await system.Terminate();
            device.Dispose();
        }
    }
}
