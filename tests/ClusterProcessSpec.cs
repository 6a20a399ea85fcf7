using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using Akka.Actor;
using Superpipeline.Coordinator;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Engine.Simulation;
using Superpipeline.Messages;
using Xunit.Abstractions;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Tests;

/// <summary>A real cluster: a coordinator and two workers as separate <c>superpipeline host</c> processes, a job
/// submitted through <see cref="SubmitClient"/>, and one worker process killed while the job runs.</summary>
public sealed class ClusterProcessSpec(ITestOutputHelper output) : IDisposable
{
    /// <summary>Shorter failure detection than hocon/superpipeline.conf, and INFO logging so that the coordinator
    /// says when a worker registered (and so that a failure shows what every process did).</summary>
    const string FastConfig = """
        akka.loglevel = INFO
        akka.stdout-loglevel = INFO
        akka.cluster.split-brain-resolver.stable-after = 2s
        akka.cluster.failure-detector.heartbeat-interval = 500ms
        akka.cluster.failure-detector.acceptable-heartbeat-pause = 3s
        superpipeline.heartbeat = 1s
        superpipeline.resubmit-after = 3s
        """;

    const string ClientConfig = """
        akka.remote.dot-netty.tcp.hostname = "127.0.0.1"
        superpipeline.resubmit-after = 3s
        superpipeline.pass-timeout = 90s
        """;

    /// <summary>26 streamed layers (177 MB). The devices' emulated 0.05 GB/s link makes one pass take seconds, so a
    /// worker can be killed mid-job; each 64 MiB device needs only a window of two layers and the activations.</summary>
    static readonly ModelSpec Model = new("demo", Blocks: 24, Hidden: 384, Heads: 6, Vocab: 2048, Sequence: 128, Batch: 4, Seed: 7);
    static readonly PolicySpec Policy = new(2, 1);
    const string WorkerDevices = "sim:2x64MiB@0.05";

    static readonly TimeSpan Patience = TimeSpan.FromSeconds(45);

    readonly string _dir = Directory.CreateTempSubdirectory("superpipeline-cluster-").FullName;
    readonly List<HostProcess> _processes = [];

    [Theory]
    [InlineData("first stages")]
    [InlineData("last stages")]
    public async Task A_job_survives_a_killed_worker_process_and_matches_one_device_bitwise(string victim)
    {
        try
        {
            var config = Path.Combine(_dir, "fast.conf");
            File.WriteAllText(config, FastConfig);
            // Every host binds port 0 and the test reads the port it got from its stdout: no port is picked by the test
            // and released before a child binds it.
            var coordinator = StartHost("coordinator", ["--role", "coordinator", "--hostname", "127.0.0.1", "--port", "0", "--config", config]);
            int cPort = await coordinator.BoundPort(Patience);
            string[] worker =
                ["--role", "worker", "--hostname", "127.0.0.1", "--port", "0", "--seed", $"127.0.0.1:{cPort}", "--devices", WorkerDevices, "--config", config];
            var a = StartHost("worker-a", worker);
            var b = StartHost("worker-b", worker);
            int aPort = await a.BoundPort(Patience), bPort = await b.BoundPort(Patience);

            // The reference, in this process on one device, while the members start.
            TensorPayload reference;
            await using (var single = EmbeddedHost.Start(new DeviceSpec(DeviceKind.Sim, 256L << 20, null)))
                reference = Assert.IsType<JobSucceeded>(await single.RunAsync(new SubmitJob(JobId.New(), Model, Policy)).WaitAsync(Patience)).Output;

            await coordinator.WaitForLine($"worker 127.0.0.1:{aPort} registered 2 device(s)", Patience);
            await coordinator.WaitForLine($"worker 127.0.0.1:{bPort} registered 2 device(s)", Patience);

            // With both workers' four devices registered, the placement is four stages over both nodes; stages are
            // ordered by node name, so one worker runs the first two stages and the other the last two.
            var nodes = new[] { (Node: $"127.0.0.1:{aPort}", Host: a), (Node: $"127.0.0.1:{bPort}", Host: b) }
                .OrderBy(n => n.Node, StringComparer.Ordinal).ToArray();
            var planned = PlannedStages(nodes.Select(n => n.Node).ToArray());
            Assert.Equal(4, planned.Count);
            Assert.Equal(new[] { nodes[0].Node, nodes[0].Node, nodes[1].Node, nodes[1].Node }, planned.Select(p => p.Slot.Node));
            var (killed, survivor) = victim == "first stages" ? (nodes[0], nodes[1]) : (nodes[1], nodes[0]);

            await using var client = SubmitClient.Start([$"127.0.0.1:{cPort}"], "127.0.0.1", ClientConfig);
            var job = new SubmitJob(new JobId($"kill-{killed.Node.Replace(':', '-')}"), Model, Policy);
            var events = new List<IJobEvent>();
            var reader = client.Submit(job);
            using (var cancel = new CancellationTokenSource(Patience))
            {
                await foreach (var e in reader.ReadAllAsync(cancel.Token))
                {
                    events.Add(e);
                    if (e is JobProgress && !killed.Host.Killed)
                    {
                        output.WriteLine($"first progress {((JobProgress)e).Progress}; killing {killed.Host.Name} ({killed.Node}, {victim})");
                        killed.Host.Kill();
                    }
                }
            }

            Assert.True(killed.Host.Killed, "no progress arrived before the answer, so no worker was killed mid-job");
            var terminal = events.Where(e => e is JobSucceeded or JobFailed or JobRefused).ToArray();
            var ok = Assert.IsType<JobSucceeded>(Assert.Single(terminal));
            Assert.IsType<JobSucceeded>(events[^1]);
            Assert.Equal(reference, ok.Output);

            // The job was placed again on what remained: the surviving worker's two devices, all 26 layers.
            output.WriteLine(string.Join("\n", ok.Report.Stages));
            Assert.All(ok.Report.Stages, s => Assert.Equal(survivor.Node, s.Node));
            Assert.Equal(Enumerable.Range(0, 26), ok.Report.Stages.SelectMany(s => Enumerable.Range(s.FirstLayer, s.LayerCount)));
            // It ran again from the start: layer 0 was computed in the killed attempt and again in the new one.
            Assert.True(events.OfType<JobProgress>().Count(p => p.Progress.Layer == 0) >= 2, "layer 0 was not computed again after the worker died");
            await coordinator.WaitForLine($"worker {killed.Node} is", Patience); // "... is silent" or "... is unreachable"

            // The id is idempotent: asking again returns the stored answer without running the job again.
            var again = new List<IJobEvent>();
            using (var cancel = new CancellationTokenSource(Patience))
                await foreach (var e in client.Submit(job).ReadAllAsync(cancel.Token)) again.Add(e);
            Assert.Equal(reference, Assert.IsType<JobSucceeded>(Assert.Single(again)).Output);
        }
        catch
        {
            foreach (var p in _processes) output.WriteLine(p.Transcript());
            throw;
        }
    }

    /// <summary>What the coordinator's placement makes of two workers with two 64 MiB devices each.</summary>
    static IReadOnlyList<StagePlacement> PlannedStages(IReadOnlyList<string> nodes)
    {
        var slots = nodes.SelectMany(n => Enumerable.Range(0, 2)
            .Select(i => new DeviceSlot(ActorRefs.Nobody, n, new DeviceInfo($"sim:{i}", DeviceKind.Sim, 64L << 20)))).ToArray();
        return Placement.Place(ModelCost.From(ModelCatalog.Create(Model)), slots, Policy);
    }

    HostProcess StartHost(string name, IReadOnlyList<string> args)
    {
        var p = HostProcess.Start(name, ["host", .. args]);
        _processes.Add(p);
        return p;
    }

    public void Dispose()
    {
        foreach (var p in _processes) p.Dispose();
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    /// <summary>A <c>superpipeline</c> process from the test's output folder, its stdout and stderr kept in order.</summary>
    sealed class HostProcess : IDisposable
    {
        readonly Process _process;
        readonly StringBuilder _log = new();
        /// <summary>Completed (and replaced) whenever a line arrives or the process exits.</summary>
        TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

        HostProcess(string name, Process process)
        {
            Name = name;
            _process = process;
        }

        public string Name { get; }
        public bool Killed { get; private set; }

        public static HostProcess Start(string name, IReadOnlyList<string> args)
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "superpipeline.dll"));
            foreach (var a in args) psi.ArgumentList.Add(a);
            var process = new Process { StartInfo = psi, EnableRaisingEvents = true };
            var host = new HostProcess(name, process);
            process.OutputDataReceived += (_, e) => host.Append("out", e.Data);
            process.ErrorDataReceived += (_, e) => host.Append("err", e.Data);
            process.Exited += (_, _) => host.Signal();
            process.Start();
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            host.Append("test", $"started: dotnet {string.Join(' ', psi.ArgumentList)} (pid {process.Id})");
            return host;
        }

        void Append(string stream, string? line)
        {
            if (line is null) { Signal(); return; }
            lock (_log) _log.Append(stream).Append("| ").AppendLine(line);
            Signal();
        }

        void Signal()
        {
            TaskCompletionSource changed;
            lock (_log) (changed, _changed) = (_changed, new(TaskCreationOptions.RunContinuationsAsynchronously));
            changed.TrySetResult();
        }

        public string Transcript()
        {
            lock (_log) return $"===== {Name} (exited: {HasExited()}) =====\n{_log}";
        }

        bool HasExited()
        {
            try { return _process.HasExited; } catch (InvalidOperationException) { return true; }
        }

        /// <summary>Waits until a line of its output contains <paramref name="text"/>; fails if the process exits first.</summary>
        public async Task WaitForLine(string text, TimeSpan timeout) => await WaitFor(new Regex(Regex.Escape(text)), $"'{text}'", timeout);

        /// <summary>The port the host bound: with --port 0 it prints "listening on HOST:PORT" once bound.</summary>
        public async Task<int> BoundPort(TimeSpan timeout) =>
            int.Parse((await WaitFor(new Regex(@"listening on [^\s:]+:(\d+)"), "the port it listens on", timeout)).Groups[1].Value);

        /// <summary>Waits (woken by each new line, bounded by <paramref name="timeout"/>) for a line matching
        /// <paramref name="pattern"/> on stdout or stderr.</summary>
        async Task<Match> WaitFor(Regex pattern, string what, TimeSpan timeout)
        {
            var deadline = DateTime.UtcNow + timeout;
            while (true)
            {
                Task changed;
                lock (_log)
                {
                    var m = pattern.Match(_log.ToString());
                    if (m.Success) return m;
                    changed = _changed.Task;
                }
                if (HasExited() && !Killed) throw new InvalidOperationException($"{Name} exited (code {_process.ExitCode}) before printing {what}");
                var left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero) throw new TimeoutException($"{Name} did not print {what} within {timeout}");
                try { await changed.WaitAsync(left); } catch (TimeoutException) { }
            }
        }

        public void Kill()
        {
            Killed = true;
            Append("test", "killed by the test");
            try { _process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
        }

        public void Dispose()
        {
            if (!HasExited())
            {
                try { _process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
                _process.WaitForExit(10_000);
            }
            _process.Dispose();
        }
    }
}
