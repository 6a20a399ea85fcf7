using System.Collections.Immutable;
using Akka.Actor;
using Superpipeline.Contracts;
using Superpipeline.Engine;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Training;
using Superpipeline.Messages;
using Superpipeline.Messages.Serialization;
using static Superpipeline.Messages.TrainingProtocol;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>One stage of a training job on a node (made by the node agent from <see cref="OpenTraining"/>): its layers as a stage
/// model, its own <see cref="LayerActor"/>s as children (their weights, gradients and optimizer state live here, on this node), and
/// the node's device loader. A step's forward training pass saves its layers' inputs on this node and sends its output on; its
/// backward pass (from the loss on the last stage, else from the gradient of its output) sends the gradient of its input back.
/// Its stop is its clean-up: the layer actors and their state go with it.</summary>
public sealed class TrainingStageActor : ReceiveActor, IWithUnboundedStash
{
    /// <summary>The layer actors hold their weights and optimizers (or could not).</summary>
    private sealed record Loaded(long HostBytes, string? Error);

    /// <summary>A pass of the current step ended; <paramref name="Error"/>: it failed. A backward pass also gives the partial sums of
    /// tied parameters for an earlier stage and the complete sums for later ones.</summary>
    private sealed record PassEnded(int Step, TrainingDirection Direction, PassReport? Report, string? Error)
    {
        public ImmutableArray<TiedGradient> Partials { get; init; } = [];
        public ImmutableArray<TiedGradient> Sums { get; init; } = [];
    }

    /// <summary>Tied sums from another stage were added to this stage's layers (<paramref name="Error"/>: they could not be).</summary>
    private sealed record SumsAccumulated(int Step, ImmutableArray<string> Names, string? Error);

    /// <summary>The step in flight on this stage: its micro-batches, the tensors it keeps, its figures, the tied partial sums from
    /// later stages, whether its backward pass is done and which tied sums from earlier stages its layers hold.</summary>
    sealed record StepState(int Step, TrainingBatch Batch, ImmutableArray<TensorPayload> Ids, Tensor[] Owned, long PeakDeviceBytes, long Moved)
    {
        public ImmutableArray<TiedGradient> TiedIn { get; init; } = [];
        public bool BackwardDone { get; init; }
        public ImmutableHashSet<string> SumsIn { get; init; } = ImmutableHashSet<string>.Empty;
        public bool Reported { get; init; }

        public void Dispose()
        {
            Batch.Dispose();
            foreach (var t in Owned) t.Dispose();
        }
    }

    readonly OpenTraining _open;
    readonly IActorRef _loader;
    readonly bool _pin;
    readonly TimeSpan _askTimeout;
    readonly ChunkingSender _sender;
    readonly LayeredModel _stage;
    readonly OffloadPolicy _policy;
    readonly TrainingSettings _settings;
    readonly IReadOnlyDictionary<string, IReadOnlyList<int>> _tied; // the whole model's: a tie may cross stages
    readonly ImmutableHashSet<string> _relayed; // tied partial sums the stage after this one sends back through it
    readonly ImmutableHashSet<string> _awaited; // tied sums an earlier stage completes for this stage's layers
    ImmutableArray<IActorRef> _layers = [];
    ImmutableArray<IActorRef> _stages = [];
    ImmutableArray<int> _firstLayers = [];
    StepState? _step;
    CheckpointWeights? _weights; // open until the layer actors have read theirs

    public TrainingStageActor(OpenTraining open, IActorRef loader, bool pinHost, TimeSpan askTimeout)
    {
        _open = open;
        _loader = loader;
        _pin = pinHost;
        _askTimeout = askTimeout;
        _sender = ChunkingSender.For(Context.System);
        var model = ModelCatalog.Create(open.Model);
        _stage = model.Slice(open.FirstLayer, open.LayerCount);
        _policy = OffloadPolicy.For(open.Policy, open.LayerCount);
        _settings = Settings(open.Optimizer);
        _tied = ModelParameters.Tied(model);
        int last = open.FirstLayer + open.LayerCount - 1;
        _relayed = [.. _tied.Where(t => t.Value[0] <= last && t.Value[^1] > last).Select(t => t.Key)];
        _awaited = [.. _tied.Where(t => t.Value[0] < open.FirstLayer && t.Value.Any(Local)).Select(t => t.Key)];
        Receive<MessageChunk>(ChunkAssembler.Receiver(Context));
        Receive<Loaded>(OnLoaded);
        Receive<EndTraining>(_ => Context.Stop(Self));
        Receive<Terminated>(OnCoordinatorGone);
        ReceiveAny(_ => Stash.Stash());
    }

    public IStash Stash { get; set; } = null!;

    /// <summary>The host bytes a training stage of <paramref name="stage"/>'s layers holds: each layer's stored weights (which its
    /// LayerActor hands to passes, fresh float32 copies after every step) plus the float32 master copy, its gradients and the
    /// optimizer's state per parameter (<see cref="TrainingLayerState.Bytes"/>). Counted against the node's host weight budget.</summary>
    public static long HostBytes(ModelSpec spec, LayeredModel stage, OptimizerSettings optimizer) =>
        DeploymentWeights.LayerHostBytes(spec, stage, null).Sum()
        + optimizer.TrainingBytes(stage.Layers.Sum(l => l.Parameters.Sum(p => TensorBytes.Of([.. p.Shape], ScalarType.Float32))));

    /// <summary>The engine's training settings from the wire record (validated: a refusal names the field).</summary>
    public static TrainingSettings Settings(TrainingOptimizer o) => new TrainingSettings(
        new OptimizerSettings(OptimizerSettings.ParseKind(o.Kind), o.LearningRate, o.Momentum, o.WeightDecay, o.Beta1, o.Beta2, o.Eps),
        LrSchedule.Constant, o.ClipNorm, o.MicroBatches).Validate();

    /// <summary>The wire record of <paramref name="s"/>.</summary>
    public static TrainingOptimizer Wire(TrainingSettings s) => new(s.Optimizer.Kind.ToString().ToLowerInvariant(), s.Optimizer.LearningRate,
        s.Optimizer.Momentum, s.Optimizer.WeightDecay, s.Optimizer.Beta1, s.Optimizer.Beta2, s.Optimizer.Eps, s.ClipNorm, s.MicroBatches);

    public static Props Props(OpenTraining open, IActorRef loader, bool pinHost, TimeSpan askTimeout) =>
        Akka.Actor.Props.Create(() => new TrainingStageActor(open, loader, pinHost, askTimeout)).WithDispatcher(Dispatchers.Host);

    bool First => _open.Stage == 0;
    bool Local(int layer) => layer >= _open.FirstLayer && layer < _open.FirstLayer + _open.LayerCount;
    bool Last => _open.Stage == _open.Stages - 1;

    /// <summary>The job's coordinator is gone (stopped, or its node lost): nobody will end this stage, so it ends itself and its
    /// layers' weights and optimizer state go with it.</summary>
    void OnCoordinatorGone(Terminated t)
    {
        if (t.ActorRef.Equals(_open.Coordinator)) Context.Stop(Self);
    }

    protected override void PreStart()
    {
        Context.Watch(_open.Coordinator);
        var dir = _open.Model.Checkpoint;
        if (dir is null)
        {
            Self.Tell(new Loaded(0, "training needs a checkpoint model (a seeded model has no weights to train)"));
            return;
        }
        string? resume = _open.ResumeFrom;
        try
        {
            // The layer actors read their weights in their PreStart, from here: the model's, or the job's training checkpoint.
            var weights = _weights = CheckpointWeights.For(_open.Model, resume ?? dir); // in the spec's load dtype (float32: NodeAgentActor)
            _layers = [.. _stage.Layers.Select(l => Context.ActorOf(LayerActor.Props(l, weights, _pin), $"layer-{l.Index}"))];
        }
        catch (Exception e)
        {
            Self.Tell(new Loaded(0, e.GetBaseException().Message));
            return;
        }
        var (layers, optimizer, timeout) = (_layers, _settings.Optimizer, _askTimeout);
        async Task<Loaded> Load()
        {
            foreach (var w in await Task.WhenAll(layers.Select(a => a.Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, timeout))))
                w.Lease?.Dispose();
            var ready = await Task.WhenAll(layers.Select(a => a.Ask<LayerActor.TrainingReady>(new LayerActor.StartTraining(optimizer), timeout)));
            if (resume is not null)
            {
                var state = TrainingCheckpoint.ReadOptimizer(resume);
                try
                {
                    await Task.WhenAll(layers.Select(a => a.Ask<LayerActor.OptimizerStateLoaded>(new LayerActor.LoadOptimizerState(state), timeout)));
                }
                finally
                {
                    foreach (var t in state.Values) t.Dispose();
                }
            }
            return new Loaded(ready.Sum(r => r.HostBytes), null);
        }
        Load().ContinueWith(t => t.IsCompletedSuccessfully ? t.Result : new Loaded(0, t.Exception?.GetBaseException().Message ?? "cancelled"),
            TaskScheduler.Default).PipeTo(Self);
    }

    protected override void PostStop()
    {
        _step?.Dispose();
        _weights?.Dispose();
    }

    void OnLoaded(Loaded m)
    {
        _weights?.Dispose();
        _weights = null;
        if (m.Error is { } error)
        {
            _open.Coordinator.Tell(new TrainingStageFailed(_open.Job, _open.Attempt, _open.Stage, -1,
                $"stage {_open.Stage} (layers {_open.FirstLayer}..{_open.FirstLayer + _open.LayerCount - 1}): {error.Split('\n')[0]}"));
            Context.Stop(Self);
            return;
        }
        _open.Coordinator.Tell(new TrainingStageReady(_open.Job, _open.Attempt, _open.Stage, Self, m.HostBytes));
        Become(Ready);
        Stash.UnstashAll();
    }

    void Ready()
    {
        Receive<MessageChunk>(ChunkAssembler.Receiver(Context));
        Receive<TrainingLinked>(m => (_stages, _firstLayers) = (m.Stages, m.FirstLayers));
        Receive<TrainingActivations>(OnActivations);
        Receive<TrainingGradients>(OnGradients);
        Receive<PassEnded>(OnPassEnded);
        Receive<TrainingTiedSums>(OnTiedSums);
        Receive<SumsAccumulated>(OnSumsAccumulated);
        Receive<ApplyTrainingStep>(OnApply);
        Receive<DropTrainingStep>(OnDrop);
        Receive<GetTrainingWeights>(OnGetWeights);
        Receive<EndTraining>(_ => Context.Stop(Self));
        Receive<Terminated>(OnCoordinatorGone);
    }

    void Fail(int step, string reason)
    {
        _open.Coordinator.Tell(new TrainingStageFailed(_open.Job, _open.Attempt, _open.Stage, step,
            $"step {step + 1}, stage {_open.Stage}: {reason.Split('\n')[0]}"));
    }

    /// <summary>The step's ids (and, after stage 0, the previous stage's output) arrive: the forward pass runs; the last stage's
    /// forward leaves out its head, which its backward pass recomputes with the loss.</summary>
    void OnActivations(TrainingActivations a)
    {
        if (a.Stage != _open.Stage) return;
        _step?.Dispose();
        _step = null;
        Tensor[] ids, inputs;
        try
        {
            if (a.Ids.Length != _settings.MicroBatches) throw new ArgumentException($"{a.Ids.Length} micro-batches of ids, expected {_settings.MicroBatches}");
            ids = [.. a.Ids.Select(TensorPayloads.ToTensor)];
            inputs = First ? [] : [.. a.Activations.Select(TensorPayloads.ToTensor)];
            if (!First && inputs.Length != ids.Length) throw new ArgumentException($"{inputs.Length} activations for {ids.Length} micro-batches");
        }
        catch (Exception e)
        {
            Fail(a.Step, e.Message);
            return;
        }
        var batch = new TrainingBatch(_stage, ids) { StageInputs = First ? null : inputs, EndsWithHead = Last };
        _step = new StepState(a.Step, batch, a.Ids, [.. ids, .. inputs], 0, 0);
        if (Last && _stage.Layers.Count == 1) RunPass(TrainingDirection.Backward); // the head alone: nothing to run forward
        else RunPass(TrainingDirection.Forward);
    }

    void OnGradients(TrainingGradients g)
    {
        if (g.Stage != _open.Stage || _step is not { } step || step.Step != g.Step || Last) return;
        Tensor[] grads;
        try
        {
            grads = [.. g.Gradients.Select(TensorPayloads.ToTensor)];
            if (grads.Length != step.Batch.Ids.Count) throw new ArgumentException($"{grads.Length} gradients for {step.Batch.Ids.Count} micro-batches");
            var tied = g.Tied.IsDefault ? [] : g.Tied;
            if (!tied.Select(t => t.Name).ToHashSet().SetEquals(_relayed) || tied.Any(t => t.MicroBatches.Length != grads.Length))
                throw new ArgumentException($"the tied gradients sent back ({string.Join(", ", tied.Select(t => t.Name))}) are not this stage's "
                    + $"({string.Join(", ", _relayed)}), one per micro-batch");
        }
        catch (Exception e)
        {
            Fail(g.Step, e.Message);
            return;
        }
        step.Batch.OutputGradients = grads;
        _step = step with { Owned = [.. step.Owned, .. grads], TiedIn = g.Tied.IsDefault ? [] : g.Tied };
        RunPass(TrainingDirection.Backward);
    }

    void RunPass(TrainingDirection direction)
    {
        var step = _step!;
        // The pass numbers the stage's layers from 0; ties and actors go by the model's numbering.
        var tied = new TiedGradients(_tied, index => _layers[index - _open.FirstLayer], _askTimeout, Local);
        if (direction == TrainingDirection.Backward)
            foreach (var t in step.TiedIn) tied.Seed(t.Name, [.. t.MicroBatches.Select(TensorPayloads.ToTensor)]);
        var pass = new DeviceLoaderActor.RunPass(_stage, _layers, step.Batch.Ids, _policy)
        {
            Training = new TrainingPass(step.Batch, direction,
                direction == TrainingDirection.Backward ? (layer, grads) => tied.DeliverAsync(_stage.Layers[layer].Index, grads) : null),
        };
        int number = step.Step;
        _loader.Ask<object>(pass, _askTimeout * 4).ContinueWith(t =>
        {
            using var _ = tied;
            if (!t.IsCompletedSuccessfully) return new PassEnded(number, direction, null, t.Exception?.GetBaseException().Message ?? "cancelled");
            return t.Result switch
            {
                DeviceLoaderActor.PassSucceeded ok => new PassEnded(number, direction, ok.Report, null)
                {
                    Partials = Payloads(tied.TakePartials()), Sums = Payloads(tied.TakeSums()),
                },
                DeviceLoaderActor.PassFailed failed => new PassEnded(number, direction, null,
                    $"the {direction.ToString().ToLowerInvariant()} pass failed: {failed.Reason}"),
                var other => new PassEnded(number, direction, null, $"unexpected answer {other}"),
            };
        }, TaskScheduler.Default).PipeTo(Self);
    }

    void OnPassEnded(PassEnded e)
    {
        if (_step is not { } step || step.Step != e.Step) return;
        if (e.Error is { } error)
        {
            Fail(e.Step, error);
            return;
        }
        var report = e.Report!;
        _step = step = step with
        {
            PeakDeviceBytes = Math.Max(step.PeakDeviceBytes, report.PeakDeviceBytes), Moved = step.Moved + report.BytesTransferred,
        };
        int micro = step.Batch.Ids.Count;
        try
        {
            if (e.Direction == TrainingDirection.Forward)
            {
                if (Last)
                {
                    RunPass(TrainingDirection.Backward);
                    return;
                }
                var outputs = Enumerable.Range(0, micro).Select(m => TensorPayloads.From(step.Batch.Output(m)!)).ToImmutableArray();
                _sender.Tell(_stages[_open.Stage + 1], new TrainingActivations(_open.Job, _open.Attempt, _open.Stage + 1, step.Step, step.Ids, outputs), Self);
                return;
            }
            if (!First)
            {
                var grads = Enumerable.Range(0, micro).Select(m => TensorPayloads.From(step.Batch.InputGradients[m]!)).ToImmutableArray();
                _sender.Tell(_stages[_open.Stage - 1], new TrainingGradients(_open.Job, _open.Attempt, _open.Stage - 1, step.Step, grads, e.Partials), Self);
            }
            else if (e.Partials.Length > 0) throw new InvalidOperationException($"{e.Partials[0].Name}: a tied gradient no stage completes");
            SendSums(step.Step, e.Sums);
        }
        catch (Exception x)
        {
            Fail(e.Step, x.Message);
            return;
        }
        _step = step with { BackwardDone = true };
        ReportWhenComplete();
    }

    static ImmutableArray<TiedGradient> Payloads(IReadOnlyList<(string Name, Tensor[] MicroBatches)> sums)
    {
        var list = sums.Select(s => new TiedGradient(s.Name, [.. s.MicroBatches.Select(TensorPayloads.From)])).ToImmutableArray();
        foreach (var t in sums.SelectMany(s => s.MicroBatches)) t.Dispose();
        return list;
    }

    /// <summary>Sends each complete tied sum to every other stage holding its parameter, one message per stage.</summary>
    void SendSums(int step, ImmutableArray<TiedGradient> sums)
    {
        int StageOf(int layer) => _firstLayers.Select((first, s) => (first, s)).Last(e => e.first <= layer).s;
        var byStage = sums.SelectMany(sum => _tied[sum.Name].Where(l => !Local(l)).Select(StageOf).Distinct().Select(stage => (stage, sum)))
            .GroupBy(e => e.stage);
        foreach (var group in byStage)
            _sender.Tell(_stages[group.Key], new TrainingTiedSums(_open.Job, _open.Attempt, group.Key, step, [.. group.Select(e => e.sum)]), Self);
    }

    /// <summary>Tied sums completed on an earlier stage: this stage's layers holding them add them, micro-batch by micro-batch.</summary>
    void OnTiedSums(TrainingTiedSums m)
    {
        if (m.Stage != _open.Stage || _step is not { } step || step.Step != m.Step) return;
        var (self, layers, first, timeout, tied) = (Self, _layers, _open.FirstLayer, _askTimeout, _tied);
        var names = m.Sums.Select(s => s.Name).ToImmutableArray();
        Task.Run(async () =>
        {
            foreach (var sum in m.Sums)
            {
                if (!_awaited.Contains(sum.Name)) throw new ArgumentException($"{sum.Name}: a tied sum this stage does not hold");
                foreach (var payload in sum.MicroBatches)
                {
                    using var grad = TensorPayloads.ToTensor(payload);
                    foreach (var layer in tied[sum.Name].Where(Local))
                        await layers[layer - first].Ask<LayerActor.GradientsAccumulated>(new LayerActor.AccumulateGradients([(sum.Name, grad)]), timeout)
                            .ConfigureAwait(false);
                }
            }
        }).ContinueWith(t => new SumsAccumulated(m.Step, names, t.IsCompletedSuccessfully ? null : t.Exception?.GetBaseException().Message ?? "cancelled"),
            TaskScheduler.Default).PipeTo(self);
    }

    void OnSumsAccumulated(SumsAccumulated a)
    {
        if (_step is not { } step || step.Step != a.Step) return;
        if (a.Error is { } error)
        {
            Fail(a.Step, $"the tied gradients: {error}");
            return;
        }
        _step = step with { SumsIn = step.SumsIn.Union(a.Names) };
        ReportWhenComplete();
    }

    /// <summary>Reports the step to the coordinator once its backward pass is done and every tied sum it awaits is held: with the
    /// last stage's losses and, when clipping, its layers' gradient norms.</summary>
    void ReportWhenComplete()
    {
        if (_step is not { BackwardDone: true, Reported: false } step || !step.SumsIn.IsSupersetOf(_awaited)) return;
        _step = step with { Reported = true };
        ImmutableArray<float> losses = Last ? [.. step.Batch.Losses] : [];
        var coordinator = _open.Coordinator;
        var stepped = (ImmutableArray<TrainingGradNorm> norms) => new TrainingStageStepped(_open.Job, _open.Attempt, _open.Stage, step.Step, norms,
            losses, step.PeakDeviceBytes, step.Moved);
        if (_settings.ClipNorm is null)
        {
            coordinator.Tell(stepped([]));
            return;
        }
        var self = Self;
        int number = step.Step;
        Task.WhenAll(_layers.Select(a => a.Ask<LayerActor.GradNorms>(LayerActor.GetGradNorms.Instance, _askTimeout)))
            .ContinueWith(t => t.IsCompletedSuccessfully
                ? (object)stepped([.. t.Result.SelectMany(n => n.Norms.Select(x => new TrainingGradNorm(n.Layer, x.Name, x.Norm)))])
                : new TrainingStageFailed(_open.Job, _open.Attempt, _open.Stage, number, $"step {number + 1}, stage {_open.Stage}: the gradient norms: "
                    + (t.Exception?.GetBaseException().Message ?? "cancelled")), TaskScheduler.Default)
            .PipeTo(coordinator, self);
    }

    void OnApply(ApplyTrainingStep a)
    {
        var replyTo = Sender;
        var done = new TrainingStepApplied(_open.Job, _open.Attempt, _open.Stage, a.Step);
        _step?.Dispose();
        _step = null;
        Task.WhenAll(_layers.Select(l => l.Ask<LayerActor.StepApplied>(new LayerActor.ApplyStep(a.LearningRate, a.Clip), _askTimeout)))
            .ContinueWith(t => t.IsCompletedSuccessfully ? (object)done
                : new TrainingStageFailed(_open.Job, _open.Attempt, _open.Stage, a.Step,
                    $"step {a.Step + 1}, stage {_open.Stage}: the optimizer step: {t.Exception?.GetBaseException().Message ?? "cancelled"}"),
                TaskScheduler.Default)
            .PipeTo(replyTo);
    }

    void OnDrop(DropTrainingStep d)
    {
        var replyTo = Sender;
        var done = new TrainingStepDropped(_open.Job, _open.Attempt, _open.Stage, d.Step);
        _step?.Dispose();
        _step = null;
        Task.WhenAll(_layers.Select(l => l.Ask<LayerActor.GradientsZeroed>(LayerActor.ZeroGradients.Instance, _askTimeout)))
            .ContinueWith(_ => done, TaskScheduler.Default).PipeTo(replyTo);
    }

    /// <summary>The stage's weights (and optimizer state when asked) go to the asker; a tied parameter's state once (its copies
    /// step alike).</summary>
    void OnGetWeights(GetTrainingWeights m)
    {
        var replyTo = Sender;
        var sender = _sender;
        var self = Self;
        var (job, attempt, stage) = (_open.Job, _open.Attempt, _open.Stage);
        Task.Run(async () =>
        {
            var list = ImmutableArray.CreateBuilder<NamedTensor>();
            var state = ImmutableArray.CreateBuilder<NamedTensor>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var actor in _layers)
            {
                var w = await actor.Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, _askTimeout).ConfigureAwait(false);
                using (w.Lease)
                    foreach (var (name, t) in w.Tensors) list.Add(new NamedTensor(name, TensorPayloads.From(t)));
                if (!m.WithOptimizer) continue;
                var o = await actor.Ask<LayerActor.OptimizerState>(LayerActor.GetOptimizerState.Instance, _askTimeout).ConfigureAwait(false);
                foreach (var (name, t) in o.Tensors)
                    using (t)
                        if (seen.Add(name)) state.Add(new NamedTensor(name, TensorPayloads.From(t)));
            }
            sender.Tell(replyTo, new TrainingStageWeights(job, attempt, stage, list.ToImmutable(), state.ToImmutable()), self);
        });
    }
}
