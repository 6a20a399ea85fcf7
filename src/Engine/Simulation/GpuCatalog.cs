using Superpipeline.Contracts;
using System.Globalization;

namespace Superpipeline.Engine.Simulation;

/// <summary>A catalog GPU (owned by <see cref="GpuCatalog"/> and simulation specs; never a device that is made or run on)
/// and its host link as the generation simulator sees them, with <em>effective</em> rates: what real kernels and copies
/// sustain, not datasheet peaks. Each figure keeps its source; <see cref="ToDeviceCost"/> gives the cost model's view.</summary>
/// <param name="CapacityBytes">Device memory the job may use.</param>
/// <param name="LinkBytesPerSecond">Sustained host→device copy rate from pinned memory.</param>
/// <param name="FlopsPerSecond">Sustained fp16 tensor-core rate of large GEMMs (prefill, big batches).</param>
/// <param name="MemoryBytesPerSecond">Sustained device-memory bandwidth: bounds memory-bound layers (decode).</param>
/// <param name="TransferLatencySeconds">Fixed cost of each host→device copy (launch and DMA setup).</param>
/// <param name="Source">Where the figures come from and what is assumed.</param>
public sealed record GpuSpec(
    string Name,
    string Description,
    long CapacityBytes,
    double LinkBytesPerSecond,
    double FlopsPerSecond,
    double MemoryBytesPerSecond,
    double TransferLatencySeconds,
    string Source)
{
    /// <summary>The device as <see cref="PassSimulator"/> takes it.</summary>
    public DeviceCost ToDeviceCost() => new DeviceCost(Name, CapacityBytes, LinkBytesPerSecond, FlopsPerSecond, TransferLatencySeconds).Validated();

    /// <summary>Checks the figures; throws naming the field.</summary>
    public GpuSpec Validated()
    {
        if (CapacityBytes <= 0) throw new ArgumentException($"gpu {Name}: memory must be positive");
        if (!(LinkBytesPerSecond > 0) || double.IsInfinity(LinkBytesPerSecond)) throw new ArgumentException($"gpu {Name}: linkGBps must be positive");
        if (!(FlopsPerSecond > 0) || double.IsInfinity(FlopsPerSecond)) throw new ArgumentException($"gpu {Name}: tflops must be positive");
        if (!(MemoryBytesPerSecond > 0) || double.IsInfinity(MemoryBytesPerSecond)) throw new ArgumentException($"gpu {Name}: memoryGBps must be positive");
        if (!(TransferLatencySeconds >= 0)) throw new ArgumentException($"gpu {Name}: latencyUs cannot be negative");
        return this;
    }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{Name}: {CapacityBytes / (double)(1L << 30):0.#} GiB, link {LinkBytesPerSecond / 1e9:0.##} GB/s, {FlopsPerSecond / 1e12:0.#} TFLOPS, memory "
            + $"{MemoryBytesPerSecond / 1e9:0} GB/s, {TransferLatencySeconds * 1e6:0.#} µs/copy");
}

/// <summary>The host side, for the KV cache when it lives in host memory and attention over it runs on the CPU.</summary>
/// <param name="AttentionFlopsPerSecond">Sustained CPU rate of decode attention (memory-bound: about one FLOP per
/// fp16 cache byte read).</param>
public sealed record HostSpec(string Name, double AttentionFlopsPerSecond, string Source)
{
    /// <summary>The host of FlexGen's T4 experiment (GCP, 208 GB DRAM): FlexGen's own cost model fits CPU
    /// attention on it at 0.0123 TFLOPS (FMInference/FlexGen, experimental/cost_model.py, cpu_flops, "default value
    /// aligned on google cloud T4"). A fitted figure, not a datasheet one; used for any host without its own.</summary>
    public static HostSpec Default { get; } = new("gcp-t4-host", 0.0123e12,
        "FlexGen cost model (experimental/cost_model.py) cpu_flops = 0.0123 TFLOPS, fitted by FlexGen's authors on their GCP T4 machine");

    public HostSpec Validated()
    {
        if (!(AttentionFlopsPerSecond > 0) || double.IsInfinity(AttentionFlopsPerSecond)) throw new ArgumentException($"host {Name}: attentionGflops must be "
            + "positive");
        return this;
    }
}

/// <summary>Built-in GPUs. Rules, applied alike to every card:
/// <list type="bullet">
/// <item>capacity: the datasheet size in GiB (T4: 15 GiB, the 15360 MiB that nvidia-smi reports of its 16 GB);</item>
/// <item>link: PCIe effective = about 80 % of the x16 theoretical rate, as pinned-memory copies reach
/// (PCIe 3.0: 15.75 GB/s → 12.5; PCIe 4.0: 31.5 → 25; PCIe 5.0: 63 → 50); 10 µs per copy;</item>
/// <item>compute: 70 % of the datasheet dense fp16 tensor-core peak (an assumption typical of large cuBLAS
/// GEMMs on data-centre parts), except the T4, whose 70 W cap keeps clocks far below boost: 21.24 TFLOPS,
/// FlexGen's measured prefill matmul rate on a GCP T4 (33 % of its 65 TFLOPS peak);</item>
/// <item>device memory: 80 % of the datasheet bandwidth (typical of streaming kernels).</item>
/// </list>
/// Datasheets: NVIDIA T4 (65 TFLOPS fp16 tensor, 320 GB/s, PCIe 3.0 x16), RTX A6000 (154.8 TFLOPS dense fp16
/// tensor, 768 GB/s, PCIe 4.0 x16), A100 40 GB PCIe (312 TFLOPS, 1555 GB/s, PCIe 4.0), A100 80 GB SXM (312 TFLOPS,
/// 2039 GB/s, host link PCIe 4.0 x16), H100 SXM5 80 GB (989 TFLOPS dense fp16, 3350 GB/s, host link PCIe 5.0 x16).</summary>
public static class GpuCatalog
{
    const double GB = 1e9, TF = 1e12;
    const long GiB = 1L << 30;
    const double Latency = 10e-6;
    const double ComputeEfficiency = 0.70, MemoryEfficiency = 0.80;
    const double Pcie3 = 12.5 * GB, Pcie4 = 25 * GB, Pcie5 = 50 * GB;

    public static IReadOnlyList<GpuSpec> All { get; } =
    [
        new("t4", "NVIDIA T4 16 GB, PCIe 3.0 x16", 15 * GiB, Pcie3, 21.24 * TF, MemoryEfficiency * 320 * GB, Latency,
            "datasheet: 16 GB GDDR6, 320 GB/s, 65 TFLOPS fp16 tensor, PCIe 3.0 x16; usable 15 GiB (nvidia-smi 15360 MiB); compute = FlexGen's measured "
                + "prefill matmul rate on a GCP T4 (experimental/cost_model.py mm_flops_p); link 80 % of 15.75 GB/s; memory 80 % of datasheet"),
        new("a6000", "NVIDIA RTX A6000 48 GB, PCIe 4.0 x16", 48 * GiB, Pcie4, ComputeEfficiency * 154.8 * TF, MemoryEfficiency * 768 * GB, Latency,
            "datasheet: 48 GB GDDR6, 768 GB/s, 154.8 TFLOPS dense fp16 tensor, PCIe 4.0 x16; effective = 70 % compute, 80 % memory, 80 % link"),
        new("a100-40gb", "NVIDIA A100 40 GB (PCIe), PCIe 4.0 x16", 40 * GiB, Pcie4, ComputeEfficiency * 312 * TF, MemoryEfficiency * 1555 * GB, Latency,
            "datasheet: 40 GB HBM2, 1555 GB/s, 312 TFLOPS dense fp16 tensor, PCIe 4.0 x16; effective = 70 % compute, 80 % memory, 80 % link"),
        new("a100-80gb", "NVIDIA A100 80 GB (SXM4), host link PCIe 4.0 x16", 80 * GiB, Pcie4, ComputeEfficiency * 312 * TF, MemoryEfficiency * 2039 * GB,
            Latency,
            "datasheet: 80 GB HBM2e, 2039 GB/s, 312 TFLOPS dense fp16 tensor, host link PCIe 4.0 x16; effective = 70 % compute, 80 % memory, 80 % link"),
        new("h100-80gb", "NVIDIA H100 80 GB (SXM5), host link PCIe 5.0 x16", 80 * GiB, Pcie5, ComputeEfficiency * 989 * TF, MemoryEfficiency * 3350 * GB,
            Latency,
            "datasheet: 80 GB HBM3, 3350 GB/s, 989 TFLOPS dense fp16 tensor, host link PCIe 5.0 x16; effective = 70 % compute, 80 % memory, 80 % link"),
    ];

    public static GpuSpec? Find(string name) =>
        All.FirstOrDefault(g => string.Equals(g.Name, name.Trim(), StringComparison.OrdinalIgnoreCase));
}
