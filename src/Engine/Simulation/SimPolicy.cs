using System.Globalization;
using Superpipeline.Engine.Policy;
using Superpipeline.Contracts;

namespace Superpipeline.Engine.Simulation;

/// <summary>The peer policies the simulator compares.</summary>
public enum PolicyKind
{
    /// <summary>Layer by layer, load then compute, nothing ahead: HF Accelerate's cpu_offload (window 1, swap 1).</summary>
    Synchronous,
    /// <summary>Superpipeline's (k, k').</summary>
    Window,
    /// <summary>Every layer on the device for the whole job (loaded before it starts): the no-offload baseline.</summary>
    Resident,
    /// <summary>DeepSpeed ZeRO-Inference style live-parameter and prefetch budgets in bytes.</summary>
    ByteBudget,
    /// <summary>FlexGen style: a window (k, k') where each weight load serves several micro-batches.</summary>
    Batched,
}

/// <summary>A policy for the generation simulator, parsed from <c>sync</c>, <c>resident</c>, <c>window:K:K'</c>,
/// <c>bytes:LIVE:PREFETCH</c> or <c>batched:K:K':M</c>.</summary>
public sealed record SimPolicy(PolicyKind Kind, int Window, int Swap, long LiveBytes, long PrefetchBytes, int MicroBatches)
{
    public const string Grammar = "sync, resident, window:K:K', bytes:LIVE:PREFETCH (sizes like 2GiB) or batched:K:K':M";

    public static SimPolicy Synchronous { get; } = new(PolicyKind.Synchronous, 1, 1, 0, 0, 1);
    public static SimPolicy Resident { get; } = new(PolicyKind.Resident, 0, 0, 0, 0, 1);
    public static SimPolicy WindowOf(int k, int kPrime) => new(PolicyKind.Window, k, kPrime, 0, 0, 1);
    public static SimPolicy BytesOf(long live, long prefetch) => new(PolicyKind.ByteBudget, 0, 0, live, prefetch, 1);
    public static SimPolicy BatchedOf(int k, int kPrime, int microBatches) => new(PolicyKind.Batched, k, kPrime, 0, 0, microBatches);

    /// <summary>Micro-batches that share one weight load: M for batched, 1 otherwise.</summary>
    public int SharedMicroBatches => Kind == PolicyKind.Batched ? MicroBatches : 1;

    /// <summary>Parses the policy text; throws a <see cref="FieldException"/> naming <paramref name="field"/> (the spec's
    /// field the text came from: policy, or compare[i]) and the grammar.</summary>
    public static SimPolicy Parse(string text, string field = FieldException.Policy)
    {
        var t = (text ?? "").Trim();
        var parts = t.Split(':');
        FieldException Bad(string why) => new(field, $"'{text}' {why}; expected {Grammar}");
        int Int(string s, string knob)
        {
            if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v))
                throw Bad($"has {knob} '{s}', not a whole number");
            if (v < 1) throw Bad($"has {knob} {v}, below 1");
            return v;
        }
        long ParseSize(string s, string budget)
        {
            try { return ByteSize.Parse(s, budget); }
            catch (ArgumentException e) { throw new FieldException(field, $"'{text}': {e.Message}"); }
        }
        switch (parts[0].ToLowerInvariant())
        {
            case "sync" or "synchronous" when parts.Length == 1:
                return Synchronous;
            case "resident" when parts.Length == 1:
            case "window" when parts.Length == 2 && parts[1].Equals("all", StringComparison.OrdinalIgnoreCase):
                return Resident;
            case "window" when parts.Length == 3:
            {
                int k = Int(parts[1], "k"), s = Int(parts[2], "k'");
                if (s > k) throw Bad($"has k' = {s} above k = {k}");
                return WindowOf(k, s);
            }
            case "bytes" when parts.Length == 3:
            {
                long live = ParseSize(parts[1], "live budget");
                long prefetch = parts[2].Trim() == "0" ? 0 : ParseSize(parts[2], "prefetch budget");
                return BytesOf(live, prefetch);
            }
            case "batched" when parts.Length == 4:
            {
                int k = Int(parts[1], "k"), s = Int(parts[2], "k'"), m = Int(parts[3], "micro-batches M");
                if (s > k) throw Bad($"has k' = {s} above k = {k}");
                return BatchedOf(k, s, m);
            }
            default:
                throw Bad("is not a policy");
        }
    }

    /// <summary>The gate for a model of <paramref name="layerBytes"/>; throws naming the policy when it does not fit the model.</summary>
    public LoadGate CreateGate(IReadOnlyList<long> layerBytes)
    {
        int n = layerBytes.Count;
        switch (Kind)
        {
            case PolicyKind.Synchronous:
                return new WindowGate(StreamPolicy.Create(new PolicySpec(1, 1), n), layerBytes);
            case PolicyKind.Resident:
                return new WindowGate(StreamPolicy.Create(PolicySpec.Resident, n), layerBytes);
            case PolicyKind.Window or PolicyKind.Batched:
                if (Window > n) throw new FieldException(FieldException.Policy, $"{this}: k = {Window} is above the model's {n} streamed layers");
                return new WindowGate(StreamPolicy.Create(new PolicySpec(Window, Swap), n), layerBytes);
            default:
                try { return new ByteBudgetGate(LiveBytes, PrefetchBytes, layerBytes); }
                catch (ArgumentException e) { throw new FieldException(FieldException.Policy, $"{this}: {e.Message}"); }
        }
    }

    /// <summary>The canonical text, which <see cref="Parse"/> reads back.</summary>
    public override string ToString() => Kind switch
    {
        PolicyKind.Synchronous => "sync",
        PolicyKind.Resident => "resident",
        PolicyKind.Window => $"window:{Window}:{Swap}",
        PolicyKind.ByteBudget => $"bytes:{LiveBytes}:{PrefetchBytes}",
        _ => $"batched:{Window}:{Swap}:{MicroBatches}",
    };

    /// <summary>For people: "window 2/1", "bytes live 1.2 GiB / prefetch 400 MiB", "batched 2/1 × 3 micro-batches".</summary>
    public string Describe() => Kind switch
    {
        PolicyKind.Synchronous => "synchronous (window 1/1)",
        PolicyKind.Resident => "resident (all layers)",
        PolicyKind.Window => $"window {Window}/{Swap}",
        PolicyKind.ByteBudget => $"bytes live {ByteSize.Format(LiveBytes)} / prefetch {ByteSize.Format(PrefetchBytes)}",
        _ => $"batched {Window}/{Swap} × {MicroBatches}",
    };
}
