namespace Superpipeline.Coordinator.Bench;

/// <summary>Statistics of repeated measurements, shared by every bench.</summary>
public static class Stats
{
    /// <summary>The median; NaN for no values.</summary>
    public static double Median(IEnumerable<double> values)
    {
        var a = values.Order().ToArray();
        if (a.Length == 0) return double.NaN;
        return a.Length % 2 == 1 ? a[a.Length / 2] : (a[a.Length / 2 - 1] + a[a.Length / 2]) / 2;
    }

    /// <summary>The <paramref name="q"/> quantile (0 to 1), interpolated linearly between the two nearest values.</summary>
    public static double Quantile(IReadOnlyList<double> values, double q)
    {
        var a = values.Order().ToArray();
        if (a.Length == 0) return double.NaN;
        double at = q * (a.Length - 1);
        int lo = (int)Math.Floor(at), hi = (int)Math.Ceiling(at);
        return a[lo] + (a[hi] - a[lo]) * (at - lo);
    }

    /// <summary>The repeats to measure: <paramref name="given"/>, or the default; refuses fewer than one.</summary>
    public static int Repeats(int? given, int fallback)
    {
        int repeats = given ?? fallback;
        return repeats >= 1 ? repeats : throw new ArgumentException($"--repeats must be at least 1; got {repeats}");
    }
}
