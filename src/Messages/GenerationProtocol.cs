using Akka.Actor;
using Superpipeline.Contracts;

namespace Superpipeline.Messages;

/// <summary>The conversation between the job manager and the node agents that run a generation job's stages. The manager opens
/// one session per stage (<see cref="OpenGeneration"/>); each answers <see cref="GenerationReady"/> once its layers hold their
/// weights. Each step then goes through the stages in order (<see cref="GenerationStepInput"/>: stage 0 gets the step's token
/// ids, every stage the step's positions and mask); each stage runs its layers as one generation pass over the KV caches it
/// keeps on its node and sends its activations on, and the last stage sends <see cref="GenerationLogits"/> to the manager,
/// which samples and sends the next step. <see cref="EndGeneration"/> ends every stage's session (its caches freed on the device
/// and in its layer actors), each answering <see cref="GenerationEnded"/> with its figures. A failed step is
/// <see cref="StageProtocol.StageFailed"/>; <see cref="StageProtocol.CancelAttempt"/> ends the sessions of an attempt given up.
/// Attempts are named as pass attempts are (job id and attempt number); tensors travel as payloads, chunked when large.</summary>
public static class GenerationProtocol
{
    /// <summary>Opens stage <paramref name="Stage"/> of a generation attempt: layers [FirstLayer, FirstLayer + LayerCount) of
    /// <paramref name="Model"/> on <paramref name="Device"/> under <paramref name="Policy"/>, with KV caches placed by
    /// <paramref name="Kv"/> ("device" or "host") for <paramref name="Batch"/> rows of <paramref name="Capacity"/> entries
    /// (prompt + new tokens). Its activations go to <paramref name="Next"/>'s stage Stage + 1, or from the last stage to
    /// <paramref name="Coordinator"/>.</summary>
    public sealed record OpenGeneration(
        JobId Job, int Attempt, int Stage, int Stages, ModelSpec Model, int FirstLayer, int LayerCount, string Device, PolicySpec Policy,
        string Kv, int Batch, long Capacity, IActorRef? Next, IActorRef Coordinator) : IProtocolMessage;

    /// <summary>The stage's layers hold their host weights: it can take steps.</summary>
    public sealed record GenerationReady(JobId Job, int Attempt, int Stage) : IProtocolMessage;

    /// <summary>Step <paramref name="Step"/> entering stage <paramref name="Stage"/>: <paramref name="Activations"/> (token ids
    /// [B, T] for stage 0, else the previous stage's output), the step's <paramref name="Positions"/> int64 [B, T] and attention
    /// <paramref name="Mask"/> int64 [B, <paramref name="Past"/> + T]; <paramref name="Past"/> tokens are in the caches already.</summary>
    public sealed record GenerationStepInput(JobId Job, int Attempt, int Stage, int Step, TensorPayload Activations, TensorPayload Positions,
        TensorPayload Mask, long Past) : IProtocolMessage;

    /// <summary>The last stage's logits of step <paramref name="Step"/>, [B, 1, vocab] (the last position only).</summary>
    public sealed record GenerationLogits(JobId Job, int Attempt, int Step, TensorPayload Logits) : IProtocolMessage;

    /// <summary>The generation is over: every stage ends its session and frees its caches.</summary>
    public sealed record EndGeneration(JobId Job, int Attempt) : IProtocolMessage;

    /// <summary>A stage ended its session and freed its caches: its figures over the session's passes.</summary>
    public sealed record GenerationEnded(JobId Job, int Attempt, int Stage, GenerationStagePlan Plan, long DeviceCapacityBytes) : IProtocolMessage;
}
