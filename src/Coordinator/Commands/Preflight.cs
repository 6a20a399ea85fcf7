using System.Globalization;
using Akka.Configuration;
using Superpipeline.Contracts;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;

namespace Superpipeline.Coordinator.Commands;

/// <summary>The host memory a process may fill with model weights: what the machine has available now and, when the
/// configuration sets one, the workers' host weight budget. <see cref="LimitBytes"/> is the smaller of the two.</summary>
/// <param name="AvailableBytes">MemAvailable from /proc/meminfo (the kernel's estimate of memory that can be used
/// without swapping); elsewhere the GC's <c>TotalAvailableMemoryBytes</c>.</param>
/// <param name="Source">Where <paramref name="AvailableBytes"/> came from, for the message.</param>
/// <param name="BudgetBytes">superpipeline.worker.host-weight-budget, or null when the configuration has none.</param>
public sealed record HostMemory(long AvailableBytes, string Source, long? BudgetBytes)
{
    public const string BudgetKey = "superpipeline.worker.host-weight-budget";

    public long LimitBytes => BudgetBytes is { } b ? Math.Min(b, AvailableBytes) : AvailableBytes;

    public static HostMemory Read(Config config)
    {
        var (bytes, source) = Available();
        return new HostMemory(bytes, source, Budget(config));
    }

    /// <summary>The budget key, read defensively: a missing key, or one that is not a size, is no budget.</summary>
    static long? Budget(Config config)
    {
        try
        {
            return config.HasPath(BudgetKey) && config.GetByteSize(BudgetKey) is { } b && b > 0 ? b : null;
        }
        catch (Exception e) when (e is ConfigurationException or FormatException or OverflowException or ArgumentException)
        {
            return null;
        }
    }

    static (long Bytes, string Source) Available()
    {
        try
        {
            if (OperatingSystem.IsLinux())
                foreach (var line in File.ReadLines("/proc/meminfo"))
                {
                    var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    if (parts is ["MemAvailable:", var kb, "kB"] && long.TryParse(kb, NumberStyles.Integer, CultureInfo.InvariantCulture, out var k))
                        return (k * 1024, "MemAvailable in /proc/meminfo");
                }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // fall through to the GC's figure
        }
        return (GC.GetGCMemoryInfo().TotalAvailableMemoryBytes, "the runtime's available memory");
    }
}

/// <summary>Checks a job against the model's definition (no weights are made) before any work starts.</summary>
public static class Preflight
{
    /// <summary>The model's definition; throws when the policy does not fit its layers (a <see cref="FieldException"/>).</summary>
    public static LayeredModel Model(ModelSpec spec, PolicySpec policy)
    {
        var model = ModelCatalog.Create(spec);
        if (!policy.Auto) StreamPolicy.Create(policy, model.Layers.Count);
        return model;
    }

    /// <summary>Refuses a model whose host weights (every layer, as the LayerActors of one process hold them) exceed
    /// <paramref name="memory"/>'s limit, with one line that gives both figures.</summary>
    public static void HostWeightsFit(LayeredModel model, HostMemory memory)
    {
        long need = model.Bytes;
        if (need <= memory.LimitBytes) return;
        string limit = memory.BudgetBytes is { } b && b <= memory.AvailableBytes
            ? $"the host weight budget ({HostMemory.BudgetKey}) of {b:N0} bytes ({ByteSize.Format(b)})"
            : $"the {memory.AvailableBytes:N0} bytes ({ByteSize.Format(memory.AvailableBytes)}) of memory available ({memory.Source})";
        throw new ArgumentException(
            $"the model's weights need {need:N0} bytes ({ByteSize.Format(need)}) of host memory, more than {limit}; nothing was started");
    }
}
