using System.Text.Json;
using Superpipeline.Coordinator.Bench;

namespace Superpipeline.Tests;

/// <summary><c>superpipeline bench --generate --quick</c> generates with the real engine (resident, k = k' = 1, the planned window
/// and pins, and the plan from the disk tier) and writes generate.md and generate.json. Timings and speed-ups are never asserted
/// (they measure the machine); what is asserted holds on any machine: every variant's tokens equal resident's, the model is four
/// times the offloaded device, every reported peak is within its device, the KV bytes are the cache's own size, and the disk tier
/// held at least one layer and never more than its host memory.</summary>
public sealed class GenerateBenchSpec
{
    [Fact]
    public async Task Quick_generate_bench_writes_its_files_with_tokens_equal_to_resident_and_every_peak_within_its_budget()
    {
        var dir = Directory.CreateTempSubdirectory("superpipeline-gbench-spec-");
        try
        {
            var output = new StringWriter();
            using var cancel = new CancellationTokenSource(TimeSpan.FromMinutes(4));
            int code = await GenerateBench.RunAsync(new GenerateBenchOptions(dir.FullName, Quick: true), output, cancel.Token)
                .WaitAsync(TimeSpan.FromMinutes(5));
            Assert.Equal(0, code);

            var md = File.ReadAllText(Path.Combine(dir.FullName, "generate.md"));
            Assert.Equal(3, md.Split('\n').Count(l => l.StartsWith("- PASS: ") || l.StartsWith("- MISS: ")));
            Assert.Contains("written: ", output.ToString());

            using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir.FullName, "generate.json")));
            var r = doc.RootElement;
            var config = GenerateBench.QuickModel;
            var model = r.GetProperty("model");
            long modelBytes = model.GetProperty("modelBytes").GetInt64();
            long capacity = r.GetProperty("deviceCapacityBytes").GetInt64();
            Assert.Equal(modelBytes / 4, capacity);
            Assert.Equal(modelBytes, model.GetProperty("storedBytes").GetInt64()); // F32: stored bytes are device bytes

            // K and V in float32 for every block at prompt + new tokens.
            int batch = r.GetProperty("batch").GetInt32(), length = r.GetProperty("promptTokens").GetInt32() + r.GetProperty("newTokens").GetInt32();
            long kv = config.Layers * 2L * batch * config.KvHeads * length * config.HeadDim * sizeof(float);
            Assert.Equal(kv, r.GetProperty("kvBytes").GetInt64());

            var comparable = r.GetProperty("comparable").GetProperty("variants").EnumerateArray().ToArray();
            var harder = r.GetProperty("harder").GetProperty("variants").EnumerateArray().ToArray();
            Assert.Equal(["resident", "synchronous", "planned", "planned, disk tier"], comparable.Select(v => v.GetProperty("name").GetString()));
            Assert.Equal(["synchronous", "planned"], harder.Select(v => v.GetProperty("name").GetString()));
            var all = comparable.Concat(harder).Append(r.GetProperty("calibration")).ToArray();

            string reference = comparable[0].GetProperty("tokensSha256").GetString()!;
            Assert.Matches("^[0-9a-f]{64}$", reference);
            Assert.True(r.GetProperty("tokensEqual").GetBoolean());
            long budget = r.GetProperty("hostBudgetBytes").GetInt64();
            Assert.Equal(modelBytes / 4, budget);
            foreach (var v in all)
            {
                string name = v.GetProperty("name").GetString()!;
                Assert.True(reference == v.GetProperty("tokensSha256").GetString(), $"{name}: tokens differ from resident");
                long device = v.GetProperty("deviceCapacityBytes").GetInt64();
                long peak = v.GetProperty("peakDeviceBytes").GetInt64();
                Assert.InRange(peak, kv, device); // the caches live on the device for the whole generation
                Assert.Equal(kv, v.GetProperty("kvBytes").GetInt64());
                if (name != "resident" && !name.StartsWith("calibration")) Assert.Equal(capacity, device);
            }
            // Resident holds every layer and the caches at once.
            long residentPeak = comparable[0].GetProperty("peakDeviceBytes").GetInt64();
            Assert.True(residentPeak >= modelBytes + kv, $"the resident peak {residentPeak:N0} must hold the model and the caches");

            var disk = comparable[3];
            Assert.Equal(budget, disk.GetProperty("hostBudgetBytes").GetInt64());
            // The disk tier read at least one whole layer, and never held more than its host memory.
            Assert.InRange(disk.GetProperty("peakHostWeightBytes").GetInt64(), model.GetProperty("largestLayerBytes").GetInt64(), budget);
            Assert.Equal(comparable[2].GetProperty("policy").GetString(), disk.GetProperty("policy").GetString());
            Assert.Equal(r.GetProperty("comparable").GetProperty("plan").GetString(), comparable[2].GetProperty("policy").GetString());
            Assert.Equal("window=1, swap=1", comparable[1].GetProperty("policy").GetString());
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
