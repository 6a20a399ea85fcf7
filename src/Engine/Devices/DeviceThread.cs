using System.Collections.Concurrent;

namespace Superpipeline.Engine.Devices;

/// <summary>One dedicated OS thread that runs work items in order. TorchSharp's dispose scopes are
/// thread-static, so each item opens and closes its own scope and never awaits inside.</summary>
public sealed class DeviceThread : IDisposable
{
    readonly BlockingCollection<Action> _work = new();
    readonly Thread _thread;

    public DeviceThread(string name)
    {
        Name = name;
        _thread = new Thread(Loop) { IsBackground = true, Name = name };
        _thread.Start();
    }

    public string Name { get; }

    /// <summary>Queues <paramref name="work"/>; the task completes (off this thread) with its result or exception.</summary>
    public Task<T> Run<T>(Func<T> work)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        try
        {
            _work.Add(() =>
            {
                try { done.SetResult(work()); }
                catch (Exception e) { done.SetException(e); }
            });
        }
        catch (InvalidOperationException)
        {
            done.SetException(new ObjectDisposedException(Name, $"device thread {Name} has stopped"));
        }
        return done.Task;
    }

    public Task Run(Action work) => Run(() => { work(); return true; });

    void Loop()
    {
        foreach (var item in _work.GetConsumingEnumerable()) item();
    }

    public void Dispose()
    {
        _work.CompleteAdding();
        if (Thread.CurrentThread != _thread) _thread.Join();
    }
}
