using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Engine.Simulation;
using Superpipeline.Engine;
using Superpipeline.Engine.Models;
using Superpipeline.Messages;
using static Superpipeline.Messages.JobProtocol;
using static TorchSharp.torch;

namespace Superpipeline.Coordinator.Bench;

/// <summary>What every bench of the engine shares: passes through an embedded host exactly as <c>run</c> submits them,
/// a block's compute time (to which an emulated link is matched), the device capacity a resident pass needs, and
/// where the bench ran. Benches call this harness, never each other.</summary>
public static class BenchHarness
{
    /// <summary>Where the bench ran.</summary>
    public static MachineInfo Machine(int torchThreads) =>
        new(Environment.ProcessorCount, RuntimeInformation.OSDescription, RuntimeInformation.FrameworkDescription, torchThreads);

    /// <summary>Room for the resident pass (every layer, the input and the two live activations) with a margin.</summary>
    public static long CapacityFor(LayeredModel model)
    {
        long need = model.Bytes + ModelCost.From(model).ActivationBoundBytes() + TensorBytes.Of(model.InputShape, model.InputDType);
        const long mib = 1L << 20;
        return (need * 5 / 4 + mib - 1) / mib * mib;
    }

    public static string Describe(ModelSpec s, LayeredModel m) =>
        $"{m.Layers.Count} layers ({s.Blocks} blocks + embeddings + head), hidden {s.Hidden}, heads {s.Heads}, vocab {s.Vocab}, " +
        $"batch {s.Batch} × sequence {s.Sequence}, {m.Bytes:N0} bytes";

    /// <summary>One pass through the engine, exactly as <c>superpipeline run</c> submits it.</summary>
    public static async Task<EngineRun> EnginePassAsync(EmbeddedHost host, ModelSpec spec, PolicySpec policy, CancellationToken cancel)
    {
        cancel.ThrowIfCancellationRequested();
        var faults = MinorFaults();
        var answer = await host.RunAsync(new SubmitJob(JobId.New(), spec, policy));
        faults = MinorFaults() - faults;
        if (answer is JobFailed failed) throw new InvalidOperationException($"bench: the engine pass ({policy}) failed: {failed.Reason}");
        var ok = (JobSucceeded)answer;
        return new EngineRun(ok.Report, Convert.ToHexStringLower(SHA256.HashData(ok.Output.Bytes.AsSpan())), faults);
    }

    /// <summary>The process's minor page faults so far (Linux, from /proc/self/stat), or null where unavailable:
    /// a diagnostic for passes whose compute is slowed by freshly mapped memory.</summary>
    public static long? MinorFaults()
    {
        try
        {
            if (!OperatingSystem.IsLinux()) return null;
            var stat = File.ReadAllText("/proc/self/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return long.Parse(fields[7], CultureInfo.InvariantCulture); // field 10 (minflt); fields[0] is field 3
        }
        catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException or IndexOutOfRangeException)
        {
            return null;
        }
    }

    /// <summary>A block's compute time as the engine times it inside a streamed pass (window 3, swap 1, no link emulation):
    /// the median over every block of two passes. That is what the link is matched to. For reference, also the median of
    /// the first block run alone, repeatedly, on the device's compute thread (its weights stay hot in cache, so it is faster).</summary>
    public static async Task<BlockCost> MeasureBlockAsync(EmbeddedHost host, ModelSpec spec, LayeredModel model, int count, TextWriter log,
        CancellationToken cancel)
    {
        var inPass = new List<double>();
        for (int i = 0; i < 2; i++)
        {
            var run = await EnginePassAsync(host, spec, new PolicySpec(3, 1), cancel);
            inPass.AddRange(Enumerable.Range(1, spec.Blocks).Select(b => run.Report.LayerTimings[b].ComputeSeconds));
        }
        var device = host.Device;
        var source = ModelCatalog.Weights(spec);
        var embed = model.Layers[0];
        var block = model.Layers[1];
        var times = await device.OnComputeThread(() =>
        {
            var ew = source.Load(embed);
            var bw = source.Load(block);
            using var input = model.MakeInput(spec.Seed);
            Tensor x;
            {
                using var scope = NewDisposeScope();
                using var _ = inference_mode();
                x = embed.Forward(ew, input).MoveToOuterDisposeScope();
            }
            try
            {
                var list = new List<double>();
                for (int i = 0; i < count + 3; i++)
                {
                    long start = Stopwatch.GetTimestamp();
                    {
                        using var scope = NewDisposeScope();
                        using var _ = inference_mode();
                        block.Forward(bw, x);
                    }
                    if (i >= 3) list.Add(Stopwatch.GetElapsedTime(start).TotalSeconds);
                }
                return list;
            }
            finally
            {
                x.Dispose();
                foreach (var t in ew.Values.Concat(bw.Values)) t.Dispose();
            }
        });
        var cost = new BlockCost(block.Index, block.Name, block.Bytes, inPass, Stats.Median(inPass), times, Stats.Median(times));
        log.WriteLine($"bench (b): one block ({block.Bytes:N0} bytes) computes in {cost.MedianSeconds * 1e3:0.00} ms in a streamed pass " +
            $"(median of {inPass.Count}); alone, {cost.IsolatedMedianSeconds * 1e3:0.00} ms (median of {count})");
        return cost;
    }
}

/// <summary>One engine pass: its report, the output's SHA-256, and the process's minor page faults during it (null off Linux).</summary>
public sealed record EngineRun(PassReport Report, string Sha256, long? MinorFaults);

/// <summary>A block's compute seconds inside streamed passes (their median sets a matched link) and, for reference, alone.</summary>
public sealed record BlockCost(int Layer, string Name, long Bytes, IReadOnlyList<double> ComputeSeconds, double MedianSeconds,
    IReadOnlyList<double> IsolatedSeconds, double IsolatedMedianSeconds);

/// <summary>Where the bench ran.</summary>
public sealed record MachineInfo(int Cores, string Os, string Runtime, int TorchThreads);

/// <summary>The bench model's shape and sizes.</summary>
public sealed record ModelShape(string Name, int Layers, int Blocks, int Hidden, int Heads, int Vocab, int Sequence, int Batch, long Seed,
    long ModelBytes, long BlockBytes, long EmbeddingBytes, long HeadBytes)
{
    public static ModelShape Of(ModelSpec s, LayeredModel m) => new(s.Name, m.Layers.Count, s.Blocks, s.Hidden, s.Heads, s.Vocab, s.Sequence, s.Batch, s.Seed,
        m.Bytes, m.Layers[1].Bytes, m.Layers[0].Bytes, m.Layers[^1].Bytes);
}
