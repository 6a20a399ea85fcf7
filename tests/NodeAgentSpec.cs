using System.Collections.Immutable;
using Akka.Actor;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using Superpipeline.Engine.Devices;
using Superpipeline.Messages;
using Superpipeline.Workers;
using TorchSharp;
using static Superpipeline.Messages.StageProtocol;

namespace Superpipeline.Tests;

/// <summary>The node agent alone, with the test as its coordinator and time under TestScheduler: stage attempts end
/// with their cancellation and are not brought back by late messages, and deployments live under the host weight
/// budget and the idle timeout.</summary>
[Collection(TensorCountCollection.Name)]
public sealed class NodeAgentSpec : TestKit, IDisposable
{
    const string Config = """
        akka.scheduler.implementation = "Akka.TestKit.TestScheduler, Akka.TestKit"
        superpipeline.worker.deployment-idle-timeout = 5m
        superpipeline.worker.attempt-retention = 1m
        """;

    readonly SimulatedDevice _device = new("sim:0", 64L << 20);

    public NodeAgentSpec() : base(WorkerConfig.Load(null, Config))
    {
        IgnoreMessages(m => m is WorkerProtocol.RegisterWorker or StageProtocol.StageProgress); // heartbeats and progress
    }

    TestScheduler Scheduler => (TestScheduler)Sys.Scheduler;

    IActorRef Agent(long? budget = null)
    {
        var settings = SuperpipelineSettings.Create(Sys.Settings.Config);
        settings = settings with { Worker = settings.Worker with { HostWeightBudget = budget } };
        return Sys.ActorOf(NodeAgentActor.Props("local", [_device], TestActor, settings));
    }

    static ModelSpec Model(long seed) => EngineHarness.Tiny(seed);

    /// <summary>Stage <paramref name="stage"/> of <paramref name="stages"/>, each stage one equal share of the model's layers.</summary>
    StageAssignment Assign(string job, int attempt, long seed, int stage = 0, int stages = 1)
    {
        int layers = ModelCatalog.Create(Model(seed)).Layers.Count;
        int first = stage * layers / stages, count = (stage + 1) * layers / stages - first;
        return new StageAssignment(new JobId(job), attempt, stage, stages, Model(seed), [seed], first, count, "sim:0",
            new PolicySpec(1, 1), stage + 1 < stages ? TestActor : null, TestActor);
    }

    NodeAgentActor.Status Status(IActorRef agent) => agent.Ask<NodeAgentActor.Status>(NodeAgentActor.GetStatus.Instance, TimeSpan.FromSeconds(10)).Result;

    object Next() => ExpectMsg<object>(TimeSpan.FromSeconds(60));

    /// <summary>Any payload will do for a stage that must never run.</summary>
    static TensorPayload Junk => new("Float32", [1], [0, 0, 0, 0]);

    void RunToOutput(IActorRef agent, string job, long seed)
    {
        agent.Tell(Assign(job, 1, seed));
        Assert.IsType<StageDone>(Next());
        Assert.IsType<StageOutput>(Next());
    }

    [Fact]
    public void A_cancelled_attempt_runs_nothing_for_an_assignment_or_input_that_arrives_after_its_cancellation()
    {
        var agent = Agent();
        agent.Tell(new CancelAttempt(new JobId("a"), 1));
        agent.Tell(Assign("a", 1, 7)); // would run at once (stage 0) if the attempt came back
        agent.Tell(Assign("b", 1, 7, stage: 1, stages: 2));
        agent.Tell(new CancelAttempt(new JobId("b"), 1));
        agent.Tell(new StageInput(new JobId("b"), 1, 1, [Junk]));
        ExpectNoMsg(TimeSpan.FromMilliseconds(500));
        Assert.Equal(2, Status(agent).Attempts); // two tombstones, nothing else
        Assert.Empty(Status(agent).Deployments);

        agent.Tell(Assign("c", 1, 7)); // the agent still serves
        Assert.IsType<StageDone>(Next());
        Assert.IsType<StageOutput>(Next());
    }

    [Fact]
    public void Tombstones_and_inputs_that_never_get_their_assignment_are_forgotten_after_the_retention()
    {
        var agent = Agent();
        agent.Tell(new CancelAttempt(new JobId("gone"), 3));
        agent.Tell(new StageInput(new JobId("orphan"), 1, 1, [Junk]));
        AwaitAssert(() => Assert.Equal(2, Status(agent).Attempts), TimeSpan.FromSeconds(10));
        Scheduler.Advance(TimeSpan.FromSeconds(30));
        Assert.Equal(2, Status(agent).Attempts); // within the retention: kept
        Scheduler.Advance(TimeSpan.FromSeconds(61));
        AwaitAssert(() => Assert.Equal(0, Status(agent).Attempts), TimeSpan.FromSeconds(10));
        agent.Tell(new StageInput(new JobId("gone"), 3, 1, [Junk])); // later still: held, not run, then forgotten
        AwaitAssert(() => Assert.Equal(1, Status(agent).Attempts), TimeSpan.FromSeconds(10));
        Scheduler.Advance(TimeSpan.FromSeconds(91));
        AwaitAssert(() => Assert.Equal(0, Status(agent).Attempts), TimeSpan.FromSeconds(10));
        ExpectNoMsg(TimeSpan.FromMilliseconds(200));
    }

    [Fact]
    public void A_finished_attempt_leaves_nothing_behind_but_its_deployment()
    {
        var agent = Agent();
        RunToOutput(agent, "done", 7);
        var status = Status(agent);
        Assert.Equal(0, status.Attempts);
        Assert.Equal([DeploymentKey.Of(Model(7), 0, 5)], status.Deployments.ToArray());
        Assert.Equal(ModelCatalog.Create(Model(7)).Layers.Sum(l => l.Bytes), status.HostWeightBytes);
    }

    [Fact]
    public void An_idle_deployment_is_stopped_after_the_idle_timeout_and_its_host_tensors_are_freed()
    {
        var agent = Agent();
        long tensors = TensorProbe.LiveTensors();
        RunToOutput(agent, "first", 7);
        Assert.True(torch.Tensor.TotalCount > tensors, "the LayerActors hold host tensors");
        Scheduler.Advance(TimeSpan.FromMinutes(4));
        Assert.Single(Status(agent).Deployments); // idle, but not for long enough
        RunToOutput(agent, "again", 7); // used again: its idle time starts over
        Scheduler.Advance(TimeSpan.FromMinutes(4));
        Assert.Single(Status(agent).Deployments);
        Scheduler.Advance(TimeSpan.FromMinutes(2));
        AwaitAssert(() => Assert.Equal((0L, 0), (Status(agent).HostWeightBytes, Status(agent).Deployments.Length)), TimeSpan.FromSeconds(10));
        // Not more than before the deployment: its tensors are freed. (Equality would be racy: an earlier test's actor system
        // still shutting down may free tensors of its own meanwhile.)
        AwaitAssert(() => Assert.InRange(TensorProbe.LiveTensors(), 0, tensors), TimeSpan.FromSeconds(10));
    }

    [Fact]
    public void Over_the_budget_the_least_recently_used_idle_deployment_is_stopped_first()
    {
        long bytes = ModelCatalog.Create(Model(1)).Layers.Sum(l => l.Bytes);
        var agent = Agent(budget: 2 * bytes);
        RunToOutput(agent, "a", 1);
        RunToOutput(agent, "b", 2);
        RunToOutput(agent, "a-again", 1); // model 2 is now the least recently used
        RunToOutput(agent, "c", 3);
        var status = Status(agent);
        Assert.Equal([DeploymentKey.Of(Model(1), 0, 5), DeploymentKey.Of(Model(3), 0, 5)], status.Deployments.ToArray());
        Assert.Equal(2 * bytes, status.PeakHostWeightBytes);
        AwaitAssert(() => Assert.Equal(2 * bytes, Status(agent).HostWeightBytes), TimeSpan.FromSeconds(10));
    }

    [Fact]
    public void A_stage_whose_weights_alone_exceed_the_budget_fails_naming_both_figures()
    {
        long bytes = ModelCatalog.Create(Model(7)).Layers.Sum(l => l.Bytes);
        var agent = Agent(budget: bytes - 1);
        agent.Tell(Assign("big", 1, 7));
        var failed = Assert.IsType<StageFailed>(Next());
        Assert.Equal($"layers 0-4 of model demo (seed 7) need {bytes:N0} bytes of host weights, above this worker's host weight budget of {bytes - 1:N0} bytes",
            failed.Reason);
        Assert.Empty(Status(agent).Deployments);
        Assert.Equal(0, Status(agent).Attempts);
    }

    /// <summary>A training stage's host bytes (the stored weights, their float32 master copy, gradients and AdamW's two moments:
    /// five times a float32 model's weights) are a private deployment under the budget: more than the whole budget fails at once
    /// naming both figures; an idle deployment is stopped to make room (the opening waits until its actors have stopped); the
    /// bytes are free when the stage ends.</summary>
    [Fact]
    public async Task A_training_stage_counts_its_weights_gradients_and_optimizer_state_against_the_host_weight_budget()
    {
        string dir = Path.Combine(_dir, "llama");
        Assert.Equal(0, await Superpipeline.Coordinator.Cli.MainAsync(["export-demo", "--family", "llama", "--out", dir, "--layers", "2", "--hidden", "64",
            "--heads", "4", "--ffn", "128", "--vocab", "256", "--max-positions", "32", "--seed", "5", "--dtype", "f32"]));
        var spec = ModelCatalog.CheckpointSpec(dir, 2, 8, 0);
        var layers = ModelCatalog.Create(spec).Layers;
        long weights = layers.Sum(l => l.Bytes), need = 5 * weights;
        var adamw = new TrainingProtocol.TrainingOptimizer("adamw", 1e-3, 0, 0, 0.9, 0.999, 1e-8, null, 1);
        TrainingProtocol.OpenTraining Open(int attempt, IActorRef? coordinator = null) =>
            new(new JobId("train"), attempt, 0, 1, spec, 0, layers.Count, "sim:0", new PolicySpec(1, 1), adamw, coordinator ?? TestActor);

        var small = Agent(budget: need - 1);
        small.Tell(Open(1));
        var failed = Assert.IsType<TrainingProtocol.TrainingStageFailed>(Next());
        Assert.Contains($"need {need:N0} bytes", failed.Reason);
        Assert.Contains($"host weight budget of {need - 1:N0} bytes", failed.Reason);
        Assert.Empty(Status(small).Deployments);

        long seeded = ModelCatalog.Create(Model(1)).Layers.Sum(l => l.Bytes);
        Assert.True(seeded < need);
        var agent = Agent(budget: need);
        RunToOutput(agent, "inference", 1); // an idle deployment that training needs the room of
        agent.Tell(Open(2));
        var ready = Assert.IsType<TrainingProtocol.TrainingStageReady>(Next());
        Assert.Equal(4 * weights, ready.HostBytes); // what the layer actors report holding for training, beside their stored weights
        var status = Status(agent);
        Assert.Equal(need, status.HostWeightBytes);
        Assert.Equal(need, status.PeakHostWeightBytes); // the seeded deployment had stopped before the stage opened
        Assert.Equal("training stage 0 of train (attempt 2)", Assert.Single(status.Deployments).Session);

        ready.StageActor.Tell(new TrainingProtocol.EndTraining(new JobId("train"), 2));
        AwaitAssert(() => Assert.Equal(0, Status(agent).HostWeightBytes), TimeSpan.FromSeconds(10));
        Assert.Empty(Status(agent).Deployments);

        // A stage whose coordinator is gone (stopped, or its node lost) ends itself: nobody else would.
        var coordinator = CreateTestProbe();
        agent.Tell(Open(3, coordinator.Ref));
        coordinator.ExpectMsg<TrainingProtocol.TrainingStageReady>(TimeSpan.FromSeconds(60));
        Assert.Equal(need, Status(agent).HostWeightBytes);
        Sys.Stop(coordinator.Ref);
        AwaitAssert(() => Assert.Equal(0, Status(agent).HostWeightBytes), TimeSpan.FromSeconds(10));
    }

    readonly string _dir = Directory.CreateTempSubdirectory("superpipeline-agent-").FullName;

    void IDisposable.Dispose()
    {
        Shutdown();
        _device.Dispose();
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }
}
