using System.Text.Json;
using System.Text.Json.Serialization;
using Superpipeline.Contracts;

namespace Superpipeline.Engine.IO;

/// <summary>A pass as a Chrome trace (chrome://tracing, Perfetto): per layer a load span on the transfer
/// track, a compute span on the compute track, and an evict instant.</summary>
public static class ChromeTrace
{
    /// <summary>One event of the Trace Event Format: a complete span (ph X, with dur), an instant (ph i, scope s) or
    /// metadata (ph M, naming a process or thread).</summary>
    public sealed record TraceEvent(
        [property: JsonPropertyName("name")] string Name,
        [property: JsonPropertyName("ph")] string Phase,
        [property: JsonPropertyName("pid")] int Process,
        [property: JsonPropertyName("tid")] int Thread,
        [property: JsonPropertyName("args")] IReadOnlyDictionary<string, object> Args)
    {
        [JsonPropertyName("cat"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? Category { get; init; }
        [JsonPropertyName("ts"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public double? Micros { get; init; }
        [JsonPropertyName("dur"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public double? DurationMicros { get; init; }
        [JsonPropertyName("s"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] public string? Scope { get; init; }
    }

    public sealed record TraceFile(
        [property: JsonPropertyName("traceEvents")] IReadOnlyList<TraceEvent> Events,
        [property: JsonPropertyName("displayTimeUnit")] string DisplayTimeUnit);

    public static void Write(string path, PassReport report)
    {
        const int transfer = 1, compute = 2;
        var events = new List<TraceEvent>
        {
            Meta("process_name", 0, report.Device),
            Meta("thread_name", transfer, "transfer (host → device)"),
            Meta("thread_name", compute, "compute"),
        };
        foreach (var l in report.LayerTimings)
        {
            var args = new Dictionary<string, object> { ["layer"] = l.Index, ["bytes"] = l.Bytes };
            events.Add(Span($"load {l.Name}", "load", transfer, l.LoadStart, l.LoadSeconds, args));
            events.Add(Span($"compute {l.Name}", "compute", compute, l.ComputeStart, l.ComputeSeconds, args));
            if (l.EvictAt >= 0)
                events.Add(new TraceEvent($"evict {l.Name}", "i", 1, compute, args) { Category = "evict", Micros = Micros(l.EvictAt), Scope = "t" });
        }
        using var file = File.Create(path);
        JsonSerializer.Serialize(file, new TraceFile(events, "ms"));
    }

    static TraceEvent Span(string name, string category, int thread, double start, double seconds, Dictionary<string, object> args) =>
        new(name, "X", 1, thread, args) { Category = category, Micros = Micros(start), DurationMicros = Micros(seconds) };

    static double Micros(double seconds) => Math.Round(seconds * 1e6, 3);

    static TraceEvent Meta(string name, int thread, string value) =>
        new(name, "M", 1, thread, new Dictionary<string, object> { ["name"] = value });
}
