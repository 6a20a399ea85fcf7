using System.Globalization;
using Superpipeline.Contracts;

namespace Superpipeline.Engine.Policy;

/// <summary>The paper's knobs, validated against a model: k = <see cref="Window"/> layers resident at once,
/// k' = <see cref="Swap"/> layers evicted together. Valid input is 1 ≤ k' ≤ k ≤ layers.</summary>
public sealed record StreamPolicy
{
    StreamPolicy(int window, int swap, bool resident) { Window = window; Swap = swap; Resident = resident; }

    public int Window { get; }
    public int Swap { get; }
    /// <summary>True for window = all: every layer resident, the no-offload baseline.</summary>
    public bool Resident { get; }
    /// <summary>k − k': layers loaded ahead while a swap group is in transfer.</summary>
    public int PrefetchDepth => Window - Swap;

    /// <summary>Checks <paramref name="spec"/> for a model of <paramref name="layers"/> layers; throws a
    /// <see cref="FieldException"/> naming the knob (window or swap) and its valid range.</summary>
    public static StreamPolicy Create(PolicySpec spec, int layers)
    {
        if (layers < 1) throw new ArgumentException($"the model has no layers");
        if (spec.Auto) throw new FieldException(FieldException.Window, "auto must be planned before it is run");
        bool resident = spec.Window is null;
        int window = spec.Window ?? layers;
        if (window < 1 || window > layers)
            throw new FieldException(FieldException.Window, $"must be from 1 to {layers} (the model's layers) or 'all'; got {window}");
        int swap = spec.Swap ?? (resident ? layers : 1);
        if (swap < 1 || swap > window)
            throw new FieldException(FieldException.Swap, $"must be from 1 to the window ({window}); got {swap}");
        return new StreamPolicy(window, swap, resident);
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

    public override string ToString() => Resident ? $"window=all ({Window}), swap={Swap}" : $"window={Window}, swap={Swap}";
}
