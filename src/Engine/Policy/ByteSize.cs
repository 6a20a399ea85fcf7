using System.Globalization;

namespace Superpipeline.Engine.Policy;

/// <summary>Byte counts as people write them: 1048576, 64MiB, 1.5 GiB, 512KB (KB/MB/GB are taken as powers of 1024 too).</summary>
public static class ByteSize
{
    static readonly (string Suffix, long Factor)[] Suffixes =
    [
        ("KIB", 1L << 10), ("MIB", 1L << 20), ("GIB", 1L << 30), ("TIB", 1L << 40),
        ("KB", 1L << 10), ("MB", 1L << 20), ("GB", 1L << 30), ("TB", 1L << 40),
        ("K", 1L << 10), ("M", 1L << 20), ("G", 1L << 30), ("T", 1L << 40), ("B", 1),
    ];

    /// <summary>The bytes <paramref name="text"/> gives; a refusal is a <see cref="FieldException"/> naming <paramref name="field"/>
    /// (e.g. <see cref="FieldException.DeviceMemory"/>, or a configuration key).</summary>
    public static long Parse(string text, string field)
    {
        var s = text.Trim().ToUpperInvariant();
        long factor = 1;
        foreach (var (suffix, f) in Suffixes)
        {
            if (s.EndsWith(suffix, StringComparison.Ordinal))
            {
                s = s[..^suffix.Length].Trim();
                factor = f;
                break;
            }
        }
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) || value <= 0 || double.IsInfinity(value))
            throw new FieldException(field, $"must be a positive size in bytes, optionally with a KiB/MiB/GiB suffix; got '{text}'");
        var bytes = value * factor;
        if (bytes >= long.MaxValue) throw new FieldException(field, $"is too large; got '{text}'");
        return (long)bytes;
    }

    public static string Format(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):0.##} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):0.##} MiB",
        >= 1L << 10 => $"{bytes / (double)(1L << 10):0.##} KiB",
        _ => $"{bytes} B",
    };
}
