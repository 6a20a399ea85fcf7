using System.Threading.Channels;
using Akka.Actor;
using Superpipeline.Engine.Devices;
using Superpipeline.Contracts;
using Superpipeline.Messages;
using Superpipeline.Workers;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Coordinator.Cluster;

/// <summary>Role "both" in one process: the same job manager and node agent as a cluster, in one actor system
/// with one device. It is what <c>superpipeline run</c> and <c>bench</c> use, and what tests drive.</summary>
public sealed class EmbeddedHost : IAsyncDisposable
{
    EmbeddedHost(ActorSystem system, Accelerator device, IActorRef jobManager, SuperpipelineSettings settings)
    {
        System = system;
        Device = device;
        JobManager = jobManager;
        Settings = settings;
    }

    public ActorSystem System { get; }
    public Accelerator Device { get; }
    public IActorRef JobManager { get; }
    public SuperpipelineSettings Settings { get; }

    public static EmbeddedHost Start(DeviceSpec device, string? configOverrides = null)
    {
        var config = WorkerConfig.Load(null, configOverrides);
        var settings = SuperpipelineSettings.Create(config);
        var dev = DeviceFactory.Create(device);
        var system = ActorSystem.Create("superpipeline", config);
        DeadLetters.Monitor(system);
        var manager = system.ActorOf(JobManagerActor.Props(settings), "job-manager");
        system.ActorOf(NodeAgentActor.Props("local", [dev], manager, settings), "node-agent");
        return new EmbeddedHost(system, dev, manager, settings);
    }

    /// <summary>Submits a job; the returned reader yields its progress and then exactly one terminal event.</summary>
    public ChannelReader<IJobEvent> Submit(SubmitJob job)
    {
        var channel = Channel.CreateUnbounded<IJobEvent>(new UnboundedChannelOptions { SingleReader = true });
        System.ActorOf(ClientActor.Props(JobManager, job, channel.Writer, Settings.PassTimeout, Settings.ResubmitAfter),
            $"client-{job.Id.Value}-{Guid.NewGuid():N}");
        return channel.Reader;
    }

    /// <summary>Submits and waits for the terminal event, passing progress to <paramref name="onProgress"/> (a generation job's
    /// tokens to <paramref name="onToken"/>).</summary>
    public Task<IJobEvent> RunAsync(SubmitJob job, Action<LayerProgress>? onProgress = null, Action<JobToken>? onToken = null) =>
        JobEvents.LastAsync(Submit(job), job.Id, onProgress, onToken);

    public async ValueTask DisposeAsync()
    {
        await System.Terminate();
        Device.Dispose();
    }
}

/// <summary>Reading a job's events as a client does.</summary>
public static class JobEvents
{
    /// <summary>Reads progress (passed to <paramref name="onProgress"/>, a generation job's tokens to <paramref name="onToken"/>) until
    /// the one terminal event, and returns it.</summary>
    public static async Task<IJobEvent> LastAsync(ChannelReader<IJobEvent> events, JobId id, Action<LayerProgress>? onProgress,
        Action<JobToken>? onToken = null)
    {
        IJobEvent? last = null;
        await foreach (var e in events.ReadAllAsync())
        {
            if (e is JobProgress p) onProgress?.Invoke(p.Progress);
            if (e is JobToken t) onToken?.Invoke(t);
            last = e;
        }
        return last ?? new JobFailed(id, "the client stopped without an answer");
    }
}
