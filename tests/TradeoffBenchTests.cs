using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Superpipeline.Coordinator.Bench;
using Xunit;

namespace Superpipeline.Tests;

/// <summary><c>superpipeline bench --tradeoff --quick</c> runs the real engine over its (k, k') grid and writes the table,
/// the JSON and the plot. Times and speed ratios are never asserted: they are measurements of the machine.
/// Peak bytes are asserted exactly: the engine and the analytic simulator account the same bytes at the same steps.</summary>
public sealed class TradeoffBenchTests
{
    [Fact]
    public async Task Quick_tradeoff_writes_a_png_and_one_measured_and_predicted_entry_per_grid_point_with_exact_peaks()
    {
        var dir = Directory.CreateTempSubdirectory("superpipeline-tradeoff-");
        try
        {
            var output = new StringWriter();
            int code = await TradeoffBench.RunAsync(new TradeoffOptions(dir.FullName, Quick: true), output, CancellationToken.None);
            Assert.Equal(0, code);

            // The plot is a real PNG with a nonzero size.
            var png = File.ReadAllBytes(Path.Combine(dir.FullName, "tradeoff.png"));
            Assert.True(png.Length > 33, $"tradeoff.png has {png.Length} bytes");
            Assert.Equal(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }, png[..8]);
            Assert.Equal("IHDR", Encoding.ASCII.GetString(png, 12, 4));
            Assert.True(BinaryPrimitives.ReadUInt32BigEndian(png.AsSpan(16, 4)) > 0, "PNG width is 0");
            Assert.True(BinaryPrimitives.ReadUInt32BigEndian(png.AsSpan(20, 4)) > 0, "PNG height is 0");

            var md = File.ReadAllText(Path.Combine(dir.FullName, "tradeoff.md"));
            Assert.Contains("| k | k' | measured s | predicted s | error % |", md);
            Assert.Contains("Mean absolute prediction error", output.ToString());

            using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir.FullName, "tradeoff.json")));
            var root = doc.RootElement;
            var grid = TradeoffBench.Grid(quick: true);
            var points = root.GetProperty("points").EnumerateArray().ToArray();
            Assert.Equal(grid.Count, points.Length);
            Assert.Equal(JsonValueKind.Number, root.GetProperty("meanAbsoluteErrorPercent").ValueKind);
            int layers = root.GetProperty("model").GetProperty("layers").GetInt32();
            int repeats = root.GetProperty("repeats").GetInt32();

            for (int i = 0; i < grid.Count; i++)
            {
                var p = points[i];
                var spec = grid[i];
                Assert.Equal(spec.Window ?? layers, p.GetProperty("window").GetInt32());
                Assert.Equal(spec.Swap ?? layers, p.GetProperty("swap").GetInt32());
                Assert.Equal(spec.Window is null, p.GetProperty("resident").GetBoolean());
                foreach (var field in new[] { "measuredSeconds", "predictedSeconds" })
                    Assert.True(p.GetProperty(field).GetDouble() > 0, $"{field} of point {i} is not positive");
                Assert.Equal(JsonValueKind.Number, p.GetProperty("errorPercent").ValueKind);
                Assert.Equal(repeats, p.GetProperty("measuredSecondsPerRepeat").GetArrayLength());

                // The simulator accounts the same bytes as the engine: weights at load start, a layer's output at
                // compute start, its input freed at compute end. Each repeat is predicted with the compute rate of the
                // calibration pass just before it; the point's peaks are the largest over the repeats.
                long measured = p.GetProperty("measuredPeakBytes").GetInt64();
                long predicted = p.GetProperty("predictedPeakBytes").GetInt64();
                var measuredPerRepeat = p.GetProperty("measuredPeakBytesPerRepeat").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                var predictedPerRepeat = p.GetProperty("predictedPeakBytesPerRepeat").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                string label = p.GetProperty("label").GetString()!;
                Assert.True(measured > 0, $"{label}: no peak measured");
                Assert.True(predicted == measured, $"{label}: predicted peak {predicted:N0} bytes, measured {measured:N0}");
                Assert.Equal(repeats, measuredPerRepeat.Length);
                Assert.Equal(measuredPerRepeat, predictedPerRepeat);
                Assert.True(p.GetProperty("peakEqual").GetBoolean(), $"{label}: peakEqual is false");
            }

            // A smaller window never needs more memory than a larger one with the same swap.
            foreach (var bySwap in points.GroupBy(p => p.GetProperty("swap").GetInt32()))
            {
                var ordered = bySwap.OrderBy(p => p.GetProperty("window").GetInt32()).ToArray();
                for (int j = 1; j < ordered.Length; j++)
                {
                    long smaller = ordered[j - 1].GetProperty("measuredPeakBytes").GetInt64(), larger = ordered[j].GetProperty("measuredPeakBytes").GetInt64();
                    Assert.True(smaller <= larger,
                        $"swap {bySwap.Key}: window {ordered[j - 1].GetProperty("window").GetInt32()} peaked at {smaller:N0} bytes, " +
                        $"more than window {ordered[j].GetProperty("window").GetInt32()} at {larger:N0}");
                }
            }
            Assert.Contains(points, p => p.GetProperty("swap").GetInt32() == 1 && p.GetProperty("window").GetInt32() > 1);

            // Outputs never depend on the knobs.
            Assert.True(root.GetProperty("outputsIdentical").GetBoolean(), "outputs differ across (k, k')");
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
