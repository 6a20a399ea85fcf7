using Akka.Configuration;
using Akka.Streams;
using Akka.TestKit;
using Akka.TestKit.Xunit2;
using Superpipeline.Engine.Simulation;
using Superpipeline.Workers;

namespace Superpipeline.Tests;

/// <summary>The TestKit every virtual-time spec derives from: TestKit's TestScheduler as the actor system's scheduler, and
/// <see cref="RunVirtual"/>, the real loader stream (<see cref="PassStream"/>) over a <see cref="VirtualPassBackend"/> driven
/// event by event on that scheduler.</summary>
public abstract class VirtualTimeKit() : TestKit(ConfigurationFactory.ParseString(
    """akka.scheduler.implementation = "Akka.TestKit.TestScheduler, Akka.TestKit" """).WithFallback(WorkerConfig.Load()))
{
    /// <summary>A device fast enough that only the model's figures count: 1 GB/s, 1 TFLOP/s, no transfer latency.</summary>
    protected static readonly DeviceCost Gpu = new("gpu", 1L << 40, LinkBytesPerSecond: 1e9, FlopsPerSecond: 1e12, TransferLatencySeconds: 0);

    protected TestScheduler Scheduler => (TestScheduler)Sys.Scheduler;

    /// <summary>Each layer's bytes, in order: what a gate is built over.</summary>
    protected static long[] Bytes(ModelCost m) => [.. m.Layers.Select(l => l.Bytes)];

    IMaterializer Materializer() => Sys.Materializer(ActorMaterializerSettings.Create(Sys).WithDispatcher("akka.test.calling-thread-dispatcher"));

    /// <summary>Runs a pass through the actor-path stream, advancing virtual time event by event, with the layers of
    /// <paramref name="warm"/> (none when null) already on the device. Each advance completes a step synchronously; the stream
    /// (on the calling-thread dispatcher) reacts on this thread before the advance returns, so no step can start late. xunit's
    /// synchronization context is lifted for the duration: with it in place, await continuations would be posted instead of
    /// run inline. A pass that has not completed after 30 s of wall time is a <see cref="TimeoutException"/>.</summary>
    protected SimulatedPass RunVirtual(ModelCost model, DeviceCost device, Func<LoadGate> gate, IReadOnlySet<int>? warm = null)
    {
        var context = SynchronizationContext.Current;
        SynchronizationContext.SetSynchronizationContext(null);
        try { return RunVirtualInline(model, device, gate, warm); }
        finally { SynchronizationContext.SetSynchronizationContext(context); }
    }

    SimulatedPass RunVirtualInline(ModelCost model, DeviceCost device, Func<LoadGate> gate, IReadOnlySet<int>? warm)
    {
        var backend = new VirtualPassBackend(model, device, Scheduler, warm);
        var g = gate();
        var pass = PassStream.RunAsync(backend, g, Materializer());
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!pass.IsCompleted)
        {
            // Nothing due yet: the stream is between steps. Wait for the pass (woken at once if it ends), bounded.
            if (!backend.AdvanceToNext(Scheduler.AdvanceTo)) ((IAsyncResult)pass).AsyncWaitHandle.WaitOne(1);
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"the virtual pass did not complete: {backend.Describe()}, scheduler at {Scheduler.Now:O}");
        }
        pass.GetAwaiter().GetResult();
        return backend.Result(g.Describe());
    }
}
