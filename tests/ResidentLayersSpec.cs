using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Engine;
using Superpipeline.Engine.Simulation;
using Superpipeline.Workers;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Tests;

/// <summary>Pinned layers through the real loader: outputs bit-identical to resident for every pinned count and (k, k'),
/// pinned layers loaded once and reused by the next pass of the same model (bytes from the report), their bytes in the
/// peak and under the capacity, released by another model's pass and by a failed pass (the choice: a failure releases the
/// pinned set with the rest, so nothing of the pass stays reserved). In the tensor-count collection: it compares the
/// process-wide tensor count.</summary>
[Collection(TensorCountCollection.Name)]
public sealed class ResidentLayersSpec() : TestKit(WorkerConfig.Load())
{
    const long Roomy = 256L << 20;

    static OffloadPolicy Pins(EngineHarness h, int? k, int? s, int pins) =>
        OffloadPolicy.For(new PolicySpec(k, s, ResidentLayers: pins), h.Model.Layers.Count);

    /// <summary>A pass whose pinned layers stay on the device under <paramref name="key"/> (null: freed at its end).</summary>
    static async Task<(byte[] Output, PassReport Report)> Pass(EngineHarness h, OffloadPolicy policy, object? key)
    {
        var answer = await h.Loader.Ask<object>(new DeviceLoaderActor.RunPass(h.Model, h.Layers, h.Input, policy) { ResidentKey = key },
            TimeSpan.FromMinutes(2));
        if (answer is DeviceLoaderActor.PassFailed f) throw new PassFailedException(f.Reason);
        using var output = ((DeviceLoaderActor.PassSucceeded)answer).Output;
        return (TensorBytes.Raw(output), ((DeviceLoaderActor.PassSucceeded)answer).Report);
    }

    /// <summary>Layers pinned by the spread rule, worked out by hand for 5 layers: ⌊(i+1)·N/5⌋ &gt; ⌊i·N/5⌋.</summary>
    [Theory]
    [InlineData(0, new int[0])]
    [InlineData(1, new[] { 4 })]
    [InlineData(2, new[] { 2, 4 })]
    [InlineData(3, new[] { 1, 3, 4 })]
    [InlineData(5, new[] { 0, 1, 2, 3, 4 })]
    public void Spread_pins_the_hand_worked_layers(int count, int[] expected) => Assert.Equal(expected, PinnedLayers.Spread(count, 5));

    [Fact]
    public async Task Every_pinned_count_and_window_gives_the_resident_output_on_the_first_and_the_second_pass()
    {
        using var h = new EngineHarness(Sys, EngineHarness.Tiny(blocks: 3), Roomy);
        var (resident, _) = await Pass(h, h.Policy(null), key: null);
        int n = h.Model.Layers.Count, cases = 0;
        for (int pins = 0; pins <= n; pins++)
            for (int k = 1; k <= n; k++)
                for (int s = 1; s <= k; s++, cases++)
                {
                    var key = $"model-{pins}-{k}-{s}";
                    var (first, _) = await Pass(h, Pins(h, k, s, pins), key);
                    var (second, report) = await Pass(h, Pins(h, k, s, pins), key);
                    Assert.True(resident.AsSpan().SequenceEqual(first), $"pins {pins}, k={k}, k'={s}: first pass differs from resident");
                    Assert.True(resident.AsSpan().SequenceEqual(second), $"pins {pins}, k={k}, k'={s}: second pass differs from resident");
                    Assert.Equal(pins, report.PinnedReused);
                }
        Assert.Equal(6 * 15, cases);
    }

    [Fact]
    public async Task A_second_pass_moves_only_the_streamed_layers_and_holds_the_pinned_ones_in_its_peak()
    {
        using var h = new EngineHarness(Sys, EngineHarness.Tiny(blocks: 4), Roomy);
        int n = h.Model.Layers.Count; // 6
        var bytes = h.Model.Layers.Select(l => l.Bytes).ToArray();
        long input = TensorBytes.Of(h.Input);
        int[] pinned = [1, 3, 5]; // 3 of 6, spread: ⌊(i+1)/2⌋ > ⌊i/2⌋ for odd i
        long pinnedBytes = pinned.Sum(i => bytes[i]);
        var policy = Pins(h, 1, 1, 3);

        var (_, first) = await Pass(h, policy, "m");
        Assert.Equal(pinned, first.Pinned);
        Assert.Equal(0, first.PinnedReused);
        Assert.Equal(input + bytes.Sum(), first.BytesTransferred);
        Assert.Equal(pinnedBytes, h.Device.Memory.Reserved); // kept for the next pass, and accounted

        var (_, second) = await Pass(h, policy, "m");
        Assert.Equal(3, second.PinnedReused);
        Assert.Equal(input + bytes.Sum() - pinnedBytes, second.BytesTransferred);
        // Window 1 holds one streamed layer at a time: the peak is the pinned layers, the largest streamed one and activations.
        long largestStreamed = Enumerable.Range(0, n).Where(i => !pinned.Contains(i)).Max(i => bytes[i]);
        Assert.InRange(second.PeakDeviceBytes, pinnedBytes + largestStreamed, h.Device.Memory.Capacity);
        Assert.InRange(second.PeakDeviceBytes, 0, pinnedBytes + largestStreamed + ModelCost.From(h.Model).ActivationBoundBytes());
        Assert.All(second.LayerTimings.Where(t => pinned.Contains(t.Index)), t => Assert.Equal(-1, t.EvictAt));
        Assert.Equal(pinnedBytes, h.Device.Memory.Reserved);
    }

    [Fact]
    public async Task Window_all_moves_nothing_after_the_first_pass()
    {
        using var h = new EngineHarness(Sys, EngineHarness.Tiny(blocks: 3), Roomy);
        var (resident, first) = await Pass(h, h.Policy(null), "m");
        var (again, second) = await Pass(h, h.Policy(null), "m");
        Assert.Equal(resident, again);
        Assert.Equal(h.Model.Layers.Count, second.PinnedReused);
        Assert.Equal(TensorBytes.Of(h.Input), second.BytesTransferred); // the input only
        // Every later pass holds every layer from its start, so its peak is fixed; the first pass's depends on how far loads ran
        // ahead of compute when the layer with the most workspace computed, never more.
        var (_, third) = await Pass(h, h.Policy(null), "m");
        Assert.Equal(second.PeakDeviceBytes, third.PeakDeviceBytes);
        Assert.True(first.PeakDeviceBytes <= second.PeakDeviceBytes, $"first pass peak {first.PeakDeviceBytes:N0} > later {second.PeakDeviceBytes:N0}");
    }

    [Fact]
    public async Task Another_models_pass_releases_the_pinned_layers_and_nothing_is_left_behind()
    {
        using var a = new EngineHarness(Sys, EngineHarness.Tiny(seed: 7, blocks: 3), Roomy);
        using var b = new EngineHarness(Sys, EngineHarness.Tiny(seed: 8, blocks: 3), Roomy); // run on a's loader and device
        async Task<PassReport> PassOfB(int pins)
        {
            var answer = await a.Loader.Ask<object>(new DeviceLoaderActor.RunPass(b.Model, b.Layers, b.Input, Pins(b, 2, 1, pins)) { ResidentKey = "b" },
                TimeSpan.FromMinutes(2));
            var ok = Assert.IsType<DeviceLoaderActor.PassSucceeded>(answer);
            ok.Output.Dispose();
            return ok.Report;
        }
        await Pass(a, Pins(a, 1, 1, 0), "a"); // warm-up: both models' layer actors hold their weights
        await PassOfB(0);
        long tensors = TensorProbe.LiveTensors();
        long bytesOf(EngineHarness h, int pins) => PinnedLayers.Spread(pins, h.Model.Layers.Count).Sum(i => h.Model.Layers[i].Bytes);

        await Pass(a, Pins(a, 2, 1, 2), "a");
        Assert.Equal(bytesOf(a, 2), a.Device.Memory.Reserved);
        var other = await PassOfB(1);
        Assert.Equal(0, other.PinnedReused);
        Assert.Equal(bytesOf(b, 1), a.Device.Memory.Reserved); // a's pinned layers went before b's pass: only b's stay
        var (_, again) = await Pass(a, Pins(a, 2, 1, 2), "a");
        Assert.Equal(0, again.PinnedReused); // loaded afresh
        await Pass(a, Pins(a, 2, 1, 0), "a"); // pins nothing: releases what was kept
        Assert.Equal(0, a.Device.Memory.Reserved);
        Assert.Equal(tensors, TensorProbe.LiveTensors());
    }

    [Fact]
    public async Task A_failed_pass_frees_its_window_and_releases_its_pinned_layers()
    {
        var spec = EngineHarness.Tiny(blocks: 4, hidden: 64, vocab: 100);
        var model = Engine.Models.ModelCatalog.Create(spec);
        var cost = ModelCost.From(model);
        // Room for pinned layer 5 (the head) with a window of 2 and activations, not for window 3 with swap 3 beside it.
        long capacity = cost.Layers[5].Bytes + cost.LargestLayersBytes(2) + cost.ActivationBoundBytes() + 1024;
        using var h = new EngineHarness(Sys, spec, capacity);
        var (good, _) = await Pass(h, Pins(h, 2, 1, 1), "m");
        Assert.Equal(cost.Layers[5].Bytes, h.Device.Memory.Reserved);
        long tensors = TensorProbe.LiveTensors();
        for (int i = 0; i < 20; i++)
        {
            var e = await Assert.ThrowsAsync<PassFailedException>(() => Pass(h, Pins(h, 3, 3, 1), "m"));
            Assert.Contains("out of memory", e.Message);
            Assert.Equal(0, h.Device.Memory.Reserved);
        }
        // The window's tensors and the released pinned layer's are gone (the kept one counted in the baseline).
        Assert.True(TensorProbe.LiveTensors() < tensors);
        var (again, report) = await Pass(h, Pins(h, 2, 1, 1), "m");
        Assert.Equal(good, again);
        Assert.Equal(0, report.PinnedReused); // loaded afresh
        Assert.Equal(tensors, TensorProbe.LiveTensors());
    }

    [Fact]
    public async Task Without_a_key_pinned_layers_are_freed_when_the_pass_ends()
    {
        using var h = new EngineHarness(Sys, EngineHarness.Tiny(blocks: 3), Roomy);
        var (_, first) = await Pass(h, Pins(h, 1, 1, 2), key: null);
        Assert.Equal(0, h.Device.Memory.Reserved);
        var (_, second) = await Pass(h, Pins(h, 1, 1, 2), key: null);
        Assert.Equal(0, second.PinnedReused);
        Assert.Equal(first.BytesTransferred, second.BytesTransferred);
    }

    [Fact]
    public async Task Jobs_of_the_same_model_on_a_worker_reuse_its_pinned_layers_and_say_so()
    {
        await using var host = EmbeddedHost.Start(new DeviceSpec(DeviceKind.Sim, 64L << 20, null), "superpipeline.pass-timeout = 60s");
        var spec = EngineHarness.Tiny(blocks: 4);
        var model = Engine.Models.ModelCatalog.Create(spec);
        long pinnedBytes = PinnedLayers.Spread(2, model.Layers.Count).Sum(i => model.Layers[i].Bytes);
        var policy = new PolicySpec(2, 1, ResidentLayers: 2);
        var first = Assert.IsType<JobSucceeded>(await host.RunAsync(new SubmitJob(JobId.New(), spec, policy)).WaitAsync(Wait));
        var second = Assert.IsType<JobSucceeded>(await host.RunAsync(new SubmitJob(JobId.New(), spec, policy)).WaitAsync(Wait));
        // Window = all pins every layer: the two kept by the jobs before are reused, the other four load.
        var resident = Assert.IsType<JobSucceeded>(await host.RunAsync(new SubmitJob(JobId.New(), spec, PolicySpec.Resident)).WaitAsync(Wait));
        Assert.Equal(2, resident.Report.PinnedReused);
        Assert.Equal(first.Report.BytesTransferred - pinnedBytes, resident.Report.BytesTransferred);
        Assert.Equal(resident.Output, first.Output);
        Assert.Equal(resident.Output, second.Output);
        Assert.Equal(new[] { 2, 5 }, second.Report.Pinned); // 2 of 6: ⌊(i+1)/3⌋ > ⌊i/3⌋ at i = 2 and 5
        Assert.Equal(0, first.Report.PinnedReused);
        Assert.Equal(2, second.Report.PinnedReused);
        Assert.Equal(first.Report.BytesTransferred - pinnedBytes, second.Report.BytesTransferred);
    }

    /// <summary>Two devices, two stages: each stage pins its share (one layer: its last) and keeps it for the next job; the job's
    /// report names the pinned layers by their index in the whole model.</summary>
    [Fact]
    public void Each_stage_pins_its_own_layers_and_the_job_report_names_them_in_the_model()
    {
        using var d0 = new Engine.Devices.SimulatedDevice("sim:0", 64L << 20);
        using var d1 = new Engine.Devices.SimulatedDevice("sim:1", 64L << 20);
        var settings = SuperpipelineSettings.Create(Sys.Settings.Config);
        var manager = Sys.ActorOf(JobManagerActor.Props(settings));
        Sys.ActorOf(NodeAgentActor.Props("local", [d0, d1], manager, settings));
        var spec = EngineHarness.Tiny(blocks: 4);
        IJobEvent Answer(PolicySpec policy)
        {
            manager.Tell(new SubmitJob(JobId.New(), spec, policy), TestActor);
            return FishForMessage<IJobEvent>(e => e is JobSucceeded or JobFailed or JobRefused, Wait);
        }
        var first = Assert.IsType<JobSucceeded>(Answer(new PolicySpec(1, 1, ResidentLayers: 1)));
        var second = Assert.IsType<JobSucceeded>(Answer(new PolicySpec(1, 1, ResidentLayers: 1)));
        var plain = Assert.IsType<JobSucceeded>(Answer(new PolicySpec(1, 1)));
        Assert.Equal(2, second.Report.Stages.Length);
        var lasts = second.Report.Stages.Select(st => st.FirstLayer + st.LayerCount - 1).ToArray();
        Assert.Equal(lasts, second.Report.Pinned);
        Assert.Equal(0, first.Report.PinnedReused);
        Assert.Equal(2, second.Report.PinnedReused);
        Assert.Equal(plain.Output, second.Output);
        Assert.Equal(first.Output, second.Output);
        Assert.Equal(0, d0.Memory.Reserved + d1.Memory.Reserved); // the job without pins released them
    }

    static readonly TimeSpan Wait = TimeSpan.FromSeconds(60);
}
