using System.Collections.Concurrent;
using Akka.Actor;
using Akka.Event;
using Akka.Streams;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Contracts;
using Superpipeline.Messages;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>The loader/executor of one device. It runs one pass at a time as a <see cref="PassStream"/>;
/// passes that arrive meanwhile wait in its queue (never dropped) and run in arrival order. Every request
/// gets exactly one answer: <see cref="PassSucceeded"/> or <see cref="PassFailed"/>.</summary>
public sealed class DeviceLoaderActor : ReceiveActor
{
    /// <summary>In-process: run <paramref name="Model"/> on <paramref name="Input"/> (a host tensor the caller keeps owning).
    /// <paramref name="Progress"/>, when given, is called (from device threads) for each layer event; it must only pass the record on.</summary>
    /// <paramref name="Inputs"/> are micro-batches: each layer, once loaded, computes every one of them before it is evicted,
    /// so one weight load serves them all (FlexGen-style), while each micro-batch keeps its own shape and bits.
    public sealed record RunPass(LayeredModel Model, IReadOnlyList<IActorRef> LayerActors, IReadOnlyList<Tensor> Inputs, OffloadPolicy Policy,
        Action<LayerProgress>? Progress = null) : INoSerializationVerificationNeeded
    {
        public RunPass(LayeredModel model, IReadOnlyList<IActorRef> layerActors, Tensor input, OffloadPolicy policy, Action<LayerProgress>? progress = null)
            : this(model, layerActors, new[] { input }, policy, progress) { }

        /// <summary>Stops the pass (queued or running) at its next step; it then fails and frees what it holds.</summary>
        public CancellationToken Stop { get; init; }

        /// <summary>Makes the pass one step of a generation session: its input is that step's token ids ([B, T] prefill,
        /// [B, 1] decode) and every layer runs its step forward over the session's KV caches. When such a pass fails, the
        /// session's device caches are freed with it.</summary>
        public GenerationStep? Step { get; init; }
    }

    /// <summary>Frees generation session <paramref name="Session"/>'s KV caches on this device (nothing when it holds none);
    /// send it when the session ends, after its last pass has answered. The answer is <see cref="SessionEnded"/>.</summary>
    public sealed record EndSession(Guid Session) : INoSerializationVerificationNeeded;

    public sealed record SessionEnded(Guid Session) : INoSerializationVerificationNeeded;

    /// <summary>The pass's output as a host tensor, now owned by the receiver, and its report.</summary>
    public sealed record PassSucceeded(IReadOnlyList<Tensor> Outputs, PassReport Report) : INoSerializationVerificationNeeded
    {
        /// <summary>The first (or only) micro-batch's output.</summary>
        public Tensor Output => Outputs[0];
    }
    public sealed record PassFailed(string Reason, Exception Cause) : INoSerializationVerificationNeeded;

    private sealed record Finished(IActorRef ReplyTo, object Answer) : INoSerializationVerificationNeeded;

    readonly Accelerator _device;
    readonly TimeSpan _askTimeout;
    readonly IMaterializer _materializer;
    readonly Queue<(RunPass Pass, IActorRef ReplyTo)> _waiting = new();
    readonly ConcurrentDictionary<Guid, DeviceKvSession> _sessions = new(); // device KV caches of live generation sessions

    public DeviceLoaderActor(Accelerator device, TimeSpan askTimeout)
    {
        _device = device;
        _askTimeout = askTimeout;
        _materializer = Context.Materializer();
        Idle();
    }

    protected override void PostStop()
    {
        foreach (var id in _sessions.Keys.ToArray()) FreeSession(id).Wait(_askTimeout);
    }

    public static Props Props(Accelerator device, TimeSpan askTimeout) =>
        Akka.Actor.Props.Create(() => new DeviceLoaderActor(device, askTimeout)).WithMailbox(Dispatchers.LoaderMailbox);

    void Idle()
    {
        Receive<RunPass>(p => Start(p, Sender));
        Receive<EndSession>(m => OnEndSession(m.Session));
    }

    void Busy()
    {
        Receive<RunPass>(p => _waiting.Enqueue((p, Sender)));
        Receive<EndSession>(m => OnEndSession(m.Session));
        Receive<Finished>(f =>
        {
            f.ReplyTo.Tell(f.Answer);
            if (_waiting.TryDequeue(out var next)) Start(next.Pass, next.ReplyTo);
            else Become(Idle);
        });
    }

    void Start(RunPass pass, IActorRef replyTo)
    {
        var log = Context.GetLogger();
        Become(Busy);
        Run(pass).ContinueWith(t =>
            {
                if (t.IsCompletedSuccessfully) return new Finished(replyTo, t.Result);
                var error = t.Exception?.GetBaseException() ?? new TaskCanceledException("the pass was cancelled");
                log.Warning("pass on {0} failed: {1}", _device.Name, error.Message);
                return new Finished(replyTo, new PassFailed(Describe(error), error));
            }, TaskScheduler.Default)
            .PipeTo(Self);
    }

    async Task<object> Run(RunPass pass)
    {
        // A session's first pass records the bytes held before it, so its passes' peaks include the caches it keeps.
        var session = pass.Step is { } step ? _sessions.GetOrAdd(step.Session, id => new DeviceKvSession(id, _device.Memory.Reserved)) : null;
        try
        {
            var backend = new DevicePassBackend(_device, pass.Model, pass.LayerActors, pass.Inputs, pass.Progress, _askTimeout, pass.Step, session);
            var gate = new WindowGate(pass.Policy, pass.Model.Layers.Select(l => l.Bytes).ToArray());
            pass.Stop.ThrowIfCancellationRequested();
            await PassStream.RunAsync(backend, gate, _materializer, pass.Stop).ConfigureAwait(false);
            return new PassSucceeded(backend.Outputs!, backend.Report(pass.Policy.Window, pass.Policy.Swap));
        }
        catch when (session is not null)
        {
            await FreeSession(session.Id).ConfigureAwait(false); // a failed step ends its session: nothing stays on the device
            throw;
        }
    }

    void OnEndSession(Guid session)
    {
        var replyTo = Sender;
        FreeSession(session).ContinueWith(_ => new SessionEnded(session), TaskScheduler.Default).PipeTo(replyTo);
    }

    /// <summary>Frees a session's device caches on the compute thread, where its passes use them.</summary>
    Task FreeSession(Guid id) => _sessions.TryRemove(id, out var session)
        ? _device.OnComputeThread(() => { session.Dispose(); return 0; })
        : Task.CompletedTask;

    /// <summary>One line for a person: the exception's own message, which names what was wrong.</summary>
    static string Describe(Exception e) => e switch
    {
        AskTimeoutException => $"a layer actor did not answer in time: {e.Message}",
        _ => e.Message.Split('\n')[0],
    };
}
