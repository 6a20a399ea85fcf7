using System.Text.Json;
using Superpipeline.Coordinator.Bench;

namespace Superpipeline.Tests;

/// <summary><c>superpipeline bench --quick</c> runs end to end and writes what it promises. It never asserts a time
/// or a ratio's value: those are measurements of the machine, not properties of the code.</summary>
public sealed class BenchCommandTests
{
    [Fact]
    public async Task Quick_bench_writes_the_table_and_the_json_with_every_ratio_and_a_fair_hand_loop()
    {
        var dir = Directory.CreateTempSubdirectory("superpipeline-bench-");
        try
        {
            var output = new StringWriter();
            int code = await EngineBench.RunAsync(new BenchOptions(dir.FullName, Quick: true), output, CancellationToken.None);

            Assert.Equal(0, code);
            var md = Path.Combine(dir.FullName, "bench.md");
            var json = Path.Combine(dir.FullName, "bench.json");
            Assert.True(File.Exists(md), "bench.md was not written");
            Assert.True(File.Exists(json), "bench.json was not written");
            Assert.Contains("| measure | value | goal | met |", File.ReadAllText(md));
            Assert.Contains("| measure | value | goal | met |", output.ToString());
            Assert.DoesNotContain("FAIL", output.ToString());

            using var doc = JsonDocument.Parse(File.ReadAllText(json));
            var root = doc.RootElement;
            var ratios = root.GetProperty("ratios");
            foreach (var name in new[] { "engineOverHand", "streamedOverLowerBound", "syncOverStreamed", "peakWindow2OverResident" })
                Assert.Equal(JsonValueKind.Number, ratios.GetProperty(name).ValueKind);
            Assert.True(root.GetProperty("engineOverhead").GetProperty("handMatchesEngine").GetBoolean(),
                "the hand loop's output differs from the engine's: the overhead comparison would not be fair");
            Assert.True(root.GetProperty("peakMemory").GetProperty("outputMatchesResident").GetBoolean(),
                "the window-2 pass's output differs from the resident pass's");
            Assert.Equal(24, root.GetProperty("peakMemory").GetProperty("layers").GetInt32());
            Assert.True(root.GetProperty("machine").GetProperty("cores").GetInt32() >= 1);
            Assert.True(root.GetProperty("overlap").GetProperty("linkGBps").GetDouble() > 0);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
