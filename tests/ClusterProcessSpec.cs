using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Akka.Actor;
using Superpipeline.Coordinator;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Simulation;
using Superpipeline.Contracts;
using Superpipeline.Messages;
using Xunit;
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
            var (cPort, aPort, bPort) = (FreePort(), FreePort(), FreePort());
            var coordinator = StartHost("coordinator", ["--role", "coordinator", "--port", $"{cPort}", "--config", config]);
            await coordinator.WaitForLine("superpipeline host: coordinator at", Patience);
            var a = StartHost("worker-a", ["--role", "worker", "--port", $"{aPort}", "--seed", $"127.0.0.1:{cPort}", "--devices", WorkerDevices, "--config", config]);
            var b = StartHost("worker-b", ["--role", "worker", "--port", $"{bPort}", "--seed", $"127.0.0.1:{cPort}", "--devices", WorkerDevices, "--config", config]);

            // The reference, in this process on one device, while the members start.
            TensorPayload reference;
            await using (var single = EmbeddedHost.Start(new DeviceSpec("sim", 256L << 20, null)))
                reference = Assert.IsType<JobSucceeded>(await single.RunAsync(new SubmitJob(JobId.New(), Model, Policy)).WaitAsync(Patience)).Output;

            await coordinator.WaitForLine($"worker 127.0.0.1:{aPort} registered 2 device(s)", Patience);
            await coordinator.WaitForLine($"worker 127.0.0.1:{bPort} registered 2 device(s)", Patience);

            // With both workers' four devices registered, the placement is four stages over both nodes; stages are
            // ordered by node name, so one worker runs the first two stages and the other the last two.
            var nodes = new[] { (Node: $"127.0.0.1:{aPort}", Host: a), (Node: $"127.0.0.1:{bPort}", Host: b) }.OrderBy(n => n.Node, StringComparer.Ordinal).ToArray();
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
            await foreach (var e in client.Submit(job).ReadAllAsync(new CancellationTokenSource(Patience).Token)) again.Add(e);
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
        var slots = nodes.SelectMany(n => Enumerable.Range(0, 2).Select(i => new DeviceSlot(ActorRefs.Nobody, n, new DeviceInfo($"sim:{i}", "sim", 64L << 20, 0.05)))).ToArray();
        return Placement.Place(ModelCost.From(ModelCatalog.Create(Model)), slots, Policy);
    }

    HostProcess StartHost(string name, IReadOnlyList<string> args)
    {
        var p = HostProcess.Start(name, ["host", .. args]);
        _processes.Add(p);
        return p;
    }

    static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        try { return ((IPEndPoint)listener.LocalEndpoint).Port; }
        finally { listener.Stop(); }
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
            var process = new Process { StartInfo = psi };
            var host = new HostProcess(name, process);
            process.OutputDataReceived += (_, e) => host.Append("out", e.Data);
            process.ErrorDataReceived += (_, e) => host.Append("err", e.Data);
            process.Start();
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            host.Append("test", $"started: dotnet {string.Join(' ', psi.ArgumentList)} (pid {process.Id})");
            return host;
        }

        void Append(string stream, string? line)
        {
            if (line is null) return;
            lock (_log) _log.Append(stream).Append("| ").AppendLine(line);
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
        public async Task WaitForLine(string text, TimeSpan timeout)
        {
            var deadline = DateTime.UtcNow + timeout;
            while (true)
            {
                lock (_log) if (_log.ToString().Contains(text, StringComparison.Ordinal)) return;
                if (HasExited() && !Killed) throw new InvalidOperationException($"{Name} exited (code {_process.ExitCode}) before printing '{text}'");
                if (DateTime.UtcNow > deadline) throw new TimeoutException($"{Name} did not print '{text}' within {timeout}");
                await Task.Delay(100);
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
