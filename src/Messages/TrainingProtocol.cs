using System.Collections.Immutable;
using Akka.Actor;
using Superpipeline.Contracts;

namespace Superpipeline.Messages;

/// <summary>The conversation of a training job across pipeline stages. The coordinator of the job opens one stage per placement
/// (<see cref="OpenTraining"/>, to the node agent), which makes a stage actor owning the stage's layer actors (their weights and
/// optimizer state stay on its node) and answers <see cref="TrainingStageReady"/> with that actor. The coordinator links the
/// stages (<see cref="TrainingLinked"/>), then each step: stage 0 gets the step's token ids (<see cref="TrainingActivations"/>);
/// each stage runs its forward training pass and sends its output (with the ids, which the last stage needs as labels) to the
/// next; the last stage runs its backward pass from the loss, and every stage sends the gradient of its input to the previous one
/// (<see cref="TrainingGradients"/>), with the partial gradients of weights tied across stages, whose complete sums the stage
/// of their first layer sends back (<see cref="TrainingTiedSums"/>). Each stage reports <see cref="TrainingStageStepped"/> (its gradient norms; the last stage
/// also the losses); the coordinator answers every stage with <see cref="ApplyTrainingStep"/> (the learning rate and the clip
/// coefficient), each confirming with <see cref="TrainingStepApplied"/>. A failed step: the stage sends
/// <see cref="TrainingStageFailed"/>, and the coordinator has every stage drop the step (<see cref="DropTrainingStep"/>,
/// <see cref="TrainingStepDropped"/>). <see cref="GetTrainingWeights"/> gathers the weights; <see cref="EndTraining"/> stops a
/// stage (its layer actors, weights and optimizer state go with it). Tensors travel as payloads, chunked when large.</summary>
public static class TrainingProtocol
{
    /// <summary>How the stages train, as it crosses the wire: optimizer "sgd" or "adamw" and its numbers, clipping by global norm
    /// (null: none) and the micro-batches each step's batch is split into.</summary>
    public sealed record TrainingOptimizer(string Kind, double LearningRate, double Momentum, double WeightDecay, double Beta1, double Beta2,
        double Eps, double? ClipNorm, int MicroBatches);

    /// <summary>Opens stage <paramref name="Stage"/> of a training attempt: layers [FirstLayer, FirstLayer + LayerCount) of
    /// <paramref name="Model"/> on <paramref name="Device"/> under <paramref name="Policy"/>; answers go to <paramref name="Coordinator"/>.
    /// <paramref name="ResumeFrom"/>: a training checkpoint of the job (weights and optimizer state) the stage starts from instead
    /// of the model's checkpoint, a directory every node sees.</summary>
    public sealed record OpenTraining(JobId Job, int Attempt, int Stage, int Stages, ModelSpec Model, int FirstLayer, int LayerCount, string Device,
        PolicySpec Policy, TrainingOptimizer Optimizer, IActorRef Coordinator, string? ResumeFrom = null) : IProtocolMessage;

    /// <summary>The stage's layers hold their weights and optimizers; <paramref name="StageActor"/> takes its steps.</summary>
    public sealed record TrainingStageReady(JobId Job, int Attempt, int Stage, IActorRef StageActor, long HostBytes) : IProtocolMessage;

    /// <summary>Every stage's actor in order and the first model layer of each (sent to each once all are ready, before the first step).</summary>
    public sealed record TrainingLinked(JobId Job, int Attempt, ImmutableArray<IActorRef> Stages, ImmutableArray<int> FirstLayers) : IProtocolMessage;

    /// <summary>Step <paramref name="Step"/> entering stage <paramref name="Stage"/>: the step's token ids per micro-batch (int64
    /// [rows, seq]: stage 0's input, the last stage's labels) and, after stage 0, the previous stage's output per micro-batch.</summary>
    public sealed record TrainingActivations(JobId Job, int Attempt, int Stage, int Step, ImmutableArray<TensorPayload> Ids,
        ImmutableArray<TensorPayload> Activations) : IProtocolMessage;

    /// <summary>A tied parameter's gradient per micro-batch, by checkpoint name: a partial sum on its way to the stage of the
    /// parameter's first layer, or the complete sum on its way back to the stages of its other layers.</summary>
    public sealed record TiedGradient(string Name, ImmutableArray<TensorPayload> MicroBatches);

    /// <summary>The gradient of stage <paramref name="Stage"/>'s output per micro-batch, from the stage after it, and the partial
    /// sums of parameters tied to a layer at or before this stage (<paramref name="Tied"/>: the later layers' uses, which the
    /// first layer's stage completes, as one process sums a shared parameter's uses in backward order).</summary>
    public sealed record TrainingGradients(JobId Job, int Attempt, int Stage, int Step, ImmutableArray<TensorPayload> Gradients,
        ImmutableArray<TiedGradient> Tied) : IProtocolMessage;

    /// <summary>The complete gradients of parameters tied across stages, from the stage of their first layer to a stage holding
    /// them again (GPT-2's head, tied to the embedding): that stage's layers accumulate them before it reports its step.</summary>
    public sealed record TrainingTiedSums(JobId Job, int Attempt, int Stage, int Step, ImmutableArray<TiedGradient> Sums) : IProtocolMessage;

    /// <summary>A parameter's accumulated gradient norm (float32 2-norm), by layer index and checkpoint name.</summary>
    public sealed record TrainingGradNorm(int Layer, string Name, float Norm);

    /// <summary>A stage ran its step's backward pass: its layers' gradient norms (when clipping), the losses of the micro-batches
    /// (the last stage only; empty otherwise), its passes' peak device bytes and bytes moved.</summary>
    public sealed record TrainingStageStepped(JobId Job, int Attempt, int Stage, int Step, ImmutableArray<TrainingGradNorm> Norms,
        ImmutableArray<float> Losses, long PeakDeviceBytes, long BytesTransferred) : IProtocolMessage;

    /// <summary>Apply the step: every layer's optimizer at <paramref name="LearningRate"/>, gradients scaled by <paramref name="Clip"/> first.</summary>
    public sealed record ApplyTrainingStep(JobId Job, int Attempt, int Step, double LearningRate, float? Clip) : IProtocolMessage;

    public sealed record TrainingStepApplied(JobId Job, int Attempt, int Stage, int Step) : IProtocolMessage;

    /// <summary>A stage's step failed (its passes freed their device bytes); <paramref name="Reason"/> is one line.</summary>
    public sealed record TrainingStageFailed(JobId Job, int Attempt, int Stage, int Step, string Reason) : IProtocolMessage;

    /// <summary>Drop the step: its gradients and saved inputs go; the weights stay those of the last good step.</summary>
    public sealed record DropTrainingStep(JobId Job, int Attempt, int Step) : IProtocolMessage;

    public sealed record TrainingStepDropped(JobId Job, int Attempt, int Stage, int Step) : IProtocolMessage;

    /// <summary>Ask a stage for its layers' weights and, <paramref name="WithOptimizer"/>, their optimizer state (for a checkpoint).</summary>
    public sealed record GetTrainingWeights(JobId Job, int Attempt, bool WithOptimizer = false) : IProtocolMessage;

    /// <summary>A named tensor as it crosses the wire.</summary>
    public sealed record NamedTensor(string Name, TensorPayload Tensor);

    /// <summary>A stage's weights by checkpoint name, in its layers' order (float32, as the optimizer holds them), and the optimizer
    /// state when asked ("{parameter}.{slot}"; empty otherwise).</summary>
    public sealed record TrainingStageWeights(JobId Job, int Attempt, int Stage, ImmutableArray<NamedTensor> Weights,
        ImmutableArray<NamedTensor> Optimizer) : IProtocolMessage;

    /// <summary>Stop the stage: its layer actors and their state go with it.</summary>
    public sealed record EndTraining(JobId Job, int Attempt) : IProtocolMessage;
}

/// <summary>What a training job trains on and how (<see cref="JobProtocol.SubmitJob.Training"/>): the token ids int64 [rows, seq]
/// (every row a sequence; each step takes <paramref name="Batch"/> rows in order, wrapping round), the steps, the optimizer, the
/// learning-rate schedule ("constant" or "cosine" with <paramref name="Warmup"/> steps), whether the answer carries the trained
/// weights (for <c>--save</c>), and how often (in steps; 0: never) the job's coordinator saves a training checkpoint, from which an
/// attempt placed again after a worker is lost resumes instead of starting over.</summary>
public sealed record TrainingParameters(TensorPayload Ids, int Batch, int Steps, TrainingProtocol.TrainingOptimizer Optimizer, string Schedule,
    int Warmup, bool ReturnWeights, int CheckpointEvery = 0);

/// <summary>One training step as the job reports it: the loss (the mean of the micro-batches'), the learning rate, the global
/// gradient norm before clipping (null without clipping), its seconds, tokens, the fullest stage's peak device bytes and the bytes
/// every stage moved.</summary>
public sealed record TrainingStepLine(int Step, double Loss, ImmutableArray<float> MicroBatchLosses, double LearningRate, float? GradNorm,
    double Seconds, long Tokens, long PeakDeviceBytes, long BytesTransferred)
{
    public bool Equals(TrainingStepLine? o) => o is not null && Step == o.Step && Loss.Equals(o.Loss) && LearningRate.Equals(o.LearningRate)
        && GradNorm.Equals(o.GradNorm) && MicroBatchLosses.AsSpan().SequenceEqual(o.MicroBatchLosses.AsSpan());
    public override int GetHashCode() => HashCode.Combine(Step, Loss);
}
