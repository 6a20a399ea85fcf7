using System.Collections.Immutable;
using Akka.Actor;
using Superpipeline.Contracts;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Models;

namespace Superpipeline.Workers;

/// <summary>Which weights a deployment holds: a model (the batch does not change weights) and a layer range. A deployment with a
/// <paramref name="Session"/> is private to it (a training stage, whose weights change): never shared, never idle until it ends.</summary>
public sealed record DeploymentKey(ModelSpec Model, int FirstLayer, int LayerCount, string? Session = null)
{
    public static DeploymentKey Of(ModelSpec model, int firstLayer, int layerCount) => new(model with { Batch = 0 }, firstLayer, layerCount);

    public override string ToString() =>
        $"{(Session is null ? "" : Session + ": ")}layers {FirstLayer}-{FirstLayer + LayerCount - 1} of model {Model.Name} (seed {Model.Seed})";
}

/// <summary>The LayerActors holding one <see cref="DeploymentKey"/>'s host weights on a node, and its lifecycle:
/// <paramref name="Ready"/> completes when every LayerActor holds its weights; <paramref name="InUse"/> counts the
/// stages running on it (it is never stopped while above zero); <paramref name="LastUsed"/> is when a stage last took or
/// released it (for the idle timeout) and <paramref name="Recency"/> orders those uses (idle ones are evicted least
/// recently used first, even when the clock has not moved).</summary>
public sealed record Deployment(
    DeploymentKey Key, ImmutableArray<IActorRef> Layers, ImmutableArray<long> LayerBytes, Task Ready, DateTimeOffset LastUsed, long Recency, int InUse)
{
    public long HostBytes => LayerBytes.Sum();
    public bool Idle => InUse == 0;
}

/// <summary>A node's deployments under a host-weight budget. Bytes count from the moment a deployment's LayerActors
/// are made until they have stopped (not merely been told to), so the figure never undercounts what the process
/// holds. Not thread-safe: the node agent calls it from its own handlers.</summary>
/// <param name="budget">Most host weight bytes at once; null: no limit.</param>
/// <param name="stop">Stops a LayerActor; its bytes are counted until <see cref="Stopped"/> is called for it.</param>
public sealed class DeploymentPool(long? budget, Action<IActorRef> stop)
{
    readonly Dictionary<DeploymentKey, Deployment> _deployments = [];
    readonly Dictionary<IActorRef, long> _stopping = []; // told to stop, not yet terminated
    long _liveBytes;
    long _stoppingBytes;
    long _uses;

    public long? Budget => budget;
    /// <summary>Bytes of host weights held now: live deployments and LayerActors still stopping.</summary>
    public long HostBytes => _liveBytes + _stoppingBytes;
    /// <summary>The most <see cref="HostBytes"/> ever held at once.</summary>
    public long PeakHostBytes { get; private set; }
    /// <summary>The deployments held, least recently used first.</summary>
    public IEnumerable<Deployment> Deployments => _deployments.Values.OrderBy(d => d.Recency);

    /// <summary>Why a deployment of <paramref name="bytes"/> can never fit, or null if it can.</summary>
    public string? TooLarge(DeploymentKey key, long bytes) => bytes > budget
        ? $"{key} need {bytes:N0} bytes of host weights, above this worker's host weight budget of {budget:N0} bytes"
        : null;

    /// <summary>Takes the deployment for <paramref name="key"/> for a stage that starts now: the existing one, or a new one
    /// made by <paramref name="deploy"/> once the budget has room (least recently used idle deployments are stopped to
    /// make it). Null: no room until a running stage releases its deployment or stopping LayerActors end; ask again
    /// then. <paramref name="mayAdd"/> false: only an existing deployment is taken (others wait ahead for room).</summary>
    public Deployment? TryAcquire(DeploymentKey key, long bytes, DateTimeOffset now, bool mayAdd,
        Func<(ImmutableArray<IActorRef> Layers, ImmutableArray<long> LayerBytes, Task Ready)> deploy)
    {
        if (_deployments.TryGetValue(key, out var existing))
            return _deployments[key] = existing with { InUse = existing.InUse + 1, LastUsed = now, Recency = ++_uses };
        if (!mayAdd) return null;
        if (budget is { } limit)
        {
            // Stopping bytes free themselves; evict only what must go for the live bytes to leave room.
            while (_liveBytes + bytes > limit && LeastRecentlyUsedIdle() is { } victim) Evict(victim);
            if (HostBytes + bytes > limit) return null;
        }
        var (layers, layerBytes, ready) = deploy();
        var made = new Deployment(key, layers, layerBytes, ready, now, ++_uses, InUse: 1);
        _deployments[key] = made;
        _liveBytes += made.HostBytes;
        PeakHostBytes = Math.Max(PeakHostBytes, HostBytes);
        return made;
    }

    /// <summary>A stage that used <paramref name="key"/>'s deployment ended. A deployment whose weights never became
    /// ready is stopped when its last user leaves, so the next stage deploys it afresh.</summary>
    public void Release(DeploymentKey key, DateTimeOffset now)
    {
        if (!_deployments.TryGetValue(key, out var d)) return;
        d = _deployments[key] = d with { InUse = Math.Max(0, d.InUse - 1), LastUsed = now, Recency = ++_uses };
        if (d.Idle && d.Ready.IsCompleted && !d.Ready.IsCompletedSuccessfully) Evict(d);
    }

    /// <summary>A private deployment (<see cref="DeploymentKey.Session"/>) whose actors have all terminated: its bytes are free now.</summary>
    public void Ended(DeploymentKey key)
    {
        if (_deployments.Remove(key, out var d)) _liveBytes -= d.HostBytes;
    }

    /// <summary>Stops deployments idle since before <paramref name="now"/> − <paramref name="idleTimeout"/>; returns how many.</summary>
    public int EvictIdle(DateTimeOffset now, TimeSpan idleTimeout)
    {
        var idle = _deployments.Values.Where(d => d.Idle && now - d.LastUsed >= idleTimeout).ToArray();
        foreach (var d in idle) Evict(d);
        return idle.Length;
    }

    /// <summary>A LayerActor this pool stopped has terminated: its bytes are free. False if it was not one of them.</summary>
    public bool Stopped(IActorRef layer)
    {
        if (!_stopping.Remove(layer, out var bytes)) return false;
        _stoppingBytes -= bytes;
        return true;
    }

    Deployment? LeastRecentlyUsedIdle() => _deployments.Values.Where(d => d.Idle).MinBy(d => d.Recency);

    void Evict(Deployment d)
    {
        _deployments.Remove(d.Key);
        _liveBytes -= d.HostBytes;
        for (int i = 0; i < d.Layers.Length; i++)
        {
            _stopping[d.Layers[i]] = d.LayerBytes[i];
            _stoppingBytes += d.LayerBytes[i];
            stop(d.Layers[i]);
        }
    }
}

/// <summary>Where a deployment's LayerActors get their weights on a node with a disk-tier host memory
/// (superpipeline.worker.host-memory): resident in the LayerActors (the stage's stored bytes count against the host weight
/// budget), or, for a checkpoint stage whose stored weights exceed the host memory, read from disk per pass within the
/// node's shared <see cref="HostWeightBudget"/> (the deployment itself then holds no bytes).</summary>
public static class DeploymentWeights
{
    /// <summary>Host bytes each LayerActor of the stage holds while deployed: 0 each when it reads from disk.</summary>
    public static ImmutableArray<long> LayerHostBytes(ModelSpec spec, LayeredModel stage, HostWeightBudget? hostMemory) =>
        DiskTier.Applies(spec, stage, hostMemory?.Capacity)
            ? [.. stage.Layers.Select(_ => 0L)]
            : [.. DiskTier.StoredLayerBytes(spec, stage)];

    /// <summary>The weight source for the stage's LayerActors: the disk tier or <see cref="ModelCatalog.Weights"/>.</summary>
    public static IWeightSource Source(ModelSpec spec, LayeredModel stage, HostWeightBudget? hostMemory) =>
        DiskTier.Applies(spec, stage, hostMemory?.Capacity)
            ? new DiskTierWeights(spec.Checkpoint!, hostMemory!)
            : ModelCatalog.Weights(spec);

    /// <summary>Measures the host bytes held by weights while a pass of <paramref name="deployment"/> runs: its LayerActors'
    /// bytes when they are resident, else the most the node's disk-tier reads held at once meanwhile.</summary>
    public static Func<long> MeasurePass(Deployment deployment, HostWeightBudget? hostMemory)
    {
        if (deployment.HostBytes > 0 || hostMemory is null) return () => deployment.HostBytes;
        var meter = hostMemory.Measure();
        return () =>
        {
            meter.Dispose();
            return meter.Peak;
        };
    }
}
