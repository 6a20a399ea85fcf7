using System.Collections.Immutable;
using Akka.Actor;
using Superpipeline.Contracts;

namespace Superpipeline.Messages;

/// <summary>Marker of every message that crosses the network; bound in HOCON to <see cref="Serialization.ProtocolSerializer"/>.</summary>
public interface IProtocolMessage { }

/// <summary>A device as a worker registers it (owned by the wire protocol; placement reads it): runtime name on its node,
/// kind, capacity, and <see cref="Cost"/>: the device as the cost model sees it, measured once by the worker
/// (DeviceCalibration: compute rate and host→device link; same name and capacity), which window auto plans from
/// as it is. Null when the device was not measured.</summary>
public sealed record DeviceInfo(string Name, DeviceKind Kind, long CapacityBytes, DeviceCost? Cost = null);

/// <summary>Workers tell the coordinator what they have. A worker repeats its registration as a heartbeat, so a
/// coordinator that moved (singleton hand-over) learns the inventory again without anyone asking.</summary>
public static class WorkerProtocol
{
    public sealed record RegisterWorker(IActorRef Agent, string Node, ImmutableArray<DeviceInfo> Devices) : IProtocolMessage;
    public sealed record WorkerRegistered(int Workers) : IProtocolMessage;
}

/// <summary>One stage of a placed run: contiguous layers [<see cref="StageAssignment.FirstLayer"/>,
/// FirstLayer + LayerCount) of the model on one device of one worker. A run carries one or more jobs of the
/// same model, coalesced as micro-batches (<see cref="StageAssignment.Seeds"/>: each job's input seed): each layer the
/// stage loads computes all of them before it is evicted. <c>Job</c> names the run (its first job's id).</summary>
public static class StageProtocol
{
    /// <summary>Runs the stage when its inputs arrive (the first stage makes each micro-batch's input from its seed).
    /// Its outputs go to <paramref name="Next"/>'s stage <paramref name="Stage"/>+1, or to <paramref name="Coordinator"/> from the last stage.</summary>
    public sealed record StageAssignment(
        JobId Job, int Attempt, int Stage, int Stages, ModelSpec Model, ImmutableArray<long> Seeds, int FirstLayer, int LayerCount,
        string Device, PolicySpec Policy, IActorRef? Next, IActorRef Coordinator) : IProtocolMessage;

    /// <summary>The activations entering a stage, one per micro-batch.</summary>
    public sealed record StageInput(JobId Job, int Attempt, int Stage, ImmutableArray<TensorPayload> Activations) : IProtocolMessage;

    /// <summary>A stage's progress through its layers: <paramref name="Layer"/> is the layer's index in the whole model (the
    /// stage's first layer plus its index in the stage), <paramref name="AtSeconds"/> the time since the stage's pass began.
    /// The coordinator passes it on to the clients of the attempt's jobs as <see cref="JobProtocol.JobProgress"/>,
    /// with the model's layer count.</summary>
    public sealed record StageProgress(JobId Job, int Attempt, int Stage, int Layer, LayerPhase Phase, double AtSeconds) : IProtocolMessage
    {
        /// <summary>The progress of <paramref name="stage"/>'s pass, whose own layer <paramref name="progress"/> counts from 0.</summary>
        public static StageProgress Of(StageAssignment stage, LayerProgress progress) =>
            new(stage.Job, stage.Attempt, stage.Stage, stage.FirstLayer + progress.Layer, progress.Phase, progress.AtSeconds);
    }

    /// <summary>A stage finished: its report (a part of the job's combined report).</summary>
    public sealed record StageDone(JobId Job, int Attempt, int Stage, string Node, PassReport Report) : IProtocolMessage;

    /// <summary>The model's outputs, one per micro-batch, from the last stage.</summary>
    public sealed record StageOutput(JobId Job, int Attempt, ImmutableArray<TensorPayload> Outputs) : IProtocolMessage;

    public sealed record StageFailed(JobId Job, int Attempt, int Stage, string Reason) : IProtocolMessage;

    /// <summary>The coordinator gave up on an attempt (re-placed after a worker left): drop its stages.</summary>
    public sealed record CancelAttempt(JobId Job, int Attempt) : IProtocolMessage;
}

/// <summary>A message too large for one transport frame travels as numbered chunks of its serialized bytes and is
/// put back together by the receiver (<see cref="Serialization.ChunkAssembler.Receiver"/>, the one hook every receiving actor uses).</summary>
public sealed record MessageChunk(Guid Message, string Manifest, int Index, int Count, ImmutableArray<byte> Bytes) : IProtocolMessage
{
    public bool Equals(MessageChunk? other) =>
        other is not null && Message == other.Message && Manifest == other.Manifest && Index == other.Index && Count == other.Count
        && Bytes.AsSpan().SequenceEqual(other.Bytes.AsSpan());
    public override int GetHashCode() => HashCode.Combine(Message, Index);
}
