using System.Collections.Immutable;
using Superpipeline.Contracts;

namespace Superpipeline.Messages;

/// <summary>The conversation between a client and the job manager: submit a job, hear progress, receive
/// exactly one answer: <see cref="JobSucceeded"/>, <see cref="JobFailed"/> (it did not complete) or
/// <see cref="JobRefused"/> (it was not run).</summary>
public static class JobProtocol
{
    public interface IJobCommand : IProtocolMessage { JobId Id { get; } }
    public interface IJobEvent : IProtocolMessage { JobId Id { get; } }

    /// <summary>Run one forward pass of <paramref name="Model"/> (weights from its seed) under <paramref name="Policy"/>, on the
    /// input drawn from <paramref name="InputSeed"/> (default: the model's seed). Jobs with the same model and policy
    /// may be coalesced into one pass as micro-batches; each keeps its own input and output.
    /// With <paramref name="Generation"/> it is a generation job instead: a prefill pass over its prompts, then one decode pass per
    /// new token, through the same stages (never coalesced); its progress is one <see cref="JobToken"/> per step and its answer
    /// <see cref="JobGenerated"/>.
    /// With <paramref name="Training"/> it is a training job: its steps through the same stages, each stage's layer actors keeping
    /// their weights and optimizer state on their node (never coalesced); its progress is one <see cref="JobTrainingStep"/> per
    /// step and its answer <see cref="JobTrained"/>.</summary>
    public sealed record SubmitJob(JobId Id, ModelSpec Model, PolicySpec Policy, long? InputSeed = null, GenerationParameters? Generation = null,
        TrainingParameters? Training = null) : IJobCommand;

    public sealed record JobAccepted(JobId Id) : IJobEvent;

    /// <summary>A layer of the job's model was computed: <see cref="LayerProgress.Layer"/> of <see cref="LayerProgress.Layers"/>
    /// (the whole model's layer count, whichever stage ran it).</summary>
    public sealed record JobProgress(JobId Id, LayerProgress Progress) : IJobEvent;
    public sealed record JobSucceeded(JobId Id, TensorPayload Output, PassReport Report) : IJobEvent;

    /// <summary>A generation job made step <paramref name="Step"/>'s tokens (0: the one the prefill chose), one per row; a row
    /// that has finished (EOS) shows the pad id. A job placed again after a worker was lost starts over from step 0.</summary>
    public sealed record JobToken(JobId Id, int Step, ImmutableArray<long> Tokens) : IJobEvent
    {
        public bool Equals(JobToken? other) =>
            other is not null && Id == other.Id && Step == other.Step && Tokens.AsSpan().SequenceEqual(other.Tokens.AsSpan());
        public override int GetHashCode() => HashCode.Combine(Id, Step);
    }

    /// <summary>A generation job's answer: <paramref name="Tokens"/> int64 [batch, prompt + new] (left-padded prompts, then the
    /// new tokens) and its report, with each stage's peak and KV bytes in <see cref="GenerationReport.Stages"/>.</summary>
    public sealed record JobGenerated(JobId Id, TensorPayload Tokens, GenerationReport Report) : IJobEvent;
    /// <summary>A training job ran a step.</summary>
    public sealed record JobTrainingStep(JobId Id, TrainingStepLine Step) : IJobEvent;

    /// <summary>A training job's answer: every step that ran and, when a step failed, why (<paramref name="Failure"/>; the weights
    /// are then those of the last good step). <paramref name="Weights"/>: the trained weights by checkpoint name when asked for.
    /// <see cref="Stages"/>: where the last attempt trained (node, device, layers, k/k', the stage's weight bytes and forward FLOPs
    /// per step, its peak device bytes over the steps it ran, its seconds of steps).</summary>
    public sealed record JobTrained(JobId Id, ImmutableArray<TrainingStepLine> Steps, ImmutableArray<TrainingProtocol.NamedTensor> Weights,
        string? Failure) : IJobEvent
    {
        public ImmutableArray<StagePlan> Stages { get; init; } = [];
    }

    /// <summary>The job did not complete; <paramref name="Reason"/> is a one-line message for a person.</summary>
    public sealed record JobFailed(JobId Id, string Reason) : IJobEvent;

    /// <summary>The job was not run (bad model or knobs, no device can hold it, queue full, id already used for a
    /// different job); nothing ran for it. <paramref name="Reason"/> is a one-line message for a person.</summary>
    public sealed record JobRefused(JobId Id, string Reason) : IJobEvent;
}
