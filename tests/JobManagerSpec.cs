using System.Collections.Immutable;
using Akka.Actor;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using Superpipeline.Coordinator;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Engine.Devices;
using Superpipeline.Messages;
using Superpipeline.Workers;
using static Superpipeline.Messages.JobProtocol;
using static Superpipeline.Messages.StageProtocol;
using static Superpipeline.Messages.WorkerProtocol;

namespace Superpipeline.Tests;

/// <summary>Jobs through the job manager: checked before any work, exactly one answer each, and the
/// system keeps serving after a failure. Some tests play the node agent with a probe, to see exactly what the
/// job manager sends and how it treats stale answers.</summary>
public sealed class JobManagerSpec : TestKit, IDisposable
{
    /// <summary>A client gives up well before CI does: a regression fails instead of hanging.</summary>
    const string TestConfig = "superpipeline.pass-timeout = 60s";
    static readonly TimeSpan Wait = TimeSpan.FromSeconds(60);

    readonly SimulatedDevice _device = new("sim:0", 64L << 20);
    readonly IActorRef _manager;

    public JobManagerSpec() : base(WorkerConfig.Load(null, TestConfig))
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
        // Embedding, 3 blocks, head: every progress names the whole model's 5 layers, in order.
        Assert.All(progress, p => Assert.Equal(5, p.Layers));
        Assert.Equal(Enumerable.Range(0, 5), progress.Select(p => p.Layer));
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
    [InlineData("demo", 9, 1, "window must be from 1 to 5 (the model's layers) or 'all'; got 9")]
    [InlineData("demo", 2, 3, "swap must be from 1 to the window (2); got 3")]
    public void Bad_jobs_are_refused_before_any_work_with_one_line(string model, int window, int swap, string reason)
    {
        _manager.Tell(new SubmitJob(JobId.New(), Tiny with { Name = model }, new PolicySpec(window, swap)), TestActor);
        var refused = ExpectMsg<JobRefused>(Wait); // the first and only answer: never accepted, so nothing ran
        Assert.Equal(reason, refused.Reason);
        ExpectNoMsg(TimeSpan.FromMilliseconds(200));
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
        // In the domain's words: the client may not have used the CLI, so it is told of no flag.
        Assert.StartsWith("device memory 600,000 bytes is below the largest layer, 0 (embed) of 641,024 bytes", refused.Reason);
        Assert.DoesNotContain("--", refused.Reason);
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
        await using var host = EmbeddedHost.Start(new DeviceSpec(DeviceKind.Sim, 64L << 20, null), TestConfig);
        var resident = Assert.IsType<JobSucceeded>(await host.RunAsync(new SubmitJob(JobId.New(), Tiny, PolicySpec.Resident)).WaitAsync(Wait));
        var streamed = Assert.IsType<JobSucceeded>(await host.RunAsync(new SubmitJob(JobId.New(), Tiny, new PolicySpec(1, 1))).WaitAsync(Wait));
        Assert.Equal(resident.Output, streamed.Output);
        Assert.True(streamed.Report.PeakDeviceBytes < resident.Report.PeakDeviceBytes);
    }

    /// <summary>A job manager whose one worker is a probe (the test plays its node agent) with one 64 MiB device. The
    /// heartbeat is long so that the silent probe is not swept away during the test.</summary>
    (IActorRef Manager, TestProbe Worker) WithProbeWorker(int maxRunning = 4, int maxMicroBatches = 4)
    {
        var settings = SuperpipelineSettings.Create(Sys.Settings.Config) with
        {
            Heartbeat = TimeSpan.FromHours(1), MaxRunningJobs = maxRunning, MaxMicroBatches = maxMicroBatches,
        };
        var manager = Sys.ActorOf(JobManagerActor.Props(settings));
        var worker = CreateTestProbe();
        manager.Tell(new RegisterWorker(worker.Ref, "probe", [new DeviceInfo("sim:0", DeviceKind.Sim, 64L << 20)]), worker.Ref);
        worker.ExpectMsg<WorkerRegistered>(Wait);
        return (manager, worker);
    }

    static ImmutableArray<TensorPayload> Outputs(params byte[] values) =>
        [.. values.Select(v => new TensorPayload("UInt8", [1], ImmutableArray.Create(v)))];

    [Fact]
    public void Progress_of_the_current_attempt_reaches_the_client_with_the_model_s_layer_count_and_stale_messages_do_not()
    {
        var (manager, worker) = WithProbeWorker();
        var id = new JobId("p1");
        manager.Tell(new SubmitJob(id, Tiny, new PolicySpec(1, 1)), TestActor);
        ExpectMsg<JobAccepted>(Wait);
        var stage = worker.ExpectMsg<StageAssignment>(Wait);
        Assert.Equal((id, 0, 1, 0, 5), (stage.Job, stage.Stage, stage.Stages, stage.FirstLayer, stage.LayerCount));

        manager.Tell(new StageProgress(id, stage.Attempt, 0, 3, LayerPhase.Computed, 0.5), worker.Ref);
        Assert.Equal(new JobProgress(id, new LayerProgress(3, 5, LayerPhase.Computed, 0.5)), ExpectMsg<JobProgress>(Wait));

        var stranger = CreateTestProbe();
        manager.Tell(new StageProgress(id, stage.Attempt + 1, 0, 4, LayerPhase.Computed, 0.6), worker.Ref); // another attempt
        manager.Tell(new StageProgress(id, stage.Attempt, 0, 4, LayerPhase.Computed, 0.6), stranger.Ref);  // not its stage's agent
        manager.Tell(new StageProgress(id, stage.Attempt, 1, 4, LayerPhase.Computed, 0.6), worker.Ref);    // no such stage
        manager.Tell(new StageOutput(id, stage.Attempt + 1, Outputs(9)), worker.Ref);                         // another attempt's output
        ExpectNoMsg(TimeSpan.FromMilliseconds(300));

        manager.Tell(new StageOutput(id, stage.Attempt, Outputs(7)), worker.Ref);
        var ok = ExpectMsg<JobSucceeded>(Wait);
        Assert.Equal(Outputs(7)[0], ok.Output);
        Assert.Equal(1, ok.Report.MicroBatches);
        manager.Tell(new StageOutput(id, stage.Attempt, Outputs(8)), worker.Ref); // the attempt is over: answered once only
        ExpectNoMsg(TimeSpan.FromMilliseconds(300));
    }

    [Fact]
    public void Jobs_queued_behind_a_running_one_are_coalesced_by_model_and_policy_when_it_is_answered()
    {
        var (manager, worker) = WithProbeWorker(maxRunning: 1, maxMicroBatches: 3);
        var ids = Enumerable.Range(1, 6).Select(i => new JobId($"c{i}")).ToArray();
        var other = new PolicySpec(2, 1);
        for (int i = 0; i < ids.Length; i++)
            manager.Tell(new SubmitJob(ids[i], Tiny, i == 2 ? other : new PolicySpec(1, 1), InputSeed: 100 + i), TestActor);
        for (int i = 0; i < ids.Length; i++) ExpectMsg<JobAccepted>(a => a.Id == ids[i], Wait);

        // c1 was placed alone when it arrived; the rest waited for room.
        var first = worker.ExpectMsg<StageAssignment>(Wait);
        Assert.Equal(ids[0], first.Job);
        Assert.Equal(new long[] { 100 }, first.Seeds.ToArray());
        worker.ExpectNoMsg(TimeSpan.FromMilliseconds(200));
        manager.Tell(new StageOutput(first.Job, first.Attempt, Outputs(1)), worker.Ref);
        Assert.Equal(ids[0], ExpectMsg<JobSucceeded>(Wait).Id);

        // Then c2, c4, c5 (same model and policy, up to three) in one attempt; c3 (its own policy) and c6 keep their places.
        var second = worker.ExpectMsg<StageAssignment>(Wait);
        Assert.Equal(ids[1], second.Job);
        Assert.Equal(new long[] { 101, 103, 104 }, second.Seeds.ToArray());
        Assert.True(second.Attempt > first.Attempt);
        manager.Tell(new StageOutput(second.Job, second.Attempt, Outputs(2, 4, 5)), worker.Ref);
        var answers = Enumerable.Range(0, 3).Select(_ => ExpectMsg<JobSucceeded>(Wait)).ToDictionary(a => a.Id, a => a.Output);
        Assert.Equal(Outputs(2)[0], answers[ids[1]]);
        Assert.Equal(Outputs(4)[0], answers[ids[3]]);
        Assert.Equal(Outputs(5)[0], answers[ids[4]]);

        var third = worker.ExpectMsg<StageAssignment>(Wait);
        Assert.Equal((ids[2], other), (third.Job, third.Policy));
        Assert.Equal(new long[] { 102 }, third.Seeds.ToArray());
        manager.Tell(new StageFailed(third.Job, third.Attempt, 0, "device sim:0 out of memory"), worker.Ref);
        Assert.Equal(new CancelAttempt(ids[2], third.Attempt), worker.ExpectMsg<CancelAttempt>(Wait));
        Assert.Equal(new JobFailed(ids[2], "device sim:0 out of memory"), ExpectMsg<JobFailed>(Wait));

        var last = worker.ExpectMsg<StageAssignment>(Wait);
        Assert.Equal(ids[5], last.Job);
        Assert.Equal(new long[] { 105 }, last.Seeds.ToArray());
    }

    void IDisposable.Dispose()
    {
        Shutdown();
        _device.Dispose();
    }
}
