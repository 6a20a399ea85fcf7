using System.Collections.Immutable;
using System.Diagnostics;
using Akka.Actor;
using Akka.Event;
using Superpipeline.Contracts;
using Superpipeline.Engine;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;
using Superpipeline.Engine.Training;
using Superpipeline.Messages;
using Superpipeline.Messages.Serialization;
using Superpipeline.Workers;
using static Superpipeline.Messages.JobProtocol;
using static Superpipeline.Messages.TrainingProtocol;
using static TorchSharp.torch;

namespace Superpipeline.Coordinator.Cluster;

/// <summary>A stage of a training job: the node agent that opens it (on <paramref name="Node"/>), the device, its layers and window.</summary>
public sealed record TrainingStagePlacement(IActorRef Agent, string Node, string Device, int FirstLayer, int LayerCount, PolicySpec Policy);

/// <summary>A training checkpoint of a job, saved by its coordinator after <paramref name="Step"/> steps into
/// <paramref name="Directory"/> (a Hugging Face checkpoint with optimizer.safetensors and trainer_state.json, which
/// <c>train --resume</c> also takes), with the steps' lines so far: where an attempt placed again resumes.</summary>
public sealed record TrainingResume(string Directory, int Step, ImmutableArray<TrainingStepLine> Lines);

/// <summary>The coordinator of one training attempt across pipeline stages (a child of the job manager, or of anything that places
/// stages): it opens every stage on its node, links them, and drives the steps. Each step it sends the step's ids to stage 0, waits
/// for every stage's <see cref="TrainingStageStepped"/> (the last stage's losses, every stage's gradient norms), answers with the
/// learning rate and the clip coefficient (computed over the whole model's norms in model order, as <see cref="TrainingSession"/>
/// does), and waits for every stage to apply it. <paramref name="replyTo"/> hears a <see cref="JobTrainingStep"/> per step and one
/// <see cref="JobTrained"/> (or <see cref="JobFailed"/> when the stages could not open). A failed step has every stage drop it; the
/// job then ends with the failure and the weights of the last good step. Every wait is bounded by a receive timeout. Its stop ends
/// every stage (their layer actors and optimizer state go with them).
/// <para>Every <see cref="TrainingParameters.CheckpointEvery"/> steps (when it has a checkpoint directory) it gathers every stage's
/// weights and optimizer state and saves a training checkpoint, then tells <paramref name="replyTo"/> (<see cref="Checkpointed"/>);
/// an attempt opened with a <see cref="TrainingResume"/> has its stages start from that checkpoint and goes on from its step.</para></summary>
public sealed class TrainingJobActor : ReceiveActor
{
    enum Phase { Opening, Forward, Applying, Checkpointing, Dropping, Gathering, Done }

    /// <summary>The attempt saved a training checkpoint (to its parent, the job manager: a local message).</summary>
    public sealed record Checkpointed(JobId Job, int Attempt, TrainingResume Resume);

    /// <summary>A checkpoint was written (or could not be: <paramref name="Error"/>).</summary>
    sealed record CheckpointWritten(int Step, string Directory, string? Error);

    /// <summary>The attempt's progress: one record replaced as it moves (the phase, the step, what the phase has gathered).</summary>
    sealed record State(Phase Phase, int Step, ImmutableDictionary<int, IActorRef> Stages, ImmutableDictionary<int, TrainingStageStepped> Stepped,
        ImmutableHashSet<int> Answered, ImmutableArray<TrainingStepLine> Lines, string? Failure, ImmutableDictionary<int, TrainingStageWeights> Weights)
    {
        public static State Opening => new(Phase.Opening, 0, ImmutableDictionary<int, IActorRef>.Empty, ImmutableDictionary<int, TrainingStageStepped>.Empty,
            [], [], null, ImmutableDictionary<int, TrainingStageWeights>.Empty);

        /// <summary>Each stage's peak device bytes over this attempt's steps.</summary>
        public ImmutableDictionary<int, long> Peaks { get; init; } = ImmutableDictionary<int, long>.Empty;

        /// <summary>The seconds of this attempt's steps.</summary>
        public double Seconds { get; init; }
    }

    readonly JobId _job;
    readonly int _attempt;
    readonly ModelSpec _model;
    readonly ImmutableArray<TrainingStagePlacement> _placement;
    readonly TrainingParameters _training;
    readonly IActorRef _replyTo;
    readonly TrainingSettings _settings;
    readonly IReadOnlyList<(int Layer, string Name)> _distinct;
    readonly ChunkingSender _sender;
    readonly Tensor _data;
    readonly TrainingResume? _resume;
    readonly ModelCost _cost;
    readonly string? _checkpoints;
    readonly ILoggingAdapter _log = Context.GetLogger();
    State _state = State.Opening;
    Stopwatch _clock = new();

    /// <param name="resume">The checkpoint this attempt starts from (null: the model's, at step 0).</param>
    /// <param name="checkpoints">The job's directory for training checkpoints (null: none are saved).</param>
    public TrainingJobActor(JobId job, int attempt, ModelSpec model, ImmutableArray<TrainingStagePlacement> placement, TrainingParameters training,
        IActorRef replyTo, TimeSpan stepTimeout, TrainingResume? resume = null, string? checkpoints = null)
    {
        _resume = resume;
        _checkpoints = training.CheckpointEvery > 0 ? checkpoints : null;
        _job = job;
        _attempt = attempt;
        _model = model;
        _placement = placement;
        _training = training;
        _replyTo = replyTo;
        var layered = ModelCatalog.Create(model);
        _settings = Check(layered, placement, training);
        _cost = ModelCost.From(layered);
        _distinct = ModelParameters.Distinct(layered);
        _sender = ChunkingSender.For(Context.System);
        _data = TensorPayloads.ToTensor(training.Ids).DetachFromDisposeScope();
        Context.SetReceiveTimeout(stepTimeout);
        Receive<MessageChunk>(ChunkAssembler.Receiver(Context));
        Receive<TrainingStageReady>(OnReady);
        Receive<TrainingStageStepped>(OnStepped);
        Receive<TrainingStepApplied>(OnApplied);
        Receive<TrainingStageFailed>(OnFailed);
        Receive<TrainingStepDropped>(OnDropped);
        Receive<TrainingStageWeights>(OnWeights);
        Receive<CheckpointWritten>(OnCheckpointWritten);
        Receive<ReceiveTimeout>(_ => OnTimeout());
    }

    public static Props Props(JobId job, int attempt, ModelSpec model, ImmutableArray<TrainingStagePlacement> placement, TrainingParameters training,
        IActorRef replyTo, TimeSpan stepTimeout, TrainingResume? resume = null, string? checkpoints = null) =>
        Akka.Actor.Props.Create(() => new TrainingJobActor(job, attempt, model, placement, training, replyTo, stepTimeout, resume, checkpoints))
            .WithDispatcher(Dispatchers.Host);

    /// <summary>Checks a training job before anything runs (a <see cref="FieldException"/> or <see cref="ArgumentException"/> naming
    /// what is wrong): the settings, the data as labels of the model and the stages covering the model in order. Returns the engine's
    /// settings.</summary>
    public static TrainingSettings Check(LayeredModel model, IReadOnlyList<TrainingStagePlacement> placement, TrainingParameters training)
    {
        var settings = TrainingStageActor.Settings(training.Optimizer) with
        {
            Schedule = new LrSchedule(LrSchedule.ParseKind(training.Schedule), training.Warmup, training.Steps).Validate(),
        };
        if (training.Batch < 1) throw new FieldException(TrainingFields.Batch, $"must be at least 1; got {training.Batch}");
        if (training.Steps < 1) throw new FieldException(TrainingFields.Steps, $"must be at least 1; got {training.Steps}");
        if (training.CheckpointEvery < 0)
            throw new FieldException(TrainingFields.CheckpointEvery, $"must be 0 (never) or more; got {training.CheckpointEvery}");
        if (training.Batch % settings.MicroBatches != 0)
            throw new FieldException(TrainingFields.MicroBatches, $"({settings.MicroBatches}) must divide the batch ({training.Batch} rows)");
        if (model.InputDType != ScalarType.Int64 || model.InputShape.Length != 2)
            throw new ArgumentException($"{model.Name}: training takes a decoder over token ids");
        using (var ids = TensorPayloads.ToTensor(training.Ids))
        {
            if (ids.dim() != 2 || ids.shape[0] < training.Batch)
                throw new FieldException(TrainingFields.Batch, $"({training.Batch}) exceeds the {(ids.dim() == 2 ? ids.shape[0] : 0)} rows of the data");
            TrainingLoss.CheckLabels(ids, model.ActivationShapes()[^1].Shape[^1], model.InputShape[1]);
        }
        int next = 0;
        foreach (var p in placement)
        {
            if (p.FirstLayer != next || p.LayerCount < 1) throw new ArgumentException($"the stages must cover layers 0..{model.Layers.Count - 1} in order");
            next += p.LayerCount;
        }
        if (next != model.Layers.Count) throw new ArgumentException($"the stages cover {next} of the model's {model.Layers.Count} layers");
        return settings;
    }

    protected override void PreStart()
    {
        var wire = TrainingStageActor.Wire(_settings);
        for (int s = 0; s < _placement.Length; s++)
        {
            var p = _placement[s];
            p.Agent.Tell(new OpenTraining(_job, _attempt, s, _placement.Length, _model, p.FirstLayer, p.LayerCount, p.Device, p.Policy, wire, Self,
                _resume?.Directory));
        }
    }

    protected override void PostStop()
    {
        foreach (var stage in _state.Stages.Values) stage.Tell(new EndTraining(_job, _attempt));
        _data.Dispose();
    }

    bool Mine(JobId job, int attempt) => job == _job && attempt == _attempt;

    void OnReady(TrainingStageReady r)
    {
        if (!Mine(r.Job, r.Attempt)) return;
        _state = _state with { Stages = _state.Stages.SetItem(r.Stage, r.StageActor) };
        if (_state.Phase != Phase.Opening || _state.Stages.Count < _placement.Length) return;
        var stages = Enumerable.Range(0, _placement.Length).Select(s => _state.Stages[s]).ToImmutableArray();
        var firsts = _placement.Select(p => p.FirstLayer).ToImmutableArray();
        foreach (var stage in stages) stage.Tell(new TrainingLinked(_job, _attempt, stages, firsts));
        _state = _state with { Lines = _resume?.Lines ?? [] };
        StartStep(_resume?.Step ?? 0);
    }

    /// <summary>The one place the attempt moves to a step's forward pass.</summary>
    void StartStep(int step)
    {
        _state = _state with { Phase = Phase.Forward, Step = step, Stepped = _state.Stepped.Clear(), Answered = [] };
        _clock = Stopwatch.StartNew();
        ImmutableArray<TensorPayload> ids;
        using (var scope = NewDisposeScope())
        {
            var batch = TrainingData.Rows(_data, (long)step * _training.Batch, _training.Batch);
            ids = [.. batch.chunk(_settings.MicroBatches, 0).Select(t => TensorPayloads.From(t.contiguous()))];
        }
        _sender.Tell(_state.Stages[0], new TrainingActivations(_job, _attempt, 0, step, ids, []), Self);
    }

    void OnStepped(TrainingStageStepped m)
    {
        if (!Mine(m.Job, m.Attempt) || _state.Phase != Phase.Forward || m.Step != _state.Step) return;
        _state = _state with
        {
            Stepped = _state.Stepped.SetItem(m.Stage, m),
            Peaks = _state.Peaks.SetItem(m.Stage, Math.Max(_state.Peaks.GetValueOrDefault(m.Stage), m.PeakDeviceBytes)),
        };
        if (_state.Stepped.Count < _placement.Length) return;
        float? norm = null, coef = null;
        if (_settings.ClipNorm is { } max)
        {
            var byName = _state.Stepped.Values.SelectMany(s => s.Norms).ToDictionary(n => (n.Layer, n.Name), n => n.Norm);
            (norm, coef) = GradClip.Coefficient([.. _distinct.Where(byName.ContainsKey).Select(p => byName[p])], max);
        }
        int step = _state.Step;
        double lr = _settings.Schedule.Rate(_settings.Optimizer.LearningRate, step);
        var losses = _state.Stepped[_placement.Length - 1].Losses;
        double loss = losses.Sum(l => (double)l) / _settings.MicroBatches;
        long tokens = _training.Batch * _training.Ids.Shape[1];
        var line = new TrainingStepLine(step, loss, losses, lr, norm, 0, tokens, _state.Stepped.Values.Max(s => s.PeakDeviceBytes),
            _state.Stepped.Values.Sum(s => s.BytesTransferred));
        _state = _state with { Phase = Phase.Applying, Lines = _state.Lines.Add(line) };
        foreach (var stage in _state.Stages.Values) stage.Tell(new ApplyTrainingStep(_job, _attempt, step, lr, coef));
    }

    void OnApplied(TrainingStepApplied m)
    {
        if (!Mine(m.Job, m.Attempt) || _state.Phase != Phase.Applying || m.Step != _state.Step) return;
        _state = _state with { Answered = _state.Answered.Add(m.Stage) };
        if (_state.Answered.Count < _placement.Length) return;
        var line = _state.Lines[^1] with { Seconds = _clock.Elapsed.TotalSeconds };
        _state = _state with { Lines = _state.Lines.SetItem(_state.Lines.Length - 1, line), Seconds = _state.Seconds + line.Seconds };
        _sender.Tell(_replyTo, new JobTrainingStep(_job, line), Self);
        int done = _state.Step + 1;
        if (done >= _training.Steps) Finish(null);
        else if (_checkpoints is not null && done % _training.CheckpointEvery == 0)
        {
            _state = _state with { Phase = Phase.Checkpointing, Weights = _state.Weights.Clear() };
            foreach (var stage in _state.Stages.Values) stage.Tell(new GetTrainingWeights(_job, _attempt, WithOptimizer: true));
        }
        else StartStep(done);
    }

    /// <summary>Every stage's weights and optimizer state are here: the checkpoint after <paramref name="done"/> steps is written
    /// off the actor's thread (the weights over the model's other files, then the optimizer state, then trainer_state.json).</summary>
    void WriteCheckpoint(int done)
    {
        var stages = Enumerable.Range(0, _placement.Length).Select(s => _state.Weights[s]).ToArray();
        string dir = Path.Combine(_checkpoints!, $"attempt-{_attempt}-step-{done}");
        var state = _settings.State(done, (long)done * _training.Batch % _data.shape[0], _training.Steps, _training.Batch, _data.shape[0], _data.shape[1],
            [.. _state.Lines.Select(l => new LossPoint(l.Step, l.Loss, l.LearningRate))]);
        string source = _model.Checkpoint!;
        Task.Run(() =>
        {
            var seen = new HashSet<string>(StringComparer.Ordinal);
            var weights = stages.SelectMany(s => s.Weights).Where(w => seen.Add(w.Name)).Select(w => (w.Name, TensorPayloads.ToTensor(w.Tensor))).ToList();
            seen.Clear();
            var optimizer = stages.SelectMany(s => s.Optimizer).Where(w => seen.Add(w.Name)).Select(w => (w.Name, TensorPayloads.ToTensor(w.Tensor))).ToList();
            try
            {
                TrainingCheckpoint.Save(dir, source, weights, optimizer, state);
            }
            finally
            {
                foreach (var (_, t) in weights.Concat(optimizer)) t.Dispose();
            }
        }).ContinueWith(t => new CheckpointWritten(done, dir, t.IsCompletedSuccessfully ? null : t.Exception?.GetBaseException().Message ?? "cancelled"),
            TaskScheduler.Default).PipeTo(Self);
    }

    /// <summary>The checkpoint is on disk: the job manager hears of it, and the next step starts. One that could not be written is
    /// logged and the training goes on (a later attempt resumes from an older checkpoint, or from the start).</summary>
    void OnCheckpointWritten(CheckpointWritten w)
    {
        if (_state.Phase != Phase.Checkpointing || w.Step != _state.Step + 1) return;
        if (w.Error is { } error) _log.Warning("job {0}: the training checkpoint after step {1} was not saved: {2}", _job, w.Step, error);
        else Context.Parent.Tell(new Checkpointed(_job, _attempt, new TrainingResume(w.Directory, w.Step, _state.Lines)));
        StartStep(w.Step);
    }

    void OnFailed(TrainingStageFailed f)
    {
        if (!Mine(f.Job, f.Attempt) || _state.Phase is Phase.Dropping or Phase.Gathering or Phase.Checkpointing or Phase.Done) return;
        if (_state.Phase == Phase.Opening)
        {
            _state = _state with { Phase = Phase.Done };
            _sender.Tell(_replyTo, new JobFailed(_job, f.Reason), Self);
            Context.Stop(Self);
            return;
        }
        if (_state.Phase == Phase.Applying)
        {
            // An optimizer step failed on some stage: the stages no longer hold one step's weights; nothing is gathered.
            _state = _state with { Phase = Phase.Done, Lines = _state.Lines.RemoveAt(_state.Lines.Length - 1) };
            _sender.Tell(_replyTo, new JobFailed(_job, f.Reason), Self);
            Context.Stop(Self);
            return;
        }
        _state = _state with { Phase = Phase.Dropping, Answered = [], Failure = f.Reason };
        foreach (var stage in _state.Stages.Values) stage.Tell(new DropTrainingStep(_job, _attempt, _state.Step));
    }

    void OnDropped(TrainingStepDropped m)
    {
        if (!Mine(m.Job, m.Attempt) || _state.Phase != Phase.Dropping) return;
        _state = _state with { Answered = _state.Answered.Add(m.Stage) };
        if (_state.Answered.Count == _placement.Length) Finish(_state.Failure);
    }

    /// <summary>The training is over (with <paramref name="failure"/> when a step failed): gather the weights if asked, then answer.</summary>
    void Finish(string? failure)
    {
        _state = _state with { Failure = failure };
        if (!_training.ReturnWeights)
        {
            Answer([]);
            return;
        }
        _state = _state with { Phase = Phase.Gathering, Weights = _state.Weights.Clear() };
        foreach (var stage in _state.Stages.Values) stage.Tell(new GetTrainingWeights(_job, _attempt));
    }

    void OnWeights(TrainingStageWeights w)
    {
        if (!Mine(w.Job, w.Attempt) || _state.Phase is not (Phase.Gathering or Phase.Checkpointing)) return;
        _state = _state with { Weights = _state.Weights.SetItem(w.Stage, w) };
        if (_state.Weights.Count < _placement.Length) return;
        if (_state.Phase == Phase.Checkpointing)
        {
            WriteCheckpoint(_state.Step + 1);
            return;
        }
        var seen = new HashSet<string>(StringComparer.Ordinal);
        Answer([.. Enumerable.Range(0, _placement.Length).SelectMany(s => _state.Weights[s].Weights).Where(t => seen.Add(t.Name))]);
    }

    void Answer(ImmutableArray<NamedTensor> weights)
    {
        _state = _state with { Phase = Phase.Done };
        var stages = _placement.Select((p, s) =>
        {
            var layers = _cost.Layers.Skip(p.FirstLayer).Take(p.LayerCount).ToArray();
            var policy = OffloadPolicy.For(p.Policy, p.LayerCount);
            return new StagePlan(s, p.Node, p.Device, p.FirstLayer, p.LayerCount, policy.Window, policy.Swap, layers.Sum(l => l.Bytes),
                layers.Sum(l => l.Flops), _state.Peaks.GetValueOrDefault(s), _state.Seconds);
        }).ToImmutableArray();
        _sender.Tell(_replyTo, new JobTrained(_job, _state.Lines, weights, _state.Failure) { Stages = stages }, Self);
        Context.Stop(Self);
    }

    void OnTimeout()
    {
        if (_state.Phase == Phase.Done) return;
        var why = $"training step {_state.Step + 1} made no progress ({_state.Phase.ToString().ToLowerInvariant()}) within the ask timeout; the job stops";
        _state = _state with { Phase = Phase.Done };
        _sender.Tell(_replyTo, new JobFailed(_job, why), Self);
        Context.Stop(Self);
    }
}
