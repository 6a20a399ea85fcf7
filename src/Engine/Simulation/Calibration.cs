using Superpipeline.Engine.Models;
using System.Collections.Immutable;
using Superpipeline.Engine.Policy;

namespace Superpipeline.Engine.Simulation;

/// <summary>A published throughput and the spec that describes its experiment.</summary>
/// <param name="System">The system measured (FlexGen, HF Accelerate, DeepSpeed ZeRO-Inference).</param>
/// <param name="Source">Where the published figure is.</param>
/// <param name="Inputs">Every input and why it was chosen.</param>
public sealed record CalibrationCase(string System, string Source, double PublishedTokensPerSecond, SimulationSpec Spec, ImmutableArray<string> Inputs);

/// <summary>A calibration case simulated: predicted against published.</summary>
public sealed record CalibrationRow(CalibrationCase Case, GenerationResult Result)
{
    public double PredictedTokensPerSecond => Result.TokensPerSecond;
    /// <summary>(predicted − published) ÷ published, in per cent.</summary>
    public double ErrorPercent => (PredictedTokensPerSecond - Case.PublishedTokensPerSecond) / Case.PublishedTokensPerSecond * 100;
    public bool WithinGoal => Math.Abs(ErrorPercent) <= Calibration.GoalPercent;
}

/// <summary>Calibration against published figures. Hardware figures come from <see cref="GpuCatalog"/> (datasheet
/// peaks and stated efficiencies) and are not adjusted per case; workloads and policies are the ones the
/// published runs used (their scripts are cited). Nothing here is tuned to the published numbers.</summary>
public static class Calibration
{
    public const double GoalPercent = 25;

    static readonly TransformerShape Opt30b = ModelCatalog.FindShape("opt-30b")!;
    static readonly GpuSpec T4 = GpuCatalog.Find("t4")!, A6000 = GpuCatalog.Find("a6000")!;

    const string FlexGenTable = "FlexGen paper (Sheng et al., ICML 2023) table 2 and FlexGen repo benchmark/batch_size_table.md: OPT-30B on one T4 16 GB "
        + "(GCP, 208 GB DRAM, PCIe 3.0), prompt 512, generate 32";
    const string ZeroTable = "DeepSpeedExamples inference/huggingface/zero_inference/README.md, comparison table: OPT-30B on one RTX A6000 48 GB (252 GB "
        + "host memory), prompt 512, generate 32, 4-bit weights, KV cache not offloaded, bsz 24";

    static readonly string T4Hardware = $"GPU t4: {T4}";
    static readonly string A6000Hardware = $"GPU a6000: {A6000}";
    const string Throughput = "throughput = batch × 32 tokens ÷ (prefill + 31 decode passes), as FlexGen's and ZeRO-Inference's scripts compute it";

    public static ImmutableArray<CalibrationCase> Cases { get; } = Build();

    static ImmutableArray<CalibrationCase> Build()
    {
        int n = Opt30b.Layers + 2;
        long h2 = (long)Opt30b.Hidden * Opt30b.Hidden;

        var accelerate = new SimulationSpec("calib-accelerate-opt30b-t4", Opt30b, WeightFormat.Fp16, T4, HostSpec.Default,
            new Workload(Batch: 8, Prompt: 512, Generate: 32, Kv: KvPlacement.Device, ResidentLayers: [0, n - 1]),
            OffloadPolicy.Synchronous, [], "HF Accelerate cpu_offload baseline of the FlexGen paper").Validated();

        int flexResident = (int)Math.Round(0.20 * n);
        var flexgen = new SimulationSpec("calib-flexgen-opt30b-t4", Opt30b, WeightFormat.Fp16, T4, HostSpec.Default,
            new Workload(Batch: 48, Prompt: 512, Generate: 32, MicroBatches: 3, Kv: KvPlacement.Host, ResidentCount: flexResident, ActivationsOnHost: true),
            OffloadPolicy.BatchedOf(2, 1, 3), [], "FlexGen, fp16, no compression").Validated();

        var deepspeedT4 = new SimulationSpec("calib-deepspeed-opt30b-t4", Opt30b, WeightFormat.Fp16, T4, HostSpec.Default,
            new Workload(Batch: 4, Prompt: 512, Generate: 32, Kv: KvPlacement.Device),
            OffloadPolicy.BytesOf(1_000_000_000L * 2, h2 * 2), [], "DeepSpeed ZeRO-Inference baseline of the FlexGen paper").Validated();

        long zeroBudget = (long)(2 * h2 * WeightFormat.Int4.MatrixBytesPerParam);
        long int4Largest = Math.Max(Opt30b.BlockBytes(WeightFormat.Int4), Math.Max(Opt30b.EmbeddingBytes(WeightFormat.Int4),
            Opt30b.HeadBytes(WeightFormat.Int4)));
        var zeroWorkload = new Workload(Batch: 24, Prompt: 512, Generate: 32, Kv: KvPlacement.Device);
        var zero = new SimulationSpec("calib-zero-inference-opt30b-a6000", Opt30b, WeightFormat.Int4, A6000, HostSpec.Default,
            zeroWorkload, OffloadPolicy.BytesOf(Math.Max(zeroBudget, int4Largest), zeroBudget), [], "ZeRO-Inference, 4-bit weights, KV cache on the "
                + "GPU").Validated();

        return
        [
            new("HF Accelerate", FlexGenTable + "; batch from benchmark/hf_ds/bench_hf.py (opt-30b, hf, 512, 32, batch 8, cpu)", 0.62, accelerate,
            [
                "policy sync (window 1/1): Accelerate's cpu_offload hooks copy each module's weights to the GPU just before it runs and free them after",
                "fp16 weights, batch 8 (the batch the FlexGen authors tuned for Accelerate, bench_hf.py)",
                "resident layers 0 and 49: the device map in benchmark/hf/hf_opt.py keeps embed_tokens, embed_positions and lm_head on the GPU",
                "KV cache on the GPU (Hugging Face generate keeps past_key_values on the device)",
                T4Hardware, "link 12.5 GB/s assumes pinned copies; Accelerate copies from ordinary (pageable) host memory, one tensor at a time, which this "
                    + "model does not capture",
                Throughput,
            ]),
            new("FlexGen", FlexGenTable + "; policy from benchmark/flexgen/bench_suite.py (--percent 20 80 0 100 0 100 --gpu-batch-size 48 --num-gpu-batches "
                + "3 --cpu)", 7.32, flexgen,
            [
                "policy batched 2/1 × 3: FlexGen's block schedule loads each layer once for 3 GPU batches of 48 (effective batch 144) and prefetches the "
                    + "next layer while computing (window 2, swap 1)",
                $"resident layers: {flexResident} of {n} spread evenly = FlexGen's 20 % of weights on the GPU (--percent 20 80), at layer granularity",
                "KV cache on the host with decode attention on the CPU (--percent … 0 100 and --cpu, i.e. cpu-cache-compute); prefill attention on the GPU",
                "activations on the host (--percent … 0 100): the device holds one micro-batch's hidden states at a time; their copies are not timed "
                    + "(2·h·batch bytes per layer per decode step; about 4 % of prefill compute)",
                T4Hardware,
                $"host attention {HostSpec.Default.AttentionFlopsPerSecond / 1e9:0.#} GFLOPS: {HostSpec.Default.Source} — the one fitted figure here, not a "
                    + "datasheet one",
                Throughput,
            ]),
            new("DeepSpeed ZeRO-Inference (T4)", FlexGenTable + "; batch from benchmark/hf_ds/bench_hf.py (opt-30b, ds, 512, 32, batch 4, cpu)", 0.60,
                deepspeedT4,
            [
                "policy bytes: live 2 GB = DeepSpeed's default stage3_max_live_parameters 1e9 × 2 B; prefetch 102.8 MB = stage3_prefetch_bucket_size hidden² "
                    + "(hf_opt.py) × 2 B, below one layer, so no layer loads ahead: synchronous at layer granularity",
                "fp16 weights, batch 4, KV cache on the GPU, pinned host memory (hf_opt.py --pin-memory 1)",
                T4Hardware,
                Throughput,
            ]),
            new("DeepSpeed ZeRO-Inference", ZeroTable + "; script run_opt30b_a6000.sh (--batch-size 24 --cpu-offload --pin-memory 1 --quant_bit 4)", 21.84,
                zero,
            [
                $"policy bytes: live = prefetch = stage3_max_live_parameters = stage3_prefetch_bucket_size = 2·hidden² parameters (run_model.py) × 0.5625 B "
                    + $"= {ByteSize.Format(zeroBudget)}; below one layer ({ByteSize.Format(int4Largest)}), so the live budget is raised to one layer (the "
                        + "gate works per layer; DeepSpeed per sub-module) and nothing loads ahead: "
                    + "at layer granularity this is the synchronous policy (window 1/1), which simulates to the same figure",
                "int4 weights with fp16 scale and zero per group of 64 (quant_bits 4, group size 64, asymmetric): 0.5625 B per weight, moved over PCIe in 4 "
                    + "bits; dequantization cost not modelled",
                "batch 24, KV cache on the GPU, pinned host memory (--pin-memory 1)",
                A6000Hardware,
                Throughput,
            ]),
        ];
    }

    /// <summary>Simulates every case under its own policy.</summary>
    public static ImmutableArray<CalibrationRow> Run() =>
        [.. Cases.Select(c => new CalibrationRow(c, GenerationSimulator.Run(c.Spec, c.Spec.Policy)))];
}
