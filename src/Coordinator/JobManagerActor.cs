using Akka.Actor;
using Akka.Event;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;
using Superpipeline.Messages;
using Superpipeline.Workers;
using static Superpipeline.Messages.JobProtocol;
using static TorchSharp.torch;

namespace Superpipeline.Coordinator;

/// <summary>Takes jobs, checks them before any work starts, deploys the model (one LayerActor per layer),
/// and runs each pass on the device's loader. Every submitted job gets exactly one <see cref="JobSucceeded"/>
/// or <see cref="JobFailed"/>; a resubmitted id is answered from the record, never run twice. A failed job
/// leaves the manager serving the next one.</summary>
public sealed class JobManagerActor : ReceiveActor
{
    private sealed record PassDone(JobId Id, Deployment Deployment, Tensor Input, IActorRef Client, object Answer);

    private sealed class Deployment(ModelSpec key, LayeredModel model, IReadOnlyList<IActorRef> layers, Task ready)
    {
        /// <summary>Completes when every LayerActor holds its host weights: passes start after it, so their
        /// wall time measures the pass, not reading the checkpoint.</summary>
        public Task Ready { get; } = ready;
        public ModelSpec Key { get; } = key;
        public LayeredModel Model { get; } = model;
        public IReadOnlyList<IActorRef> Layers { get; } = layers;
        public int InFlight { get; set; }
    }

    readonly IDevice _device;
    readonly IActorRef _loader;
    readonly TimeSpan _askTimeout;
    readonly List<Deployment> _deployments = [];
    readonly Dictionary<JobId, IJobEvent?> _jobs = []; // null while running, then the one answer
    readonly Dictionary<JobId, List<IActorRef>> _waiters = [];
    readonly ILoggingAdapter _log = Context.GetLogger();
    int _deploymentCounter;

    public JobManagerActor(IDevice device, SuperpipelineSettings settings)
    {
        _device = device;
        _askTimeout = settings.AskTimeout;
        _loader = Context.ActorOf(DeviceLoaderActor.Props(device, settings.AskTimeout), $"{device.Kind}-loader-0");
        Receive<SubmitJob>(OnSubmit);
        Receive<PassDone>(OnPassDone);
    }

    /// <summary>Runs on the host dispatcher: it makes the input tensors and turns outputs into payloads.</summary>
    public static Props Props(IDevice device, SuperpipelineSettings settings) =>
        Akka.Actor.Props.Create(() => new JobManagerActor(device, settings)).WithDispatcher(Dispatchers.Host);

    void OnSubmit(SubmitJob job)
    {
        if (_jobs.TryGetValue(job.Id, out var answer))
        {
            if (answer is null) Waiters(job.Id).Add(Sender); // running: answer once, when it ends
            else Sender.Tell(answer);
            return;
        }

        LayeredModel model;
        Task<StreamPolicy> policy;
        try
        {
            model = ModelCatalog.Create(job.Model);
            CheckFits(model);
            policy = job.Policy.Auto ? PlanAsync(model) : Task.FromResult(StreamPolicy.Create(job.Policy, model.Layers.Count));
        }
        catch (ArgumentException e)
        {
            Finish(job.Id, Sender, new JobFailed(job.Id, e.Message));
            return;
        }

        _jobs[job.Id] = null;
        Sender.Tell(new JobAccepted(job.Id));
        var client = Sender;
        var deployment = Deploy(job.Model, model);
        deployment.InFlight++;
        var input = model.MakeInput(job.Model.Seed);
        var id = job.Id;
        var self = Self;
        var loader = _loader;
        Task.WhenAll(deployment.Ready, policy)
            .ContinueWith(ready => ready.IsCompletedSuccessfully
                ? loader.Ask<object>(new DeviceLoaderActor.RunPass(deployment.Model, deployment.Layers, input, policy.Result,
                    p => client.Tell(new JobProgress(id, p))), Timeout.InfiniteTimeSpan)
                : Task.FromException<object>(ready.Exception!.GetBaseException()), TaskScheduler.Default)
            .Unwrap()
            .PipeTo(self, success: a => new PassDone(id, deployment, input, client, a),
                failure: e => new PassDone(id, deployment, input, client, new DeviceLoaderActor.PassFailed(e.Message, e)));
    }

    void OnPassDone(PassDone done)
    {
        done.Input.Dispose();
        done.Deployment.InFlight--;
        IJobEvent answer = done.Answer switch
        {
            DeviceLoaderActor.PassSucceeded ok => Succeeded(done.Id, ok),
            DeviceLoaderActor.PassFailed failed => new JobFailed(done.Id, failed.Reason),
            var other => new JobFailed(done.Id, $"unexpected answer from the loader: {other.GetType().Name}"),
        };
        Finish(done.Id, done.Client, answer);
        RetireIdleDeployments();
    }

    static JobSucceeded Succeeded(JobId id, DeviceLoaderActor.PassSucceeded ok)
    {
        using var output = ok.Output;
        return new JobSucceeded(id, TensorPayloads.From(output), ok.Report);
    }

    void Finish(JobId id, IActorRef client, IJobEvent answer)
    {
        _jobs[id] = answer;
        client.Tell(answer);
        if (_waiters.Remove(id, out var others))
            foreach (var w in others) w.Tell(answer);
        if (answer is JobFailed f) _log.Info("job {0} failed: {1}", id, f.Reason);
    }

    List<IActorRef> Waiters(JobId id) => _waiters.TryGetValue(id, out var list) ? list : _waiters[id] = [];

    /// <summary>--window auto: measures the device, then lets the planner choose k and k' for its free bytes.</summary>
    async Task<StreamPolicy> PlanAsync(LayeredModel model)
    {
        var device = await DeviceCalibration.MeasureAsync(_device).ConfigureAwait(false);
        var plan = Planner.Choose(ModelCost.From(model), device, _device.Memory.Free);
        return StreamPolicy.Create(plan.Policy, model.Layers.Count);
    }

    /// <summary>Refuses a device smaller than the model's largest layer: no window could run it.</summary>
    void CheckFits(LayeredModel model)
    {
        var largest = model.Layers.MaxBy(l => l.Bytes)!;
        if (largest.Bytes > _device.Memory.Capacity)
            throw new ArgumentException($"--device-memory {_device.Memory.Capacity:N0} bytes is below the largest layer, {largest.Index} ({largest.Name}) of {largest.Bytes:N0} bytes");
    }

    Deployment Deploy(ModelSpec spec, LayeredModel model)
    {
        var key = spec with { Batch = 0 }; // weights do not depend on the batch
        var existing = _deployments.Find(d => d.Key == key);
        if (existing is not null)
        {
            _deployments.Remove(existing);
            _deployments.Add(existing); // most recently used last
            return existing;
        }
        int n = ++_deploymentCounter;
        var weights = ModelCatalog.Weights(spec);
        var layers = model.Layers
            .Select(l => Context.ActorOf(LayerActor.Props(l, weights, _device.WantsPinnedHost), $"m{n}-layer-{l.Index}"))
            .ToArray();
        var ready = Task.WhenAll(layers.Select(l => l.Ask<LayerActor.HostWeights>(LayerActor.GetWeights.Instance, _askTimeout)));
        var deployment = new Deployment(key, model, layers, ready);
        _deployments.Add(deployment);
        return deployment;
    }

    /// <summary>Keeps the most recent model deployed; older ones go once no pass uses them (their host weights are freed).</summary>
    void RetireIdleDeployments()
    {
        foreach (var d in _deployments.Take(_deployments.Count - 1).Where(d => d.InFlight == 0).ToArray())
        {
            foreach (var layer in d.Layers) Context.Stop(layer);
            _deployments.Remove(d);
        }
    }
}
