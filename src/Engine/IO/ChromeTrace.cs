using System.Text.Json;
using Superpipeline.Contracts;

namespace Superpipeline.Engine.IO;

/// <summary>A pass as a Chrome trace (chrome://tracing, Perfetto): per layer a load span on the transfer
/// track, a compute span on the compute track, and an evict instant.</summary>
public static class ChromeTrace
{
    public static void Write(string path, PassReport report)
    {
        var events = new List<object>
        {
            Meta("process_name", 1, 0, report.Device),
            Meta("thread_name", 1, 1, "transfer (host → device)"),
            Meta("thread_name", 1, 2, "compute"),
        };
        foreach (var l in report.LayerTimings)
        {
            var args = new Dictionary<string, object> { ["layer"] = l.Index, ["bytes"] = l.Bytes };
            events.Add(new { name = $"load {l.Name}", cat = "load", ph = "X", ts = Micros(l.LoadStart), dur = Micros(l.LoadSeconds), pid = 1, tid = 1, args });
            events.Add(new { name = $"compute {l.Name}", cat = "compute", ph = "X", ts = Micros(l.ComputeStart), dur = Micros(l.ComputeSeconds), pid = 1, tid = 2, args });
            if (l.EvictAt >= 0)
                events.Add(new { name = $"evict {l.Name}", cat = "evict", ph = "i", s = "t", ts = Micros(l.EvictAt), pid = 1, tid = 2, args });
        }
        using var file = File.Create(path);
        JsonSerializer.Serialize(file, new { traceEvents = events, displayTimeUnit = "ms" }, new JsonSerializerOptions { WriteIndented = false });
    }

    static double Micros(double seconds) => Math.Round(seconds * 1e6, 3);

    static object Meta(string name, int pid, int tid, string value) =>
        new { name, ph = "M", pid, tid, args = new { name = value } };
}
