using Akka.Actor;
using Akka.Event;
using Superpipeline.Engine.Generation;
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

    /// <summary>Ask for the layer's host KV cache in generation session <paramref name="Session"/> (host placement), made
    /// zeroed with <paramref name="Capacity"/> entries for <paramref name="Batch"/> rows on first ask; the answer is
    /// <see cref="HostKv"/>.</summary>
    public sealed record GetKv(Guid Session, long Batch, long Capacity) : INoSerializationVerificationNeeded;

    /// <summary>In-process only: the layer's host KV cache for a session, owned by the layer actor until the session ends.</summary>
    public sealed record HostKv(int Layer, KvBuffer Cache) : INoSerializationVerificationNeeded;

    /// <summary>The session has ended (or failed): free the layer's host KV cache for it. The answer is <see cref="KvEnded"/>.</summary>
    public sealed record EndKv(Guid Session) : INoSerializationVerificationNeeded;

    public sealed record KvEnded(int Layer, Guid Session) : INoSerializationVerificationNeeded;

    readonly Dictionary<Guid, KvBuffer> _kv = [];
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
        Receive<GetKv>(OnGetKv);
        Receive<EndKv>(m => OnEndKv(m.Session));
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

    void OnGetKv(GetKv m)
    {
        if (_layer.Kv is not { } layout)
        {
            Sender.Tell(new Status.Failure(new InvalidOperationException($"layer {_layer.Index} ({_layer.Name}) keeps no KV cache")));
            return;
        }
        if (!_kv.TryGetValue(m.Session, out var cache))
            _kv[m.Session] = cache = KvBuffer.Allocate(layout, m.Batch, m.Capacity, ScalarType.Float32, CPU);
        Sender.Tell(new HostKv(_layer.Index, cache));
    }

    void OnEndKv(Guid session)
    {
        if (_kv.Remove(session, out var cache)) cache.Dispose();
        Sender.Tell(new KvEnded(_layer.Index, session));
    }

    protected override void PostStop()
    {
        foreach (var cache in _kv.Values) cache.Dispose();
        _kv.Clear();
        if (_weights is null) return;
        foreach (var (_, t) in _weights.Tensors) t.Dispose();
        _weights = null;
    }
}
