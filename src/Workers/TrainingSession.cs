using System.Collections.Immutable;
using System.Diagnostics;
using System.Text.Json.Serialization;
using Akka.Actor;
using Superpipeline.Contracts;
using Superpipeline.Engine;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>How a model trains: the optimizer, the learning-rate schedule, clipping by global norm (null: none) and the
/// micro-batches each step's batch is split into (gradient accumulation: each micro-batch's loss is divided by their count).</summary>
public sealed record TrainingSettings(OptimizerSettings Optimizer, LrSchedule Schedule, double? ClipNorm = null, int MicroBatches = 1)
{
    /// <summary>Throws a <see cref="FieldException"/> naming the first field out of range.</summary>
    public TrainingSettings Validate()
    {
        Optimizer.Validate();
        Schedule.Validate();
        if (ClipNorm is { } c && (!(c > 0) || double.IsInfinity(c)))
            throw new FieldException(TrainingFields.ClipNorm, $"must be a positive number; got {OptimizerSettings.Format(c)}");
        if (MicroBatches < 1) throw new FieldException(TrainingFields.MicroBatches, $"must be at least 1; got {MicroBatches}");
        return this;
    }

    /// <summary>A checkpoint's trainer state for a run of these settings after <paramref name="step"/> of its <paramref name="steps"/>
    /// steps, the next step starting at data row <paramref name="nextRow"/> of the <paramref name="rows"/> × <paramref name="columns"/>
    /// data, <paramref name="batch"/> rows a step (training draws no random numbers: the RNG state is "none").</summary>
    public TrainerState State(int step, long nextRow, int steps, int batch, long rows, long columns, IReadOnlyList<LossPoint> history) =>
        new(step, nextRow, TrainingCheckpoint.KindName(Optimizer.Kind), Optimizer.LearningRate, Optimizer.Momentum, Optimizer.WeightDecay,
            Schedule.Kind.ToString().ToLowerInvariant(), Schedule.Warmup, steps, ClipNorm, MicroBatches, batch, rows, columns, "none", history);
}

/// <summary>One step's measures.</summary>
/// <param name="Loss">The mean of the micro-batches' losses (each the mean cross-entropy of its rows).</param>
/// <param name="GradNorm">The global gradient norm before clipping (null without clipping).</param>
/// <param name="PeakDeviceBytes">The most device bytes the step's passes held at once.</param>
/// <param name="PeakHostBytes">Host bytes for training at the step's fullest: the weights the actors publish, their master copies,
/// gradients and optimizer state, and the inputs the forward pass saved.</param>
public sealed record TrainingStepReport(int Step, double Loss, ImmutableArray<float> MicroBatchLosses, double LearningRate, float? GradNorm,
    double Seconds, long Tokens, long PeakDeviceBytes, long PeakHostBytes, long BytesTransferred)
{
    /// <summary>Seconds the step's two passes computed, summed over their layers (<see cref="LayerTiming.ComputeSeconds"/>): what
    /// <c>bench --train</c> matches an emulated link to. Not written to train's report.</summary>
    [JsonIgnore] public double ComputeSeconds { get; init; }

    /// <summary>Seconds the step's two passes spent moving layers to the device, summed over their layers
    /// (<see cref="LayerTiming.LoadSeconds"/>). Not written to train's report.</summary>
    [JsonIgnore] public double TransferSeconds { get; init; }
}

/// <summary>A training step failed: its passes freed every device byte and the layers dropped its gradients, so the weights are
/// those of the last step that succeeded.</summary>
public sealed class TrainingStepException(string message, Exception? inner = null) : InvalidOperationException(message, inner);

/// <summary>Trains a model whose weights its <see cref="LayerActor"/>s own, through a device loader: each step splits its batch
/// into micro-batches, runs a forward training pass and a backward one (each a <see cref="PassStream"/> under the same (k, k')),
/// sends each layer's parameter gradients to its actor as they come (a parameter two layers share, a tied head, gets the sum of
/// both layers' gradients per micro-batch, sent to both), gathers the per-tensor gradient norms when clipping and answers with
/// the coefficient, and has every actor apply its optimizer step at the step's learning rate. In-process; one step at a time.</summary>
public sealed class TrainingSession
{
    readonly IActorRef _loader;
    readonly LayeredModel _model;
    readonly IReadOnlyList<IActorRef> _layers;
    readonly OffloadPolicy _policy;
    readonly TrainingSettings _settings;
    readonly TimeSpan _askTimeout;
    readonly IReadOnlyDictionary<string, IReadOnlyList<int>> _tied;
    readonly IReadOnlyList<(int Layer, string Name)> _distinct;
    readonly long _vocab; // a classifier's: num_labels
    readonly TrainingObjective _objective;
    long _trainingHostBytes = -1;

    public TrainingSession(IActorRef loader, LayeredModel model, IReadOnlyList<IActorRef> layers, OffloadPolicy policy, TrainingSettings settings,
        TimeSpan askTimeout)
    {
        if (layers.Count != model.Layers.Count) throw new ArgumentException($"{layers.Count} layer actors for {model.Layers.Count} layers");
        _objective = ClassificationLoss.ObjectiveOf(model);
        _settings = settings.Validate();
        if (model.InputShape[0] % settings.MicroBatches != 0)
            throw new FieldException(TrainingFields.MicroBatches, $"({settings.MicroBatches}) must divide the batch ({model.InputShape[0]} rows)");
        _loader = loader;
        _model = model;
        _layers = layers;
        _policy = policy;
        _askTimeout = askTimeout;
        _tied = ModelParameters.Tied(model);
        _distinct = ModelParameters.Distinct(model);
        _vocab = model.ActivationShapes()[^1].Shape[^1];
    }

    /// <summary>Rows per step (the model's batch).</summary>
    public long Batch => _model.InputShape[0];

    /// <summary>Makes every layer ready to train (a float32 master copy and its optimizer). Refused with one line for weights
    /// held narrower than float32 (a checkpoint loaded as stored rather than upcast: <see cref="TrainingWeights"/>), or kept on disk.</summary>
    public async Task StartAsync()
    {
        var ready = await Task.WhenAll(_layers.Select(a => a.Ask<LayerActor.TrainingReady>(new LayerActor.StartTraining(_settings.Optimizer), _askTimeout)))
            .ConfigureAwait(false);
        _trainingHostBytes = ready.Sum(r => r.HostBytes);
    }

    /// <summary>Step <paramref name="step"/> (0-based: it sets the learning rate) on <paramref name="ids"/>, int64 [batch, seq]
    /// token ids (the input and, shifted by one, the labels). On failure (bad labels, a NaN or infinite loss, a pass that failed)
    /// it throws a <see cref="TrainingStepException"/> (a <see cref="FieldException"/> for bad labels) and the weights stay those
    /// of the last good step.</summary>
    public Task<TrainingStepReport> StepAsync(int step, Tensor ids) => StepAsync(step, ids, null);

    /// <summary>Step <paramref name="step"/> of an image classifier (<see cref="TrainingObjective.Classification"/>) on float32
    /// <paramref name="ids"/> (pixels [batch, C, H, W]) and int64 <paramref name="labels"/> [batch] in [0, num_labels); or, with
    /// null labels, of a decoder as <see cref="StepAsync(int, Tensor)"/>. Its report's Tokens are the step's images.</summary>
    public async Task<TrainingStepReport> StepAsync(int step, Tensor ids, Tensor? labels)
    {
        if (_trainingHostBytes < 0) throw new InvalidOperationException("StartAsync first");
        bool images = _objective == TrainingObjective.Classification;
        if (images != (labels is not null))
            throw new ArgumentException(images ? $"{_model.Name}: an image classifier trains on pixels and labels" : "a decoder's labels are its ids");
        if (!ids.shape.SequenceEqual(_model.InputShape) || ids.dtype != _model.InputDType)
            throw new FieldException(images ? TrainingFields.Data : TrainingFields.Labels,
                $"must be [{string.Join(", ", _model.InputShape)}] of {_model.InputDType} (the model's batch and {(images ? "image" : "sequence")}); "
                + $"got [{string.Join(", ", ids.shape)}] of {ids.dtype}");
        if (images) ClassificationLoss.CheckLabels(labels!, _model.InputShape[0], _vocab);
        else TrainingLoss.CheckLabels(ids, _vocab, _model.InputShape[1]);
        var clock = Stopwatch.StartNew();
        int micro = _settings.MicroBatches;
        var parts = ids.chunk(micro, 0).Select(t => t.contiguous().clone()).ToArray();
        var labelParts = labels?.chunk(micro, 0).Select(t => t.contiguous().clone()).ToArray();
        using var batch = new TrainingBatch(_model, parts, labelParts);
        try
        {
            var forward = await Pass(step, batch, TrainingDirection.Forward, null).ConfigureAwait(false);
            long saved = batch.SavedBytes;
            PassReport backward;
            using (var tied = new TiedGradients(_tied, layer => _layers[layer], _askTimeout))
                backward = await Pass(step, batch, TrainingDirection.Backward, tied.DeliverAsync).ConfigureAwait(false);
            float? norm = null, coef = null;
            if (_settings.ClipNorm is { } max)
            {
                var norms = await Task.WhenAll(_layers.Select(a => a.Ask<LayerActor.GradNorms>(LayerActor.GetGradNorms.Instance, _askTimeout)))
                    .ConfigureAwait(false);
                var byName = norms.SelectMany(n => n.Norms.Select(x => ((n.Layer, x.Name), x.Norm))).ToDictionary(e => e.Item1, e => e.Norm);
                var ordered = _distinct.Select(p => byName[p]).ToArray();
                (norm, coef) = GradClip.Coefficient(ordered, max);
            }
            double lr = _settings.Schedule.Rate(_settings.Optimizer.LearningRate, step);
            await Task.WhenAll(_layers.Select(a => a.Ask<LayerActor.StepApplied>(new LayerActor.ApplyStep(lr, coef), _askTimeout))).ConfigureAwait(false);
            double loss = batch.Losses.Sum(l => (double)l) / micro;
            return new TrainingStepReport(step, loss, [.. batch.Losses], lr, norm, clock.Elapsed.TotalSeconds, images ? ids.shape[0] : ids.numel(),
                Math.Max(forward.PeakDeviceBytes, backward.PeakDeviceBytes), _trainingHostBytes + _model.Bytes + saved,
                forward.BytesTransferred + backward.BytesTransferred)
            {
                ComputeSeconds = forward.LayerTimings.Sum(t => t.ComputeSeconds) + backward.LayerTimings.Sum(t => t.ComputeSeconds),
                TransferSeconds = forward.LayerTimings.Sum(t => t.LoadSeconds) + backward.LayerTimings.Sum(t => t.LoadSeconds),
            };
        }
        catch (Exception e)
        {
            await Task.WhenAll(_layers.Select(a => a.Ask<LayerActor.GradientsZeroed>(LayerActor.ZeroGradients.Instance, _askTimeout))).ConfigureAwait(false);
            if (e is TrainingStepException or FieldException) throw;
            throw new TrainingStepException($"step {step + 1}: {e.GetBaseException().Message.Split('\n')[0]}", e);
        }
        finally
        {
            foreach (var p in parts) p.Dispose();
            foreach (var p in labelParts ?? []) p.Dispose();
        }
    }

    async Task<PassReport> Pass(int step, TrainingBatch batch, TrainingDirection direction,
        Func<int, IReadOnlyList<IReadOnlyList<(string Name, Tensor Grad)>>, Task>? gradients)
    {
        var pass = new DeviceLoaderActor.RunPass(_model, _layers, batch.Ids, _policy) { Training = new TrainingPass(batch, direction, gradients) };
        var answer = await _loader.Ask<object>(pass, _askTimeout * 4).ConfigureAwait(false);
        return answer switch
        {
            DeviceLoaderActor.PassSucceeded ok => ok.Report,
            DeviceLoaderActor.PassFailed failed => throw new TrainingStepException(
                $"step {step + 1}: the {direction.ToString().ToLowerInvariant()} pass failed: {failed.Reason}", failed.Cause),
            _ => throw new InvalidOperationException($"unexpected answer {answer}"),
        };
    }

    /// <summary>The weights as the actors hold them now, by checkpoint name (each tied tensor once); the caller owns the copies.</summary>
    public async Task<IReadOnlyList<(string Name, Tensor Tensor)>> WeightsAsync()
    {
        var list = new List<(string, Tensor)>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var actor in _layers)
        {
            var w = await actor.Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, _askTimeout).ConfigureAwait(false);
            foreach (var (name, t) in w.Tensors)
                if (seen.Add(name)) list.Add((name, t.detach().clone()));
            w.Lease?.Dispose();
        }
        return list;
    }
}
