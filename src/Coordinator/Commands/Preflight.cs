using Akka.Configuration;
using Superpipeline.Contracts;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;
using Superpipeline.Workers;

namespace Superpipeline.Coordinator.Commands;

/// <summary>The host memory a process may fill with model weights: what the machine has available now and the
/// workers' host weight budget as a node agent computes it (<see cref="WorkerSettings"/>: a size, <c>auto</c> = a share of
/// the available memory, or <c>off</c>). <see cref="LimitBytes"/> is the smaller of the two.</summary>
/// <param name="AvailableBytes">MemAvailable from /proc/meminfo (the kernel's estimate of memory that can be used
/// without swapping); elsewhere the GC's <c>TotalAvailableMemoryBytes</c>.</param>
/// <param name="Source">Where <paramref name="AvailableBytes"/> came from, for the message.</param>
/// <param name="BudgetBytes">The host weight budget, or null when it is <c>off</c>.</param>
public sealed record HostWeightLimit(long AvailableBytes, string Source, long? BudgetBytes)
{
    public const string BudgetKey = "superpipeline.worker.host-weight-budget";

    public long LimitBytes => BudgetBytes is { } b ? Math.Min(b, AvailableBytes) : AvailableBytes;

    /// <summary>Reads both figures; a budget that is not a size, <c>auto</c> or <c>off</c> is refused naming the key.</summary>
    public static HostWeightLimit Read(Config config)
    {
        var (bytes, source) = HostMemory.AvailableBytes() is { } available
            ? (available, "MemAvailable in /proc/meminfo")
            : (GC.GetGCMemoryInfo().TotalAvailableMemoryBytes, "the runtime's available memory");
        return new HostWeightLimit(bytes, source, WorkerSettings.Create(config, () => bytes).HostWeightBudget);
    }
}

/// <summary>Checks a job against the model's definition (no weights are made) before any work starts.</summary>
public static class Preflight
{
    /// <summary>The model's definition; throws when the policy does not fit its layers (a <see cref="FieldException"/>).</summary>
    public static LayeredModel Model(ModelSpec spec, PolicySpec policy)
    {
        var model = ModelCatalog.Create(spec);
        if (!policy.Auto) OffloadPolicy.For(policy with { ResidentAuto = false }, model.Layers.Count); // auto pins are planned later
        ModelCatalog.CheckWeights(spec, model);
        return model;
    }

    /// <summary>Refuses a device of <paramref name="capacityBytes"/> that cannot hold the model's largest layer with the
    /// activations (a <see cref="FieldException"/> naming the device memory), before a host is started for it.</summary>
    public static void DeviceFits(LayeredModel model, long capacityBytes)
    {
        if (ModelCost.From(model).DeviceMemoryRefusal(capacityBytes) is { } refusal) throw refusal;
    }

    /// <summary>The host bytes a run's weights will hold at most: every layer's stored bytes (a checkpoint's dtype, half of float32
    /// for F16/BF16) when they stay resident, else (the disk tier) the host memory given. Refuses, naming the host memory (a
    /// <see cref="FieldException"/>), a host memory below the largest layer, or below a seeded model's weights (only a
    /// checkpoint's weights can stay on disk).</summary>
    public static long HostWeightBytes(ModelSpec spec, LayeredModel model, long? hostMemory) =>
        DiskTier.Applies(spec, model, hostMemory, refuseSeeded: true) ? hostMemory!.Value : DiskTier.StoredLayerBytes(spec, model).Sum();

    /// <summary>Refuses a model whose host weights (every layer, as the LayerActors of one process hold them, or
    /// <paramref name="needBytes"/> when given: see <see cref="HostWeightBytes"/>) exceed <paramref name="memory"/>'s limit, with
    /// one line that gives both figures.</summary>
    public static void HostWeightsFit(LayeredModel model, HostWeightLimit memory, long? needBytes = null)
    {
        long need = needBytes ?? model.Bytes;
        if (need <= memory.LimitBytes) return;
        string limit = memory.BudgetBytes is { } b && b <= memory.AvailableBytes
            ? $"the host weight budget of {b:N0} bytes ({ByteSize.Format(b)}; {HostWeightLimit.BudgetKey}), with "
                + $"{memory.AvailableBytes:N0} bytes of memory available ({memory.Source})"
            : $"the {memory.AvailableBytes:N0} bytes ({ByteSize.Format(memory.AvailableBytes)}) of memory available ({memory.Source})";
        throw new ArgumentException(
            $"the model's weights need {need:N0} bytes ({ByteSize.Format(need)}) of host memory, more than {limit}; nothing was started");
    }
}
