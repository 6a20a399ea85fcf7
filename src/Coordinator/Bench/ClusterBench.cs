using System.Diagnostics;
using Akka.Cluster;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Messages;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Coordinator.Bench;

/// <summary><c>bench --cluster</c>: job throughput of an in-process cluster with one worker node against two, in one
/// run. Each worker node has one simulated accelerator with an emulated link; concurrent jobs for the same model
/// are coalesced into micro-batch runs (superpipeline.max-micro-batches) and the runs are pipelined through the stages
/// (stage 0 of one run works while stage 1 of the previous one does). Jobs go
/// through ClusterClient exactly as `submit` sends them.</summary>
public static class ClusterBench
{
    /// <summary>The goal of two worker nodes' throughput over one node's.</summary>
    public const double SpeedupGoal = 1.8;

    public static async Task<int> RunAsync(string outDir, bool quick, TextWriter output, TextWriter log, CancellationToken cancel = default)
    {
        var files = ReportWriter.Prepare(outDir, "cluster");
        var model = new ModelSpec("demo", Blocks: quick ? 6 : 10, Hidden: 256, Heads: 4, Vocab: 256, Sequence: 32, Batch: 2, Seed: 3);
        int jobs = quick ? 8 : 64;
        const double linkGBps = 0.05; // slow link: passes are transfer-bound, as offloaded passes of big models are
        var config = """
            superpipeline.max-running-jobs = 8
            superpipeline.heartbeat = 500ms
            akka.loglevel = ERROR
            """;
        string? reference = null;
        bool identical = true;
        async Task<double> Measure(int workers)
        {
            var hosts = new List<ClusterHost>();
            try
            {
                var coordinator = ClusterHost.Start(new HostOptions(["coordinator"], "127.0.0.1", 0, [], [], config));
                hosts.Add(coordinator);
                for (int w = 0; w < workers; w++)
                    hosts.Add(ClusterHost.Start(new HostOptions(["worker"], "127.0.0.1", 0, [$"127.0.0.1:{coordinator.Address.Port}"],
                        [new DeviceSpec(DeviceKind.Sim, 256L << 20, linkGBps)], config)));
                var cluster = Akka.Cluster.Cluster.Get(coordinator.System);
                for (int i = 0; i < 200 && cluster.State.Members.Count(m => m.Status == MemberStatus.Up) < workers + 1; i++) await Task.Delay(100);
                await Task.Delay(1500); // the workers' registrations reach the job manager
                await using var client = SubmitClient.Start([$"127.0.0.1:{coordinator.Address.Port}"], extraConfig: config);
                var warm = await client.RunAsync(new SubmitJob(JobId.New(), model, new PolicySpec(2, 1)));
                if (warm is not JobSucceeded) throw new InvalidOperationException($"warm-up job did not succeed: {warm}");
                var clock = Stopwatch.StartNew();
                var answers = await Task.WhenAll(Enumerable.Range(0, jobs)
                    .Select(_ => client.RunAsync(new SubmitJob(JobId.New(), model, new PolicySpec(2, 1)))));
                clock.Stop();
                foreach (var a in answers)
                {
                    var ok = a as JobSucceeded ?? throw new InvalidOperationException($"a job did not succeed: {a}");
                    var sha = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(ok.Output.Bytes.AsSpan()));
                    reference ??= sha;
                    identical &= sha == reference;
                }
                log.WriteLine($"{workers} worker node(s): {jobs} jobs in {clock.Elapsed.TotalSeconds:0.00} s");
                return jobs / clock.Elapsed.TotalSeconds;
            }
            finally
            {
                foreach (var h in Enumerable.Reverse(hosts)) await h.DisposeAsync();
            }
        }

        double one = await Measure(1), two = await Measure(2);
        var report = new ClusterReport(DateTime.UtcNow.ToString("O", System.Globalization.CultureInfo.InvariantCulture), Environment.ProcessorCount,
            jobs, model.Blocks + 2, model.Hidden, linkGBps, one, two, two / one, SpeedupGoal, identical);
        await ReportWriter.WriteAsync(files, Markdown(report), report, output, cancel);
        return 0;
    }

    static string Markdown(ClusterReport r)
    {
        static string Yes(bool b) => b ? "yes" : "no";
        var table = new MarkdownTable("measure", "value", "goal", "met")
            .Row("throughput, 1 worker node", $"{r.OneNodeJobsPerSecond:0.00} jobs/s", "", "")
            .Row("throughput, 2 worker nodes", $"{r.TwoNodesJobsPerSecond:0.00} jobs/s", "", "")
            .Row("2 nodes ÷ 1 node", $"{r.Speedup:0.00}×", $"≥ {r.SpeedupGoal:0.0}×", Yes(r.Speedup >= r.SpeedupGoal))
            .Row("outputs identical across all jobs and both clusters", Yes(r.OutputsIdentical), "yes", Yes(r.OutputsIdentical));
        string[] lines =
        [
            "# superpipeline bench --cluster",
            "",
            $"{r.Timestamp} · {r.Cores} cores · model {r.Layers} layers (hidden {r.Hidden}), {r.Jobs} concurrent jobs, window 2 / swap 1 per stage, " +
            $"one simulated device per worker node with a {r.LinkGBps} GB/s link.",
            "",
            .. table.Lines(),
            "",
        ];
        return string.Join('\n', lines);
    }
}

/// <summary>cluster.json: job throughput with one worker node and with two, in one run.</summary>
/// <param name="Speedup">Two nodes' jobs per second ÷ one node's; the goal is <paramref name="SpeedupGoal"/> or more.</param>
/// <param name="OutputsIdentical">Every job of both clusters produced the same output bytes.</param>
public sealed record ClusterReport(string Timestamp, int Cores, int Jobs, int Layers, int Hidden, double LinkGBps,
    double OneNodeJobsPerSecond, double TwoNodesJobsPerSecond, double Speedup, double SpeedupGoal, bool OutputsIdentical);
