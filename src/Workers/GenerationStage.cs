using System.Collections.Immutable;
using Akka.Actor;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Generation;
using Superpipeline.Engine.Models;

namespace Superpipeline.Workers;

/// <summary>One stage that holds every layer of a model for generation: the layers' <see cref="LayerActor"/>s (host weights,
/// and the KV caches under host placement) and a <see cref="DeviceLoaderActor"/> on one device, made with the same factories
/// the node agent uses, under <paramref name="parent"/> (an actor system in-process; a node agent's context later). Disposing
/// it stops them, which frees the weights and any cache left.</summary>
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
