using System.CommandLine;
using Superpipeline.Coordinator.Bench;

namespace Superpipeline.Coordinator.Commands;

/// <summary><c>superpipeline bench</c>: the engine bench (<see cref="EngineBench"/>), or with <c>--tradeoff</c> the
/// memory/time trade-off over (k, k') (<see cref="TradeoffBench"/>), or with <c>--cluster</c> the cluster's job
/// throughput (<see cref="ClusterBench"/>), or with <c>--generate</c> generation offloaded against resident and synchronous
/// (<see cref="GenerateBench"/>), or with <c>--train</c> the largest batch and samples/s of training resident against streamed
/// (<see cref="TrainBench"/>).</summary>
public static class BenchCommand
{
    public static Command Build()
    {
        var output = new Option<string>("--out")
        {
            Description = "folder for bench.md and bench.json (or the tradeoff or cluster files)", DefaultValueFactory = _ => "bench-results",
        };
        var quick = new Option<bool>("--quick") { Description = "smaller model and fewer repetitions (runs in seconds; figures are noisier)" };
        var repeats = new Option<int?>("--repeats")
        {
            Description = "measured repetitions per measure (default 9, or 3 with --quick; with --tradeoff 5, or 3 with --quick; "
                + "with --generate warm generations per variant, 3, or 1 with --quick)",
        };
        var tradeoff = new Option<bool>("--tradeoff")
        {
            Description = "instead: peak memory against time per pass over a grid of (k, k'), measured and predicted by the simulator; " +
                "writes tradeoff.md, tradeoff.json and tradeoff.png",
        };
        var cluster = new Option<bool>("--cluster")
        {
            Description = "instead: job throughput of an in-process cluster with one worker node against two; writes cluster.md and cluster.json",
        };
        var generate = new Option<bool>("--generate")
        {
            Description = "instead: generation of a seeded Llama checkpoint 4× the device (batch 8, 32 new tokens) under link emulation: resident, "
                + "k = k' = 1, the planned window and pins, and the plan with the disk tier; writes generate.md and generate.json",
        };
        var train = new Option<bool>("--train")
        {
            Description = "instead: training on one simulated device: the largest batch and samples/s resident against streamed (window 2, swap 1), "
                + "and a model 4× the device that only streaming trains, without a link and under an emulated link at transfer ÷ compute 1 and 2 "
                + "(with train's default window and window auto); writes train.md and train.json (--repeats: measured steps, 5, or 2 with --quick)",
        };
        var computeThreads = new Option<string>("--compute-threads")
        {
            Description = "with --generate: threads the simulated device computes with (a number, or 'all' for libtorch's default); one leaves the "
                + "other cores to the host side, as a real accelerator does",
            DefaultValueFactory = _ => "1",
        };
        var bench = new Command("bench", "Measure the engine: overhead against a hand-written loop, overlap under link emulation, peak memory; " +
            "or, with --tradeoff, the memory/time trade-off over (k, k'); or, with --cluster, a cluster's job throughput.");
        foreach (var o in new Option[] { output, quick, repeats, tradeoff, cluster, generate, train, computeThreads }) bench.Options.Add(o);
        bench.SetAction((r, cancel) =>
        {
            string dir = r.GetValue(output)!;
            bool fast = r.GetValue(quick);
            if (r.GetValue(generate))
            {
                string threads = r.GetValue(computeThreads)!;
                int? n = threads == "all" ? null
                    : int.TryParse(threads, out int t) && t >= 1 ? t
                    : throw new ArgumentException($"--compute-threads must be a whole number from 1, or 'all'; got '{threads}'");
                return GenerateBench.RunAsync(new GenerateBenchOptions(dir, fast, r.GetValue(repeats), ComputeThreads: n), Console.Out, cancel, Console.Error);
            }
            if (r.GetValue(train)) return TrainBench.RunAsync(new TrainBenchOptions(dir, fast, r.GetValue(repeats)), Console.Out, cancel, Console.Error);
            if (r.GetValue(cluster)) return ClusterBench.RunAsync(dir, fast, Console.Out, Console.Error, cancel);
            if (r.GetValue(tradeoff)) return TradeoffBench.RunAsync(new TradeoffOptions(dir, fast, r.GetValue(repeats)), Console.Out, cancel, Console.Error);
            return EngineBench.RunAsync(new BenchOptions(dir, fast, r.GetValue(repeats)), Console.Out, cancel, Console.Error);
        });
        return bench;
    }
}
