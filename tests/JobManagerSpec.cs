using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Coordinator;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Engine.Devices;
using Superpipeline.Contracts;
using Superpipeline.Messages;
using Superpipeline.Workers;
using Xunit;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Tests;

/// <summary>Jobs through the job manager: checked before any work, exactly one answer each, and the
/// system keeps serving after a failure.</summary>
public sealed class JobManagerSpec : TestKit, IDisposable
{
    readonly SimulatedDevice _device = new("sim:0", 64L << 20);
    readonly IActorRef _manager;

    public JobManagerSpec() : base(WorkerConfig.Load())
    {
        _manager = Start(_device);
    }

    /// <summary>A job manager with one node agent that owns <paramref name="device"/>, as `run` starts them.</summary>
    IActorRef Start(SimulatedDevice device)
    {
        var settings = SuperpipelineSettings.Create(Sys.Settings.Config);
        var manager = Sys.ActorOf(JobManagerActor.Props(settings));
        Sys.ActorOf(NodeAgentActor.Props("local", [device], manager, settings));
        return manager;
    }

    static ModelSpec Tiny => EngineHarness.Tiny();

    IJobEvent Answer(SubmitJob job)
    {
        _manager.Tell(job, TestActor);
        return FishForMessage<IJobEvent>(e => e is JobSucceeded or JobFailed or JobRefused, TimeSpan.FromSeconds(60));
    }

    [Fact]
    public void A_job_is_accepted_reports_progress_and_succeeds_once()
    {
        var job = new SubmitJob(new JobId("j1"), Tiny, new PolicySpec(2, 1));
        _manager.Tell(job, TestActor);
        ExpectMsg<JobAccepted>(a => a.Id == job.Id);
        var progress = new List<LayerProgress>();
        var done = FishForMessage<IJobEvent>(e =>
        {
            if (e is JobProgress p) progress.Add(p.Progress);
            return e is JobSucceeded or JobFailed;
        }, TimeSpan.FromSeconds(60));
        var ok = Assert.IsType<JobSucceeded>(done);
        Assert.Equal(5, progress.Count(p => p.Phase == LayerPhase.Computed));
        Assert.Equal("Float32", ok.Output.DType);
        Assert.Equal(new long[] { 2, 8, 64 }, ok.Output.Shape);
        ExpectNoMsg(TimeSpan.FromMilliseconds(200));
    }

    [Fact]
    public void A_resubmitted_id_is_answered_from_the_record_and_never_runs_twice()
    {
        var job = new SubmitJob(new JobId("same"), Tiny, new PolicySpec(1, 1));
        var first = Assert.IsType<JobSucceeded>(Answer(job));
        _manager.Tell(job, TestActor);
        var second = ExpectMsg<JobSucceeded>(TimeSpan.FromSeconds(10)); // no JobAccepted, no progress: not run again
        Assert.Equal(first, second);
    }

    [Fact]
    public void Answered_jobs_beyond_the_record_limit_are_forgotten_oldest_first()
    {
        var settings = SuperpipelineSettings.Create(Sys.Settings.Config) with { MaxJobRecords = 2 };
        var manager = Sys.ActorOf(JobManagerActor.Props(settings));
        Sys.ActorOf(NodeAgentActor.Props("local", [_device], manager, settings));
        IJobEvent Run(string id)
        {
            manager.Tell(new SubmitJob(new JobId(id), Tiny, new PolicySpec(1, 1)), TestActor);
            return FishForMessage<IJobEvent>(e => e is JobAccepted or JobSucceeded or JobFailed or JobRefused, TimeSpan.FromSeconds(60));
        }
        foreach (var id in new[] { "r1", "r2", "r3" })
        {
            Assert.IsType<JobAccepted>(Run(id));
            FishForMessage<JobSucceeded>(_ => true, TimeSpan.FromSeconds(60));
        }
        Assert.IsType<JobSucceeded>(Run("r3")); // remembered: answered at once, not accepted again
        Assert.IsType<JobAccepted>(Run("r1"));  // forgotten: runs as a new job
        FishForMessage<JobSucceeded>(_ => true, TimeSpan.FromSeconds(60));
    }

    [Fact]
    public void An_id_reused_for_a_different_job_is_refused()
    {
        Assert.IsType<JobSucceeded>(Answer(new SubmitJob(new JobId("reused"), Tiny, new PolicySpec(1, 1))));
        var refused = Assert.IsType<JobRefused>(Answer(new SubmitJob(new JobId("reused"), Tiny with { Blocks = 2 }, new PolicySpec(1, 1))));
        Assert.Equal("job id reused was already used for a different job; choose a new id", refused.Reason);
    }

    [Theory]
    [InlineData("bert", 1, 1, "unknown model 'bert' (known: demo, gpt)")]
    [InlineData("demo", 9, 1, "--window must be from 1 to 5 (the model's layers) or 'all'; got 9")]
    [InlineData("demo", 2, 3, "--swap must be from 1 to the window (2); got 3")]
    public void Bad_jobs_are_refused_before_any_work_with_one_line(string model, int window, int swap, string reason)
    {
        var refused = Assert.IsType<JobRefused>(Answer(new SubmitJob(JobId.New(), Tiny with { Name = model }, new PolicySpec(window, swap))));
        Assert.Equal(reason, refused.Reason);
        Assert.Equal(0, _device.Memory.Reserved);
    }

    [Fact]
    public void A_device_below_the_largest_layer_is_refused_naming_that_layer_and_its_bytes()
    {
        // vocab 5000 × hidden 32 × 4 bytes: the embedding (and head) outgrow a 600 KB device.
        using var small = new SimulatedDevice("sim:1", 600_000);
        var manager = Start(small);
        manager.Tell(new SubmitJob(JobId.New(), Tiny with { Vocab = 5000 }, new PolicySpec(1, 1)), TestActor);
        var refused = FishForMessage<JobRefused>(_ => true, TimeSpan.FromSeconds(10));
        Assert.StartsWith("--device-memory 600,000 bytes is below the largest layer, 0 (embed) of 641,024 bytes", refused.Reason);
    }

    [Fact]
    public void After_a_failed_pass_the_system_serves_the_next_one()
    {
        // 700 KB holds one block of this model (about 445 KB) with its activations, not all six layers at once.
        using var small = new SimulatedDevice("sim:2", 700_000);
        var manager = Start(small);
        var spec = Tiny with { Hidden = 96, Heads = 4, Blocks = 4 };
        manager.Tell(new SubmitJob(new JobId("too-big"), spec, PolicySpec.Resident), TestActor);
        var failed = FishForMessage<JobFailed>(_ => true, TimeSpan.FromSeconds(60));
        Assert.Contains("device sim:2 out of memory", failed.Reason);
        Assert.Equal(0, small.Memory.Reserved);
        manager.Tell(new SubmitJob(new JobId("fits"), spec, new PolicySpec(1, 1)), TestActor);
        FishForMessage<JobSucceeded>(_ => true, TimeSpan.FromSeconds(60));
        Assert.Equal(0, small.Memory.Reserved);
    }

    [Fact]
    public async Task Embedded_host_runs_a_job_to_the_same_output_as_resident()
    {
        await using var host = EmbeddedHost.Start(new DeviceSpec("sim", 64L << 20, null));
        var resident = Assert.IsType<JobSucceeded>(await host.RunAsync(new SubmitJob(JobId.New(), Tiny, PolicySpec.Resident)));
        var streamed = Assert.IsType<JobSucceeded>(await host.RunAsync(new SubmitJob(JobId.New(), Tiny, new PolicySpec(1, 1))));
        Assert.Equal(resident.Output, streamed.Output);
        Assert.True(streamed.Report.PeakDeviceBytes < resident.Report.PeakDeviceBytes);
    }

    void IDisposable.Dispose()
    {
        Shutdown();
        _device.Dispose();
    }
}
