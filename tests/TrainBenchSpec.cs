using System.Text.Json;
using Superpipeline.Coordinator.Bench;
using Xunit;

namespace Superpipeline.Tests;

/// <summary><c>superpipeline bench --train --quick</c> trains for real on one simulated device and writes train.md and train.json.
/// Timings are never asserted (they measure the machine); what is asserted holds on any machine: each largest batch is what its
/// trials show (doubling from one row, then bisection: the batch fit and the next one was refused), every refusal is the device's
/// out-of-memory refusal and leaves no byte reserved, the streamed largest batch is at least the resident one, every peak is within
/// the device, and the model four times the device is refused resident at one row and trains streamed.</summary>
public sealed class TrainBenchSpec
{
    [Fact]
    public async Task Quick_train_bench_finds_each_largest_batch_by_trying_steps_and_trains_the_model_4x_the_device_only_streamed()
    {
        var dir = Directory.CreateTempSubdirectory("superpipeline-tbench-spec-");
        try
        {
            var output = new StringWriter();
            using var cancel = new CancellationTokenSource(TimeSpan.FromMinutes(4));
            int code = await TrainBench.RunAsync(new TrainBenchOptions(dir.FullName, Quick: true), output, cancel.Token).WaitAsync(TimeSpan.FromMinutes(5));
            Assert.Equal(0, code);
            Assert.True(File.Exists(Path.Combine(dir.FullName, "train.md")));
            Assert.Contains("written: ", output.ToString());

            using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir.FullName, "train.json")));
            var r = doc.RootElement;
            Assert.True(r.GetProperty("quick").GetBoolean());
            int steps = r.GetProperty("steps").GetInt32();
            long capacity = r.GetProperty("deviceCapacityBytes").GetInt64();
            long smallBytes = r.GetProperty("model").GetProperty("modelBytes").GetInt64();
            var large = r.GetProperty("large");
            long largeBytes = large.GetProperty("model").GetProperty("modelBytes").GetInt64();
            Assert.Equal(largeBytes / 4, capacity);
            Assert.InRange(smallBytes, 1, capacity - 1); // the small model's weights fit the device, with room for some activations

            // (a) each search: doubling from 1, then bisection; the largest batch fit and the next was refused by the device.
            int residentMax = Search(r.GetProperty("resident"), capacity);
            int streamedMax = Search(r.GetProperty("streamed"), capacity);
            Assert.True(residentMax >= 1, "the small model must train resident at some batch");
            Assert.True(streamedMax >= residentMax, $"streamed largest batch {streamedMax} < resident's {residentMax}");
            Assert.Equal(streamedMax / (double)residentMax, r.GetProperty("batchRatio").GetDouble(), 12);

            var variants = r.GetProperty("throughput").EnumerateArray().ToArray();
            Assert.Equal(["resident, largest batch", "streamed, largest batch", "streamed, resident's batch"],
                variants.Select(v => v.GetProperty("name").GetString()));
            Assert.Equal([residentMax, streamedMax, residentMax], variants.Select(v => v.GetProperty("batch").GetInt32()));
            foreach (var v in variants.Append(large.GetProperty("streamed"))) Measured(v, steps, capacity);
            Assert.Equal(variants[1].GetProperty("samplesPerSecond").GetDouble() / variants[0].GetProperty("samplesPerSecond").GetDouble(),
                r.GetProperty("samplesPerSecondRatio").GetDouble(), 9);
            // Resident holds every weight at once; streamed, at the same batch, two layers and one layer's gradients.
            long residentPeak = variants[0].GetProperty("peakDeviceBytes").GetInt64();
            Assert.True(residentPeak >= smallBytes, $"the resident peak {residentPeak:N0} must hold the model's {smallBytes:N0} bytes");
            Assert.True(variants[2].GetProperty("peakDeviceBytes").GetInt64() < residentPeak, "streamed at the resident's batch must hold less");

            // (b) the model 4× the device: resident refused at one row, freeing every byte; streamed trains within the device.
            Assert.Equal(4.0, large.GetProperty("modelOverDevice").GetDouble(), 2);
            var refused = large.GetProperty("resident");
            Assert.Equal(1, refused.GetProperty("batch").GetInt32());
            Refused(refused);
            var tried = large.GetProperty("streamedTrials").EnumerateArray().ToArray();
            Assert.True(tried[^1].GetProperty("fits").GetBoolean());
            Assert.All(tried[..^1], Refused);
            Assert.Equal(tried[^1].GetProperty("batch").GetInt32(), large.GetProperty("streamed").GetProperty("batch").GetInt32());
            Assert.Equal("window 2, swap 1", large.GetProperty("streamed").GetProperty("policy").GetString());
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task No_measured_steps_is_refused_before_any_work()
    {
        var dir = Path.Combine(Path.GetTempPath(), $"superpipeline-tbench-none-{Guid.NewGuid():N}");
        var e = await Assert.ThrowsAsync<ArgumentException>(() => TrainBench.RunAsync(new TrainBenchOptions(dir, Quick: true, Steps: 0), TextWriter.Null,
            CancellationToken.None));
        Assert.Contains("--repeats", e.Message);
        Assert.False(Directory.Exists(dir));
    }

    /// <summary>Checks one search's trials against the method and returns its largest batch.</summary>
    static int Search(JsonElement search, long capacity)
    {
        var trials = search.GetProperty("trials").EnumerateArray().Select(t => (Batch: t.GetProperty("batch").GetInt32(),
            Fits: t.GetProperty("fits").GetBoolean(), Element: t)).ToArray();
        int largest = search.GetProperty("largestBatch").GetInt32();
        Assert.False(search.GetProperty("capped").GetBoolean());
        // Doubling: 1, 2, 4, ... up to the first refusal.
        int firstRefused = Array.FindIndex(trials, t => !t.Fits);
        Assert.True(firstRefused >= 0, "a search ends with a refusal");
        Assert.Equal(Enumerable.Range(0, firstRefused + 1).Select(i => 1 << i), trials[..(firstRefused + 1)].Select(t => t.Batch));
        // Bisection: every later try lies strictly between the largest batch that fit and the smallest refused so far.
        for (int i = firstRefused + 1; i < trials.Length; i++)
        {
            int fit = trials[..i].Where(t => t.Fits).Max(t => t.Batch), refused = trials[..i].Where(t => !t.Fits).Min(t => t.Batch);
            Assert.InRange(trials[i].Batch, fit + 1, refused - 1);
        }
        Assert.Equal(trials.Where(t => t.Fits).Max(t => t.Batch), largest);
        Assert.Contains(trials, t => !t.Fits && t.Batch == largest + 1); // the next batch up was tried and refused
        Assert.DoesNotContain(trials, t => t.Fits && t.Batch > trials.Where(u => !u.Fits).Min(u => u.Batch)); // monotone
        foreach (var t in trials)
        {
            if (t.Fits)
            {
                Assert.InRange(t.Element.GetProperty("peakDeviceBytes").GetInt64(), 1, capacity);
                Assert.Equal(0, t.Element.GetProperty("reservedAfterBytes").GetInt64());
                Assert.Equal(JsonValueKind.Null, t.Element.GetProperty("refusal").ValueKind);
            }
            else Refused(t.Element);
        }
        return largest;
    }

    /// <summary>A trial refused by the device for memory, with every byte freed after it.</summary>
    static void Refused(JsonElement trial)
    {
        Assert.False(trial.GetProperty("fits").GetBoolean());
        Assert.Contains("out of memory", trial.GetProperty("refusal").GetString());
        Assert.Equal(0, trial.GetProperty("reservedAfterBytes").GetInt64());
    }

    /// <summary>A measured variant: positive finite rates, every step timed, a peak within the device, a finite loss per step.</summary>
    static void Measured(JsonElement v, int steps, long capacity)
    {
        string name = v.GetProperty("name").GetString()!;
        double rate = v.GetProperty("samplesPerSecond").GetDouble();
        Assert.True(rate > 0 && double.IsFinite(rate), $"{name}: samples/s {rate}");
        Assert.Equal(steps, v.GetProperty("stepSeconds").GetArrayLength());
        Assert.InRange(v.GetProperty("peakDeviceBytes").GetInt64(), 1, capacity);
        var losses = v.GetProperty("losses").EnumerateArray().Select(l => l.GetDouble()).ToArray();
        Assert.Equal(steps + 1, losses.Length); // the warm-up step's loss first
        Assert.All(losses, l => Assert.True(double.IsFinite(l) && l > 0, $"{name}: loss {l}"));
    }
}
