using System.Text.Json;
using Superpipeline.Coordinator.Bench;
using Xunit;

namespace Superpipeline.Tests;

/// <summary><c>superpipeline bench --train --quick</c> trains for real on one simulated device and writes train.md and train.json.
/// Timings are never asserted (they measure the machine); what is asserted holds on any machine: each largest batch is what its
/// trials show (doubling from one row, then bisection: the batch fit and the next one was refused), every refusal is the device's
/// out-of-memory refusal and leaves no byte reserved, the streamed largest batch is at least the resident one, every peak is within
/// the device, and the model four times the device is refused resident at one row and trains streamed. Under the emulated link: each
/// link is set from its own figures (the streamed step's bytes ÷ the target ratio × the compute it was matched to), each variant's
/// ratio met is its bytes at that rate ÷ its compute, the comparable runs met their target within the tolerance the bench reports,
/// every weight crosses the link each step, train's default window and window auto's plan train (within the planned peak), and the
/// 4× model is refused resident under the link too, freeing every byte.</summary>
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
            foreach (var v in variants.Append(large.GetProperty("streamed")))
            {
                Assert.Equal(JsonValueKind.Null, v.GetProperty("linkGBps").ValueKind); // the easy case: no link
                Assert.Equal(JsonValueKind.Null, v.GetProperty("transferOverCompute").ValueKind);
            }

            // (c) under an emulated link matched to the streamed step at its largest batch: transfer ÷ compute 1, then 2.
            double tolerance = r.GetProperty("rematchTolerance").GetDouble();
            Assert.Equal(TrainBench.RematchTolerance, tolerance);
            var comparable = r.GetProperty("comparable");
            var harder = r.GetProperty("harder");
            Assert.Equal(1.0, comparable.GetProperty("transferOverCompute").GetDouble());
            Assert.Equal(2.0, harder.GetProperty("transferOverCompute").GetDouble());
            // The first link is matched to the compute measured without a link, on the bytes the streamed step moves.
            long bytes = comparable.GetProperty("matchedBytes").GetInt64();
            Assert.Equal(variants[1].GetProperty("bytesTransferred").GetInt64(), bytes);
            Assert.True(bytes > smallBytes, $"a streamed step moves the weights forward and back: {bytes:N0} bytes for a {smallBytes:N0}-byte model");
            var missed = comparable.GetProperty("missed").EnumerateArray().Select(m => m.GetDouble()).ToArray();
            Assert.InRange(missed.Length, 0, TrainBench.Rematches);
            Assert.All(missed, m => Assert.True(Math.Abs(m - 1) > tolerance, $"matched again after meeting {m}, within ±{tolerance}"));
            if (missed.Length == 0)
                Assert.Equal(variants[1].GetProperty("computeSeconds").GetDouble(), comparable.GetProperty("matchedComputeSeconds").GetDouble());
            // The harder link is matched to the compute the comparable runs met.
            var comparableVariants = comparable.GetProperty("variants").EnumerateArray().ToArray();
            Assert.Equal(comparableVariants[1].GetProperty("computeSeconds").GetDouble(), harder.GetProperty("matchedComputeSeconds").GetDouble());
            Assert.Equal(bytes, harder.GetProperty("matchedBytes").GetInt64());
            foreach (var link in new[] { comparable, harder })
            {
                double ratio = link.GetProperty("transferOverCompute").GetDouble(), gbps = link.GetProperty("linkGBps").GetDouble();
                Assert.Equal(bytes / (ratio * link.GetProperty("matchedComputeSeconds").GetDouble()) / 1e9, gbps, 9);
                var linked = link.GetProperty("variants").EnumerateArray().ToArray();
                foreach (var v in linked)
                {
                    Measured(v, steps, capacity);
                    Assert.Equal(gbps, v.GetProperty("linkGBps").GetDouble());
                    double compute = v.GetProperty("computeSeconds").GetDouble(), met = v.GetProperty("transferOverCompute").GetDouble();
                    long moved = v.GetProperty("bytesTransferred").GetInt64();
                    Assert.True(compute > 0 && moved > 0, $"{v.GetProperty("name")}: compute {compute} s, {moved} bytes moved");
                    Assert.Equal(moved / (gbps * 1e9) / compute, met, 9);
                    // Every weight crosses the link each step, resident or streamed (the weights change after every step).
                    long modelBytes = v.GetProperty("model").GetString() == "large" ? largeBytes : smallBytes;
                    Assert.True(moved >= modelBytes, $"{v.GetProperty("name")}: {moved:N0} bytes moved for a {modelBytes:N0}-byte model");
                }
                Assert.Equal(TrainBench.StreamedLargest, linked[1].GetProperty("name").GetString());
                Assert.Equal(linked[1].GetProperty("transferOverCompute").GetDouble(), link.GetProperty("effectiveTransferOverCompute").GetDouble());
                Assert.Equal(linked[1].GetProperty("samplesPerSecond").GetDouble() / linked[0].GetProperty("samplesPerSecond").GetDouble(),
                    link.GetProperty("samplesPerSecondRatio").GetDouble(), 9);
                var large4x = linked.Single(v => v.GetProperty("name").GetString() == TrainBench.LargeStreamed);
                Assert.Equal(large.GetProperty("streamed").GetProperty("batch").GetInt32(), large4x.GetProperty("batch").GetInt32());
                Assert.Equal("large", large4x.GetProperty("model").GetString());
            }
            // The bench matches the link again until the ratio the comparable runs met is within its tolerance, at most Rematches times:
            // if it stopped before that, the ratio is within it (after the last try it may not be, on a busy machine: that is timing).
            double effective = comparable.GetProperty("effectiveTransferOverCompute").GetDouble();
            if (missed.Length < TrainBench.Rematches)
                Assert.True(Math.Abs(effective - 1) <= tolerance, $"the comparable link's runs met transfer ÷ compute {effective}, beyond ±{tolerance}");

            // The comparable link: every variant, train's default window and what window auto plans, at the batches they share.
            var named = comparableVariants.ToDictionary(v => v.GetProperty("name").GetString()!);
            Assert.Equal([TrainBench.ResidentLargest, TrainBench.StreamedLargest, TrainBench.StreamedAtResidents, TrainBench.DefaultAtResidents],
                comparableVariants[..4].Select(v => v.GetProperty("name").GetString()));
            Assert.Equal([residentMax, streamedMax, residentMax, residentMax], comparableVariants[..4].Select(v => v.GetProperty("batch").GetInt32()));
            Assert.Equal("window 3, swap 1", named[TrainBench.DefaultAtResidents].GetProperty("policy").GetString());
            var plans = comparable.GetProperty("plans").EnumerateArray().ToArray();
            Assert.Equal([TrainBench.AutoAtStreamed, TrainBench.AutoAtResidents], plans.Select(p => p.GetProperty("variant").GetString()));
            Assert.Equal([streamedMax, residentMax], plans.Select(p => p.GetProperty("batch").GetInt32()));
            foreach (var plan in plans)
            {
                // The largest window whose need fits: at the batches that train, the planner plans; its step trains within its predicted peak.
                Assert.Equal(JsonValueKind.Null, plan.GetProperty("refusal").ValueKind);
                long predicted = plan.GetProperty("predictedPeakDeviceBytes").GetInt64();
                Assert.InRange(predicted, 1, capacity);
                var run = named[plan.GetProperty("variant").GetString()!];
                Assert.Equal(plan.GetProperty("policy").GetString(), run.GetProperty("policy").GetString());
                Assert.Equal(plan.GetProperty("batch").GetInt32(), run.GetProperty("batch").GetInt32());
                Assert.InRange(run.GetProperty("peakDeviceBytes").GetInt64(), 1, predicted);
            }
            // The window auto plans at the resident's largest batch is at least the default's and the bench's (resident fits there).
            Assert.True(plans[1].GetProperty("window").GetInt32() >= TrainBench.DefaultWindow, "auto planned a smaller window than resident fits");
            Refused(comparable.GetProperty("largeResident")); // the 4× model, resident under the link: refused, every byte freed
            Assert.Equal(JsonValueKind.Null, harder.GetProperty("largeResident").ValueKind);
            Assert.Equal([TrainBench.ResidentLargest, TrainBench.StreamedLargest, TrainBench.LargeStreamed],
                harder.GetProperty("variants").EnumerateArray().Select(v => v.GetProperty("name").GetString()));
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
        // The cold (first) step and the warm median, each positive; the median is the measured steps' own.
        Assert.True(v.GetProperty("warmupSeconds").GetDouble() > 0, $"{name}: cold step");
        var seconds = v.GetProperty("stepSeconds").EnumerateArray().Select(x => x.GetDouble()).Order().ToArray();
        Assert.Equal(seconds.Length % 2 == 1 ? seconds[seconds.Length / 2] : (seconds[seconds.Length / 2 - 1] + seconds[seconds.Length / 2]) / 2,
            v.GetProperty("warmMedianSeconds").GetDouble(), 12);
        Assert.True(v.GetProperty("computeSeconds").GetDouble() > 0, $"{name}: compute");
    }
}
