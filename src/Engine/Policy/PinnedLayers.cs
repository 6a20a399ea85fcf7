using System.Collections.Immutable;

namespace Superpipeline.Engine.Policy;

/// <summary>Which layers a count of pinned (resident for the whole job) layers means: the one rule the loader, the
/// virtual-time device, the pass simulator and the generation simulator's <c>Workload.ResidentSet</c> share.</summary>
public static class PinnedLayers
{
    /// <summary><paramref name="count"/> of <paramref name="layers"/> layers spread evenly, at layer granularity (FlexGen's
    /// weight percentage on the GPU): layer i is pinned when ⌊(i+1)·count/layers⌋ &gt; ⌊i·count/layers⌋, so the last layer
    /// is pinned first (1 of 5 pins layer 4; 2 of 5 pins 2 and 4).</summary>
    public static ImmutableSortedSet<int> Spread(int count, int layers)
    {
        if (layers < 0) throw new ArgumentOutOfRangeException(nameof(layers), layers, "a model has no negative layer count");
        if (count < 0 || count > layers)
            throw new FieldException(FieldException.ResidentLayers, $"must be from 0 to {layers} (the model's layers); got {count}");
        var set = ImmutableSortedSet.CreateBuilder<int>();
        for (int i = 0; i < layers; i++)
            if ((long)(i + 1) * count / layers > (long)i * count / layers) set.Add(i);
        return set.ToImmutable();
    }

    /// <summary>Every layer: the pinned set of window = all.</summary>
    public static ImmutableSortedSet<int> All(int layers) => [.. Enumerable.Range(0, layers)];
}
