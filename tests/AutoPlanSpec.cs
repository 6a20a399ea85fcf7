using Akka.TestKit.Xunit2;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Coordinator;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Simulation;
using Superpipeline.Messages;
using Superpipeline.Workers;
using static Superpipeline.Messages.JobProtocol;
using static Superpipeline.Messages.StageProtocol;
using static Superpipeline.Messages.WorkerProtocol;

namespace Superpipeline.Tests;

/// <summary>`--window auto` plans from the device the worker measured, not from fixed figures.</summary>
public sealed class AutoPlanSpec() : TestKit(WorkerConfig.Load())
{
    static readonly ModelSpec Spec = EngineHarness.Tiny(blocks: 6, hidden: 64, vocab: 100);

    [Fact]
    public void Window_auto_plans_from_the_compute_rate_and_link_the_worker_reported()
    {
        var cost = ModelCost.From(ModelCatalog.Create(Spec));
        long capacity = cost.LargestLayersBytes(4) + cost.ActivationBoundBytes();
        const double flops = 1e9, link = 16e9;
        var expected = Planner.Choose(cost, new DeviceCost("sim:0", capacity, link, flops), capacity).Policy;
        var formerFixedGuess = Planner.Choose(cost, new DeviceCost("sim:0", capacity, 16e9, 1e11), capacity).Policy;
        Assert.NotEqual(formerFixedGuess, expected); // the reported figures decide the plan here

        var agent = CreateTestProbe();
        var manager = Sys.ActorOf(JobManagerActor.Props(SuperpipelineSettings.Create(Sys.Settings.Config)));
        var measured = new DeviceCost("sim:0", capacity, link, flops);
        manager.Tell(new RegisterWorker(agent.Ref, "n1", [new DeviceInfo("sim:0", DeviceKind.Sim, capacity, measured)]), agent.Ref);
        agent.ExpectMsg<WorkerRegistered>(TimeSpan.FromSeconds(10));
        manager.Tell(new SubmitJob(new JobId("auto"), Spec, PolicySpec.Planned), TestActor);
        ExpectMsg<JobAccepted>(TimeSpan.FromSeconds(10));
        var stage = agent.ExpectMsg<StageAssignment>(TimeSpan.FromSeconds(10));
        Assert.Equal(expected, stage.Policy);
    }

    [Fact]
    public void Window_auto_refuses_a_device_registered_without_measurements_naming_it()
    {
        var agent = CreateTestProbe();
        var manager = Sys.ActorOf(JobManagerActor.Props(SuperpipelineSettings.Create(Sys.Settings.Config)));
        manager.Tell(new RegisterWorker(agent.Ref, "n1", [new DeviceInfo("sim:7", DeviceKind.Sim, 64L << 20)]), agent.Ref);
        agent.ExpectMsg<WorkerRegistered>(TimeSpan.FromSeconds(10));
        manager.Tell(new SubmitJob(new JobId("auto"), Spec, PolicySpec.Planned), TestActor);
        ExpectMsg<JobAccepted>(TimeSpan.FromSeconds(10));
        var refused = ExpectMsg<JobRefused>(TimeSpan.FromSeconds(10));
        Assert.Contains("device sim:7", refused.Reason);
        Assert.Contains("measured", refused.Reason);
        agent.ExpectNoMsg(TimeSpan.FromMilliseconds(100));
    }

    [Fact]
    public async Task A_worker_registers_each_device_as_measured_once()
    {
        using var device = new SimulatedDevice("sim:0", 64L << 20, linkGBps: 2);
        var coordinator = CreateTestProbe();
        Sys.ActorOf(NodeAgentActor.Props("n1", [device], coordinator.Ref, SuperpipelineSettings.Create(Sys.Settings.Config)));
        var register = await coordinator.ExpectMsgAsync<RegisterWorker>(TimeSpan.FromSeconds(30));
        var info = Assert.Single(register.Devices);
        Assert.True(info.Cost!.FlopsPerSecond > 0);
        Assert.Equal(2e9, info.Cost.LinkBytesPerSecond); // the emulated link is what a transfer gets
        Assert.Equal(("sim:0", 64L << 20), (info.Cost.Name, info.Cost.CapacityBytes)); // the device's own name and capacity
        Assert.Same(DeviceCalibration.MeasureOnceAsync(device), DeviceCalibration.MeasureOnceAsync(device));
        Assert.Equal(info.Cost, await DeviceCalibration.MeasureOnceAsync(device));

        var serializer = Sys.Serialization.FindSerializerFor(register);
        var back = (RegisterWorker)Sys.Serialization.Deserialize(serializer.ToBinary(register), serializer.Identifier,
            ((Akka.Serialization.SerializerWithStringManifest)serializer).Manifest(register));
        Assert.Equal(info, Assert.Single(back.Devices)); // the measured figures cross the wire
    }
}
