using Superpipeline.Contracts;
using System.Collections.Immutable;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Models;

namespace Superpipeline.Engine.Simulation;

/// <summary>One pass of a generation: its phase, the cost model it ran on, and what the pass simulator made of it.</summary>
/// <param name="Index">0 for the prefill, t for the t-th decode pass.</param>
/// <param name="PastTokens">Tokens already in the KV cache when the pass starts.</param>
/// <param name="Cost">The model as <see cref="PassSimulator"/> took it: streamed bytes (0 for resident layers) and,
/// as <see cref="LayerCost.Flops"/>, each layer's compute time expressed in FLOPs at the device rate (see
/// <see cref="GenerationSimulator"/>).</param>
/// <param name="Work">The arithmetic behind it, per layer and per micro-batch.</param>
public sealed record GenerationPass(int Index, long PastTokens, long Tokens, ModelCost Cost, ImmutableArray<LayerWork> Work,
    ImmutableArray<double> ComputeSeconds, SimulatedPass Pass)
{
    public string Phase => Index == 0 ? "prefill" : "decode";
}

/// <summary>The simulated generation of one workload under one policy.</summary>
/// <param name="Sequences">Sequences in the job: batch × micro-batches.</param>
/// <param name="TotalSeconds">Prefill and decode passes of every micro-batch, one after another.</param>
/// <param name="PeakDeviceBytes">Highest pass peak plus the bytes resident for the whole job.</param>
/// <param name="FixedDeviceBytes">Bytes resident for the whole job: resident layers' weights and a device KV cache.</param>
/// <param name="Repeats">Times the passes run: the workload's micro-batches for a policy that serves one micro-batch
/// per weight load (each streams the weights itself), 1 for batched.</param>
public sealed record GenerationResult(
    OffloadPolicy Policy,
    string Gate,
    int Sequences,
    long TokensGenerated,
    int Repeats,
    double PrefillSeconds,
    double DecodeSeconds,
    double TotalSeconds,
    double TokensPerSecond,
    long PeakDeviceBytes,
    long FixedDeviceBytes,
    long BytesTransferred,
    string? OutOfMemory,
    ImmutableArray<GenerationPass> Passes)
{
    public bool Fits => OutOfMemory is null;
    public GenerationPass Prefill => Passes[0];
    public GenerationPass? FirstDecode => Passes.Length > 1 ? Passes[1] : null;
}

/// <summary>Simulates generation: G new tokens take G forward passes, a prefill over the prompt (which yields the
/// first token) then G − 1 decode passes of one token each over a growing KV cache, as Hugging Face generate,
/// FlexGen and ZeRO-Inference run and count them. Every pass streams every layer through
/// <see cref="PassSimulator"/> under the policy's <see cref="LoadGate"/> (a fresh gate per pass), and the passes
/// run one after another. Decode passes differ (the cache grows), so each is simulated; none is extrapolated.
///
/// <para>Compute time of a layer, per micro-batch: on the device, the larger of its FLOPs at the device's
/// effective rate and its device-memory traffic at the effective memory bandwidth (decode is memory-bound);
/// plus, with the KV cache on the host, decode attention at the host rate, after the device part (as FlexGen's own
/// cost model adds them). A batched policy (M micro-batches per weight load) multiplies compute and activations by
/// M (activations by 1 when they wait on the host, <see cref="Workload.ActivationsOnHost"/>). The pass simulator takes one
/// compute rate, so each layer's time t reaches it as FLOPs = t × device rate.</para>
///
/// <para>Bytes resident for the whole job (never streamed, loaded before the job starts as the published
/// benchmarks exclude loading): resident layers, every layer under the resident policy, and a device KV cache
/// preallocated at prompt + generated tokens for every sequence served at once. They are added to each pass's
/// peak and checked against the capacity. Not modelled: device→host copies (a full-duplex link: the KV write-back
/// of a host cache overlaps the loads), transient workspace inside a layer (attention scores, MLP intermediate),
/// dequantization cost, and overlap between one pass's tail and the next pass's first load.</para></summary>
public static class GenerationSimulator
{
    public static GenerationResult Run(SimulationSpec spec, OffloadPolicy policy)
    {
        spec.Validated();
        var model = spec.Model;
        var w = spec.Workload;
        var gpu = spec.Gpu;
        var device = gpu.ToDeviceCost();
        int n = model.Layers + 2;
        int m = policy.SharedMicroBatches;
        int repeats = policy.Kind == PolicyKind.Batched ? 1 : w.MicroBatches;
        int sequences = policy.Kind == PolicyKind.Batched ? w.Batch * m : w.Batch * w.MicroBatches;
        bool kvOnDevice = w.Kv == KvPlacement.Device;
        int onDevice = w.ActivationsOnHost ? 1 : m; // micro-batches whose activations the device holds

        var streamed = spec.Streamed();
        var resident = policy.Kind == PolicyKind.Resident ? Enumerable.Range(0, n).ToHashSet() : w.ResidentSet(n);
        long[] passBytes = [.. streamed.Select((b, i) => resident.Contains(i) ? 0 : b)];
        long fixedBytes = resident.Sum(i => streamed[i])
            + (kvOnDevice ? model.Layers * model.KvBytesPerBlock((long)w.Batch * m, (long)w.Prompt + w.Generate) : 0);

        var passes = ImmutableArray.CreateBuilder<GenerationPass>(w.Generate);
        for (int t = 0; t < w.Generate; t++)
        {
            long tokens = t == 0 ? w.Prompt : 1;
            long past = t == 0 ? 0 : w.Prompt + t - 1;
            var work = model.Work(spec.Format, w.Batch, tokens, past, kvOnDevice);
            var seconds = work.Select(l => m * LayerSeconds(l, gpu, spec.Host)).ToImmutableArray();
            var layers = work.Select((l, i) => new LayerCost(l.Name, passBytes[i], seconds[i] * device.FlopsPerSecond, onDevice * l.OutputBytes));
            var name = $"{model.Name} {(t == 0 ? "prefill" : $"decode {t}")}";
            var cost = new ModelCost(name, onDevice * TransformerShape.InputBytes(w.Batch, tokens), [.. layers]);
            var pass = PassSimulator.Run(cost, device, policy.CreateGate(passBytes));
            passes.Add(new GenerationPass(t, past, tokens, cost, work, seconds, pass));
        }
        var all = passes.MoveToImmutable();

        double prefill = repeats * all[0].Pass.MakespanSeconds;
        double decode = repeats * all.Skip(1).Sum(p => p.Pass.MakespanSeconds);
        double total = prefill + decode;
        long tokensGenerated = (long)sequences * w.Generate;
        long peak = all.Max(p => p.Pass.PeakDeviceBytes) + fixedBytes;
        string? oom = peak > gpu.CapacityBytes
            ? $"device {gpu.Name} out of memory: {ByteSize.Format(peak)} needed ({ByteSize.Format(fixedBytes)} resident for the job + "
              + $"{ByteSize.Format(peak - fixedBytes)} peak of a pass), {ByteSize.Format(gpu.CapacityBytes)} available"
            : null;
        return new GenerationResult(policy, all[0].Pass.Policy, sequences, tokensGenerated, repeats, prefill, decode, total,
            tokensGenerated / total, peak, fixedBytes, repeats * all.Sum(p => p.Pass.BytesTransferred), oom, all);
    }

    /// <summary>Simulates a generation of a layered model (the engine's own passes, as <c>generate</c> runs them) under a window
    /// policy with pinned layers: the prefill pass loads every layer, the pinned ones included, through <see cref="PassSimulator"/>;
    /// a decode pass finds the pinned layers on the device (warm) and streams the rest under the same gate. Decode passes cost
    /// alike in this model (<see cref="Layer.Flops"/> does not grow with the cache), so one is simulated and counted
    /// <see cref="GenerationShape.NewTokens"/> − 1 times. Compute time is FLOPs at <see cref="DeviceCost.FlopsPerSecond"/>: calibrate
    /// it on decode passes (memory-bound on a CPU) for decode figures. Not modelled: the KV write-back of a host cache (a
    /// full-duplex link) and a pinned layer's host cache brought in each decode pass.</summary>
    public static GenerationEstimate Estimate(GenerationCosts costs, DeviceCost device, PolicySpec spec)
    {
        int n = costs.Decode.Layers.Length;
        var policy = OffloadPolicy.For(spec, n);
        var pinned = policy.PinnedSet(n);
        long[] prefillBytes = [.. costs.Prefill.Layers.Select(l => l.Bytes)];
        long[] decodeBytes = [.. costs.Decode.Layers.Select(l => l.Bytes)];
        var prefill = PassSimulator.Run(costs.Prefill, device, policy.CreateGate(prefillBytes, pinned));
        var decode = PassSimulator.Run(costs.Decode, device, policy.CreateGate(decodeBytes, pinned), pinned);
        int decodePasses = costs.Shape.NewTokens - 1;
        long need = Planner.PinnedNeedBytes(costs.Decode, policy) - costs.Decode.ActivationBoundBytes() + costs.ActivationBoundBytes
            + costs.FixedDeviceBytes;
        return new GenerationEstimate(spec, prefill.MakespanSeconds, decode.MakespanSeconds, decodePasses,
            costs.Shape.Batch / decode.MakespanSeconds, Math.Max(prefill.PeakDeviceBytes, decode.PeakDeviceBytes) + costs.FixedDeviceBytes, need,
            prefill.BytesTransferred + decodePasses * decode.BytesTransferred);
    }

    /// <summary>Seconds one layer computes for one micro-batch: device time (compute- or memory-bound) plus host attention.</summary>
    public static double LayerSeconds(LayerWork l, GpuSpec gpu, HostSpec host) =>
        Math.Max(l.DeviceFlops / gpu.FlopsPerSecond, l.DeviceTrafficBytes / gpu.MemoryBytesPerSecond)
        + l.HostFlops / host.AttentionFlopsPerSecond;
}

/// <summary>What a generation of a layered model is asked to do, for <see cref="GenerationSimulator.Estimate"/> and
/// <see cref="Planner.ChooseForGeneration"/>: <see cref="Batch"/> rows, a prompt of <see cref="Prompt"/> tokens (the padded
/// length), <see cref="NewTokens"/> new tokens, and where the KV caches live.</summary>
public sealed record GenerationShape(int Batch, int Prompt, int NewTokens, KvPlacement Kv = KvPlacement.Device)
{
    /// <summary>Tokens each layer's KV cache holds at the end: prompt + new tokens (the session allocates them at once).</summary>
    public long Capacity => (long)Prompt + NewTokens;

    public GenerationShape Validated()
    {
        if (Batch < 1) throw new ArgumentException($"the batch must be at least 1; got {Batch}");
        if (Prompt < 1) throw new ArgumentException($"the prompt must hold at least 1 token; got {Prompt}");
        if (NewTokens < 1) throw new ArgumentException($"the new tokens must be at least 1; got {NewTokens}");
        return this;
    }
}

/// <summary>The cost model of one generation of a layered model: its prefill pass ([batch, prompt] tokens) and a decode pass
/// ([batch, 1]), each a <see cref="ModelCost"/> from the layers' own <see cref="Layer.Flops"/>, output shapes and workspace, and each
/// layer's KV bytes at the session's capacity (<see cref="GenerationShape.Capacity"/>).</summary>
/// <param name="KvBytes">Per layer, K and V at the capacity (0 for a layer without a cache).</param>
public sealed record GenerationCosts(GenerationShape Shape, ModelCost Prefill, ModelCost Decode, ImmutableArray<long> KvBytes)
{
    /// <summary>Bytes of every layer's KV cache: on the device for the whole job under <see cref="KvPlacement.Device"/>.</summary>
    public long TotalKvBytes => KvBytes.Sum();

    /// <summary>Bytes the device holds for the whole job besides the passes: the KV caches under device placement, else 0.</summary>
    public long FixedDeviceBytes => Shape.Kv == KvPlacement.Device ? TotalKvBytes : 0;

    public static GenerationCosts Of(LayeredModel model, GenerationShape shape)
    {
        shape.Validated();
        ImmutableArray<long> kv = [.. model.Layers.Select(l => l.Kv?.Bytes(shape.Batch, shape.Capacity) ?? 0)];
        // Under host placement a streamed layer brings its cache in with its weights; a device cache stays apart (fixed bytes).
        long[] extra = [.. kv.Select(b => shape.Kv == KvPlacement.Host ? b : 0)];
        return new GenerationCosts(shape, CostAt(model, shape.Batch, shape.Prompt, extra, "prefill"), CostAt(model, shape.Batch, 1, extra, "decode"), kv);
    }

    static ModelCost CostAt(LayeredModel model, long batch, long tokens, long[] extraBytes, string phase)
    {
        long[] shape = [batch, tokens];
        var dtype = model.InputDType;
        long input = TensorBytes.Of(shape, dtype);
        var layers = ImmutableArray.CreateBuilder<LayerCost>(model.Layers.Count);
        foreach (var l in model.Layers)
        {
            long[] output = l.OutputShape(shape);
            var outputType = l.OutputDType(dtype);
            layers.Add(new LayerCost(l.Name, l.Bytes + extraBytes[l.Index], l.Flops(shape), TensorBytes.Of(output, outputType), l.WorkspaceBytes(shape)));
            (shape, dtype) = (output, outputType);
        }
        return new ModelCost($"{model.Name} {phase}", input, layers.MoveToImmutable());
    }

    /// <summary>Most bytes besides weights live at once in either phase (<see cref="ModelCost.ActivationBoundBytes"/>).</summary>
    public long ActivationBoundBytes => Math.Max(Prefill.ActivationBoundBytes(), Decode.ActivationBoundBytes());
}

/// <summary>A generation of a layered model as <see cref="GenerationSimulator.Estimate"/> predicts it.</summary>
/// <param name="PrefillSeconds">The prefill pass: every layer loads, the pinned ones included (they stay).</param>
/// <param name="DecodePassSeconds">One decode pass: the pinned layers are already on the device, the others stream.</param>
/// <param name="DecodeTokensPerSecond">Batch ÷ <paramref name="DecodePassSeconds"/>, as the session counts decode tokens/s.</param>
/// <param name="PeakDeviceBytes">The larger pass peak plus <see cref="GenerationCosts.FixedDeviceBytes"/>.</param>
/// <param name="NeedBytes">The timing-independent bound the planner fits to the device: the pinned layers, the window's largest
/// streamed layers, the activations of either phase (<see cref="Planner.PinnedNeedBytes"/>) and the device KV caches.</param>
/// <param name="BytesTransferred">Weights (and host KV caches) moved by the prefill and every decode pass.</param>
public sealed record GenerationEstimate(PolicySpec Policy, double PrefillSeconds, double DecodePassSeconds, int DecodePasses,
    double DecodeTokensPerSecond, long PeakDeviceBytes, long NeedBytes, long BytesTransferred)
{
    public bool FitsIn(long capacityBytes) => NeedBytes <= capacityBytes && PeakDeviceBytes <= capacityBytes;
}
