using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Coordinator;
using Superpipeline.Engine.Devices;
using Superpipeline.Workers;
using Xunit.Abstractions;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Tests;

/// <summary>Deployments through a real job manager and node agent in one actor system, as `run` builds them: many
/// models (a new seed is a new model) pass through one worker whose host weight budget holds only a few of them.</summary>
public sealed class DeploymentSpec(ITestOutputHelper output) : TestKit(WorkerConfig.Load()), IDisposable
{
    readonly SimulatedDevice _device = new("sim:0", 64L << 20);

    static ModelSpec Model(long seed) => EngineHarness.Tiny(seed);

    /// <summary>Every seed's model has the same shape, so the same host bytes: its layers' parameters.</summary>
    static long DeploymentBytes => ModelCatalog.Create(Model(1)).Layers.Sum(l => l.Bytes);

    (IActorRef Manager, IActorRef Agent) Start(long budget)
    {
        var settings = SuperpipelineSettings.Create(Sys.Settings.Config);
        settings = settings with { Worker = settings.Worker with { HostWeightBudget = budget } };
        var manager = Sys.ActorOf(JobManagerActor.Props(settings), "job-manager");
        var agent = Sys.ActorOf(NodeAgentActor.Props("local", [_device], manager, settings), "node-agent");
        return (manager, agent);
    }

    NodeAgentActor.Status Status(IActorRef agent) => agent.Ask<NodeAgentActor.Status>(NodeAgentActor.GetStatus.Instance, TimeSpan.FromSeconds(10)).Result;

    /// <summary>The model's output from a resident pass on its own device and LayerActors, without job manager or agent.</summary>
    byte[] Reference(long seed)
    {
        using var harness = new EngineHarness(Sys, Model(seed), 64L << 20);
        return harness.Pass(harness.Policy(null)).Result.Output;
    }

    [Fact]
    public void Fifty_jobs_of_fifty_seeds_keep_host_weights_within_the_budget_and_every_output_is_right()
    {
        long budget = 3 * DeploymentBytes;
        var (manager, agent) = Start(budget);
        var seeds = Enumerable.Range(1, 50).Select(i => (long)i).ToArray();
        foreach (var seed in seeds) manager.Tell(new SubmitJob(new JobId($"seed-{seed}"), Model(seed), new PolicySpec(2, 1)), TestActor);

        var outputs = new Dictionary<string, TensorPayload>();
        var samples = new List<NodeAgentActor.Status>();
        while (outputs.Count < seeds.Length)
        {
            var e = FishForMessage<IJobEvent>(e => e is JobSucceeded or JobFailed or JobRefused, TimeSpan.FromSeconds(120));
            outputs[e.Id.Value] = Assert.IsType<JobSucceeded>(e).Output;
            samples.Add(Status(agent)); // after each job
        }

        Assert.All(samples, s => Assert.InRange(s.HostWeightBytes, 0, budget));
        Assert.All(samples, s => Assert.InRange(s.Deployments.Length, 1, 3));
        var last = samples[^1];
        Assert.InRange(last.PeakHostWeightBytes, DeploymentBytes, budget); // never above it, even between samples
        Assert.Equal(0, last.Attempts);
        output.WriteLine($"budget {budget:N0} bytes = 3 deployments; peak {last.PeakHostWeightBytes:N0}; " +
            $"most deployments at a sample {samples.Max(s => s.Deployments.Length)}");

        foreach (var seed in seeds)
            Assert.Equal(Reference(seed), outputs[$"seed-{seed}"].Bytes.ToArray());
    }

    [Fact]
    public void A_model_whose_weights_exceed_the_budget_fails_with_one_line_naming_both_figures_and_the_next_job_runs()
    {
        var (manager, agent) = Start(DeploymentBytes - 1);
        manager.Tell(new SubmitJob(new JobId("big"), Model(7), new PolicySpec(1, 1)), TestActor);
        var failed = FishForMessage<JobFailed>(_ => true, TimeSpan.FromSeconds(60));
        Assert.Equal($"layers 0-4 of model demo (seed 7) need {DeploymentBytes:N0} bytes of host weights, " +
            $"above this worker's host weight budget of {DeploymentBytes - 1:N0} bytes", failed.Reason);
        Assert.Equal(0, Status(agent).HostWeightBytes);

        manager.Tell(new SubmitJob(new JobId("small"), Model(7) with { Blocks = 1 }, new PolicySpec(1, 1)), TestActor);
        FishForMessage<JobSucceeded>(_ => true, TimeSpan.FromSeconds(60));
    }

    void IDisposable.Dispose()
    {
        Shutdown();
        _device.Dispose();
    }
}
