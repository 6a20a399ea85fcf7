using System.Collections.Immutable;
using System.Globalization;
using Superpipeline.Contracts;

namespace Superpipeline.Engine.Policy;

/// <summary>The peer policies an offload can follow.</summary>
public enum PolicyKind
{
    /// <summary>Layer by layer, load then compute, nothing ahead: HF Accelerate's cpu_offload (window 1, swap 1).</summary>
    Synchronous,
    /// <summary>Superpipeline's (k, k').</summary>
    Window,
    /// <summary>Every layer on the device (window = all): the no-offload baseline.</summary>
    Resident,
    /// <summary>DeepSpeed ZeRO-Inference style live-parameter and prefetch budgets in bytes.</summary>
    ByteBudget,
    /// <summary>FlexGen style: a window (k, k') where each weight load serves several micro-batches.</summary>
    Batched,
}

/// <summary>One offload policy with every knob, frozen (FlexGen keeps its knobs in one Policy the same way): the paper's
/// k = <see cref="Window"/> layers resident at once and k' = <see cref="Swap"/> layers evicted together, or a peer's
/// (synchronous, byte budgets, batched). Engine passes run it from a job's <see cref="PolicySpec"/> checked against a
/// model (<see cref="For"/>: 1 ≤ k' ≤ k ≤ layers, window = all resolved to the model's layers); the simulator also reads it
/// from text (<see cref="Parse"/>). Every path turns it into the same <see cref="LoadGate"/> (<see cref="CreateGate"/>).</summary>
/// <param name="Window">k; for <see cref="PolicyKind.Resident"/> the model's layers once resolved against a model (0 before).</param>
/// <param name="Swap">k'; as <paramref name="Window"/> for resident.</param>
/// <param name="LiveBytes">Byte-budget policy: most parameter bytes resident.</param>
/// <param name="PrefetchBytes">Byte-budget policy: most parameter bytes loaded ahead of the compute.</param>
/// <param name="MicroBatches">Batched policy: micro-batches one weight load serves.</param>
public sealed record OffloadPolicy(PolicyKind Kind, int Window, int Swap, long LiveBytes, long PrefetchBytes, int MicroBatches)
{
    public const string Grammar = "sync, resident, window:K:K', bytes:LIVE:PREFETCH (sizes like 2GiB) or batched:K:K':M";

    public static OffloadPolicy Synchronous { get; } = new(PolicyKind.Synchronous, 1, 1, 0, 0, 1);
    /// <summary>Window = all, not yet resolved against a model.</summary>
    public static OffloadPolicy Resident { get; } = new(PolicyKind.Resident, 0, 0, 0, 0, 1);
    public static OffloadPolicy WindowOf(int k, int kPrime) => new(PolicyKind.Window, k, kPrime, 0, 0, 1);
    public static OffloadPolicy BytesOf(long live, long prefetch) => new(PolicyKind.ByteBudget, 0, 0, live, prefetch, 1);
    public static OffloadPolicy BatchedOf(int k, int kPrime, int microBatches) => new(PolicyKind.Batched, k, kPrime, 0, 0, microBatches);

    /// <summary>True for window = all: every layer resident, the no-offload baseline.</summary>
    public bool IsResident => Kind == PolicyKind.Resident;

    /// <summary>k − k': layers loaded ahead while a swap group is in transfer.</summary>
    public int PrefetchDepth => Window - Swap;

    /// <summary>Micro-batches that share one weight load: M for batched, 1 otherwise.</summary>
    public int SharedMicroBatches => Kind == PolicyKind.Batched ? MicroBatches : 1;

    /// <summary>Layers pinned on the device for the whole job beside a window (<c>PolicySpec.ResidentLayers</c>): loaded once,
    /// never evicted, outside the k slots; which ones is <see cref="PinnedSet"/>. Resident (window all) pins every layer.</summary>
    public int Pinned { get; init; }

    /// <summary>The pinned layers of a model of <paramref name="layers"/> layers: all of them under window = all, else
    /// <see cref="Pinned"/> spread by <see cref="PinnedLayers.Spread"/>.</summary>
    public ImmutableSortedSet<int> PinnedSet(int layers) => IsResident ? PinnedLayers.All(layers) : PinnedLayers.Spread(Pinned, layers);

    /// <summary>The window policy a job asks for (<paramref name="spec"/>), checked for a model of <paramref name="layers"/>
    /// layers; throws a <see cref="FieldException"/> naming the knob (window or swap) and its valid range.</summary>
    public static OffloadPolicy For(PolicySpec spec, int layers)
    {
        if (layers < 1) throw new ArgumentException("the model has no layers");
        if (spec.Auto) throw new FieldException(FieldException.Window, "auto must be planned before it is run");
        bool resident = spec.Window is null;
        int window = spec.Window ?? layers;
        if (window < 1 || window > layers)
            throw new FieldException(FieldException.Window, $"must be from 1 to {layers} (the model's layers) or 'all'; got {window}");
        int swap = spec.Swap ?? (resident ? layers : 1);
        if (swap < 1 || swap > window)
            throw new FieldException(FieldException.Swap, $"must be from 1 to the window ({window}); got {swap}");
        if (spec.ResidentAuto) throw new FieldException(FieldException.ResidentLayers, "auto must be planned before it is run");
        if (spec.ResidentLayers < 0 || spec.ResidentLayers > layers)
            throw new FieldException(FieldException.ResidentLayers, $"must be from 0 to {layers} (the model's layers) or 'auto'; got {spec.ResidentLayers}");
        return new OffloadPolicy(resident ? PolicyKind.Resident : PolicyKind.Window, window, swap, 0, 0, 1) { Pinned = resident ? 0 : spec.ResidentLayers };
    }

    /// <summary>Parses a window's text: a whole number or "all" (null). ("auto" is a front end's word: it plans first.)</summary>
    public static int? ParseWindow(string text)
    {
        if (string.Equals(text.Trim(), "all", StringComparison.OrdinalIgnoreCase)) return null;
        return ParseKnob(text, FieldException.Window, "a whole number, 'all' or 'auto'");
    }

    /// <summary>Parses a swap's text: a whole number.</summary>
    public static int ParseSwap(string text) => ParseKnob(text, FieldException.Swap, "a whole number");

    static int ParseKnob(string text, string field, string expected) =>
        int.TryParse(text.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var v)
            ? v
            : throw new FieldException(field, $"must be {expected}; got '{text}'");

    /// <summary>Parses the policy text of <see cref="Grammar"/>; throws a <see cref="FieldException"/> naming
    /// <paramref name="field"/> and the grammar.</summary>
    public static OffloadPolicy Parse(string text, string field = FieldException.Policy)
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

    /// <summary>The gate for a model of <paramref name="layerBytes"/>; throws naming the policy when it does not fit the model.
    /// <paramref name="pinned"/> layers (see <see cref="PinnedSet"/>) stay outside the window; byte budgets take none.</summary>
    public LoadGate CreateGate(IReadOnlyList<long> layerBytes, IReadOnlySet<int>? pinned = null)
    {
        int n = layerBytes.Count;
        switch (Kind)
        {
            case PolicyKind.Synchronous:
                return new WindowGate(For(new PolicySpec(1, 1), n), layerBytes, pinned);
            case PolicyKind.Resident:
                return new WindowGate(For(PolicySpec.Resident, n), layerBytes, pinned);
            case PolicyKind.Window or PolicyKind.Batched:
                if (Window > n) throw new FieldException(FieldException.Policy, $"{this}: k = {Window} is above the model's {n} streamed layers");
                return new WindowGate(this, layerBytes, pinned);
            default:
                if (pinned is { Count: > 0 }) throw new FieldException(FieldException.Policy, $"{this}: byte budgets take no pinned layers");
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

    /// <summary>For people: "window 2/1", "bytes live 1.2 GiB / prefetch 400 MiB", "batched 2/1 × 3".</summary>
    public string Describe() => Kind switch
    {
        PolicyKind.Synchronous => "synchronous (window 1/1)",
        PolicyKind.Resident => "resident (all layers)",
        PolicyKind.Window => $"window {Window}/{Swap}" + (Pinned > 0 ? $", {Pinned} pinned" : ""),
        PolicyKind.ByteBudget => $"bytes live {ByteSize.Format(LiveBytes)} / prefetch {ByteSize.Format(PrefetchBytes)}",
        _ => $"batched {Window}/{Swap} × {MicroBatches}",
    };
}
