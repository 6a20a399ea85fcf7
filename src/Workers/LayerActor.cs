using Akka.Actor;
using Akka.Event;
using Superpipeline.Engine.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>Owns one layer's host weights (pinned when the device is CUDA). It reads them from the weight
/// source when it starts, on the host dispatcher (never Akka's default one), hands references to the device
/// loader in-process (weights never cross the network) and frees them when it stops.</summary>
public sealed class LayerActor : ReceiveActor
{
    /// <summary>Ask for the layer's host weights; the answer is <see cref="HostWeights"/>.</summary>
    public sealed record GetWeights : INoSerializationVerificationNeeded
    {
        public static readonly GetWeights Instance = new();
        GetWeights() { }
    }

    /// <summary>In-process only: references to host tensors owned by the layer actor, valid while it lives.</summary>
    public sealed record HostWeights(int Layer, IReadOnlyList<(string Name, Tensor Tensor)> Tensors) : INoSerializationVerificationNeeded;

    readonly Layer _layer;
    readonly IWeightSource _source;
    readonly bool _pin;
    HostWeights? _weights;

    public LayerActor(Layer layer, IWeightSource source, bool pin)
    {
        _layer = layer;
        _source = source;
        _pin = pin;
        Receive<GetWeights>(_ => Sender.Tell(_weights));
    }

    public static Props Props(Layer layer, IWeightSource source, bool pin) =>
        Akka.Actor.Props.Create(() => new LayerActor(layer, source, pin)).WithDispatcher(Dispatchers.Host);

    protected override void PreStart()
    {
        var loaded = _source.Load(_layer);
        var list = new List<(string, Tensor)>(_layer.Parameters.Count);
        foreach (var spec in _layer.Parameters)
        {
            var t = loaded[spec.Name];
            if (_pin)
            {
                var pinned = t.pin_memory();
                t.Dispose();
                t = pinned;
            }
            list.Add((spec.Name, t));
        }
        _weights = new HostWeights(_layer.Index, list);
        Context.GetLogger().Debug("layer {0} ({1}): {2:N0} host bytes", _layer.Index, _layer.Name, _layer.Bytes);
    }

    protected override void PostStop()
    {
        if (_weights is null) return;
        foreach (var (_, t) in _weights.Tensors) t.Dispose();
        _weights = null;
    }
}
