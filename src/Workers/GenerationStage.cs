using System.Collections.Immutable;
using Akka.Actor;
using Superpipeline.Contracts;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Generation;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Messages;

namespace Superpipeline.Workers;

/// <summary>One stage that holds every layer of a model for generation: the layers' <see cref="LayerActor"/>s (host weights,
/// and the KV caches under host placement) and a <see cref="DeviceLoaderActor"/> on one device, made with the same factories
/// the node agent uses, under <paramref name="parent"/> (an actor system). Disposing it stops them, which frees the weights and
/// any cache left. The CLI's generate and the cluster run generation as a job instead (the node agent's
/// <see cref="GenerationStageSession"/> per stage); this one-stage path is the engine's own, which the specs use as a reference.</summary>
public sealed class GenerationStage : IDisposable
{
    readonly IActorRefFactory _parent;

    GenerationStage(IActorRefFactory parent, LayeredModel model, ImmutableArray<IActorRef> layers, IActorRef loader)
    {
        _parent = parent;
        Model = model;
        Layers = layers;
        Loader = loader;
    }

    public LayeredModel Model { get; }
    public ImmutableArray<IActorRef> Layers { get; }
    public IActorRef Loader { get; }

    public static GenerationStage Start(IActorRefFactory parent, Accelerator device, LayeredModel model, IWeightSource weights, TimeSpan askTimeout,
        string name = "gen")
    {
        var layers = model.Layers.Select(l => parent.ActorOf(LayerActor.Props(l, weights, device.WantsPinnedHost), $"{name}-layer-{l.Index}"))
            .ToImmutableArray();
        var loader = parent.ActorOf(DeviceLoaderActor.Props(device, askTimeout), $"{name}-{device.Name.Replace(':', '-')}-loader");
        return new GenerationStage(parent, model, layers, loader);
    }

    /// <summary>Runs one generation on this stage (see <see cref="GenerationSession.RunAsync"/>).</summary>
    public Task<GenerationResult> GenerateAsync(IReadOnlyList<IReadOnlyList<long>> prompts, GenerationOptions options, TimeSpan passTimeout,
        Action<TokenStep>? onToken = null, CancellationToken cancel = default) =>
        GenerationSession.RunAsync(Loader, Model, Layers, prompts, options, passTimeout, onToken, cancel);

    public void Dispose()
    {
        var stopper = _parent switch { ActorSystem s => (Action<IActorRef>)s.Stop, IActorContext c => c.Stop, _ => _ => { } };
        foreach (var layer in Layers) stopper(layer);
        stopper(Loader);
    }
}

/// <summary>A stage of a generation attempt on a node, as <see cref="NodeAgentActor"/> names it.</summary>
public sealed record GenerationStageId(AttemptId Attempt, int Stage);

/// <summary>Where a stage of a generation job is on its node.</summary>
public enum GenerationStagePhase
{
    /// <summary>Its layer actors are reading their weights.</summary>
    Loading,
    /// <summary>Waiting for the next step.</summary>
    Ready,
    /// <summary>A step's pass is with the device loader.</summary>
    Stepping,
    /// <summary>Its session's caches are being freed.</summary>
    Ending,
}

/// <summary>One stage of a generation job on a node (made by the node agent from <c>OpenGeneration</c>): its layers as a stage
/// model, the deployment's layer actors and the device's loader, its own session id (so stages sharing a device or layer actors
/// never share caches), the stop that cancels its running pass, and its figures over the session's passes. The node agent owns
/// it and calls it from its handlers; the session ends once (its caches freed, then its deployment released).</summary>
public sealed class GenerationStageSession(
    GenerationStageId id, GenerationProtocol.OpenGeneration open, LayeredModel stage, OffloadPolicy policy, DeploymentKey deployment,
    ImmutableArray<IActorRef> layers, IActorRef loader, KvPlacement placement) : IDisposable
{
    readonly CancellationTokenSource _stop = new();

    public GenerationStageId Id { get; } = id;
    /// <summary>What the coordinator asked for: where the stage's activations go, its layers and device, its batch and capacity.</summary>
    public GenerationProtocol.OpenGeneration Open { get; } = open;
    public LayeredModel Stage { get; } = stage;
    public OffloadPolicy Policy { get; } = policy;
    public DeploymentKey Deployment { get; } = deployment;
    public ImmutableArray<IActorRef> Layers { get; } = layers;
    public IActorRef Loader { get; } = loader;
    public KvPlacement Placement { get; } = placement;
    public long Capacity => Open.Capacity;
    /// <summary>The session id its passes and caches go by on the loader and in the layer actors.</summary>
    public Guid Session { get; } = Guid.NewGuid();
    public CancellationToken Stop => _stop.Token;
    public GenerationStagePhase Phase { get; private set; } = GenerationStagePhase.Loading;
    /// <summary>The session is to end once no pass of it runs; <see cref="ReportEnd"/>: answer the coordinator with its figures.</summary>
    public bool EndWanted { get; private set; }
    public bool ReportEnd { get; private set; }

    public int Passes { get; private set; }
    public long PeakDeviceBytes { get; private set; }
    public long BytesTransferred { get; private set; }
    public int Window { get; private set; }
    public int Swap { get; private set; }
    public long DeviceCapacityBytes { get; private set; }

    /// <summary>K and V of the stage's attention layers at full capacity, wherever they are kept.</summary>
    public long KvBytes => Stage.Layers.Sum(l => l.Kv?.Bytes(Open.Batch, Capacity) ?? 0);

    public void Loaded() { if (Phase == GenerationStagePhase.Loading) Phase = GenerationStagePhase.Ready; }

    public void Stepping() => Phase = GenerationStagePhase.Stepping;

    /// <summary>A step's pass answered; a successful pass adds its figures.</summary>
    public void Stepped(PassReport? report)
    {
        if (Phase == GenerationStagePhase.Stepping) Phase = GenerationStagePhase.Ready;
        if (report is null) return;
        Passes++;
        PeakDeviceBytes = Math.Max(PeakDeviceBytes, report.PeakDeviceBytes);
        BytesTransferred += report.BytesTransferred;
        (Window, Swap, DeviceCapacityBytes) = (report.Window, report.Swap, report.DeviceCapacityBytes);
    }

    /// <summary>Asks the session to end (cancelling a running pass when it is not to be reported: the attempt was given up or
    /// failed). True when it can end now (no pass runs and it is not ending already).</summary>
    public bool WantEnd(bool report)
    {
        EndWanted = true;
        ReportEnd |= report;
        if (!report) _stop.Cancel();
        return Phase is GenerationStagePhase.Loading or GenerationStagePhase.Ready;
    }

    public void Ending() => Phase = GenerationStagePhase.Ending;

    /// <summary>Reads the host bytes the stage's weights hold at their fullest over the session (set when the session opens).</summary>
    public Func<long>? HostWeightPeak { get; set; }
    long? _hostWeightPeak;

    public GenerationStagePlan Plan(string node, string device, int firstLayer) =>
        new(Id.Stage, node, device, firstLayer, Stage.Layers.Count, Window, Swap, PeakDeviceBytes, KvBytes, BytesTransferred, Passes)
        {
            PeakHostWeightBytes = _hostWeightPeak ??= HostWeightPeak?.Invoke() ?? 0,
        };

    public void Dispose()
    {
        _hostWeightPeak ??= HostWeightPeak?.Invoke() ?? 0; // ends the measure (the disk tier's meter) when no plan was asked for
        _stop.Dispose();
    }
}
