using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using Spectre.Console;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Policy;
using Superpipeline.Contracts;
using Superpipeline.Messages;

namespace Superpipeline.Coordinator;

/// <summary>The <c>superpipeline</c> command line. Errors are one line on stderr and a non-zero exit.</summary>
public static class Cli
{
    public static async Task<int> MainAsync(string[] args)
    {
        var root = new RootCommand("Superpipeline: run neural models larger than accelerator memory by streaming layers onto the device.");
        root.Subcommands.Add(BuildRun());
        root.Subcommands.Add(BenchCommand.Build());
        root.Subcommands.Add(PlanCommand.Build());
        root.Subcommands.Add(SimulateCommand.Build());
        root.Subcommands.Add(HostCommands.BuildHost());
        root.Subcommands.Add(HostCommands.BuildSubmit());
        var parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            Console.Error.WriteLine($"superpipeline: {parsed.Errors[0].Message}");
            return 2;
        }
        try
        {
            return await parsed.InvokeAsync(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) when (e is ArgumentException or DeviceOutOfMemoryException or IOException or UnauthorizedAccessException or InvalidOperationException)
        {
            Console.Error.WriteLine($"superpipeline: {e.Message.Split('\n')[0]}");
            return 1;
        }
    }

    /// <summary>Options that size the demo model, shared by run and bench.</summary>
    public sealed class ModelOptions
    {
        public Option<string> Model { get; } = new("--model") { Description = "model family (demo: GPT-style decoder with seeded weights)", DefaultValueFactory = _ => ModelSpec.Demo.Name };
        public Option<int> Layers { get; } = new("--layers") { Description = "transformer blocks (the model streams blocks + 2 layers: embeddings and head)", DefaultValueFactory = _ => ModelSpec.Demo.Blocks };
        public Option<int> Hidden { get; } = new("--hidden") { Description = "hidden size", DefaultValueFactory = _ => ModelSpec.Demo.Hidden };
        public Option<int> Heads { get; } = new("--heads") { Description = "attention heads", DefaultValueFactory = _ => ModelSpec.Demo.Heads };
        public Option<int> Vocab { get; } = new("--vocab") { Description = "vocabulary size", DefaultValueFactory = _ => ModelSpec.Demo.Vocab };
        public Option<int> SeqLen { get; } = new("--seq-len") { Description = "sequence length", DefaultValueFactory = _ => ModelSpec.Demo.Sequence };
        public Option<int> Batch { get; } = new("--batch") { Description = "batch size", DefaultValueFactory = _ => ModelSpec.Demo.Batch };
        public Option<long> Seed { get; } = new("--seed") { Description = "seed of the weights and the input", DefaultValueFactory = _ => ModelSpec.Demo.Seed };

        public void AddTo(Command c)
        {
            foreach (var o in new Option[] { Model, Layers, Hidden, Heads, Vocab, SeqLen, Batch, Seed }) c.Options.Add(o);
        }

        public ModelSpec Read(ParseResult r) => new(r.GetValue(Model)!, r.GetValue(Layers), r.GetValue(Hidden), r.GetValue(Heads),
            r.GetValue(Vocab), r.GetValue(SeqLen), r.GetValue(Batch), r.GetValue(Seed));
    }

    public const string DefaultDeviceMemory = "64MiB";

    static Command BuildRun()
    {
        var model = new ModelOptions();
        var window = new Option<string>("--window") { Description = "k: layers resident on the device at once (a number, 'all' for no offload, or 'auto' to let the planner choose k and k' for the device memory)", DefaultValueFactory = _ => "3" };
        var swap = new Option<string>("--swap") { Description = "k': layers evicted and refilled together (1 ≤ k' ≤ k); default 1, or all layers with --window all" };
        var memory = new Option<string>("--device-memory") { Description = "device capacity: bytes or with a KiB/MiB/GiB suffix", DefaultValueFactory = _ => DefaultDeviceMemory };
        var link = new Option<string>("--link-gbps") { Description = "emulated host→device link bandwidth in GB/s (default: unlimited, a plain copy)" };
        var device = new Option<string>("--device") { Description = "sim, cuda or auto (CUDA when TorchSharp sees it)", DefaultValueFactory = _ => "sim" };
        var report = new Option<string>("--report") { Description = "write the JSON report to this file" };
        var trace = new Option<string>("--trace") { Description = "write a Chrome trace (chrome://tracing, Perfetto) of load, compute and evict per layer" };
        var output = new Option<string>("--output") { Description = "write the output tensor to this NumPy .npy file" };

        var run = new Command("run", "Run one forward pass of a model on a device smaller than the model (default: the demo decoder, 5× larger than its 64 MiB simulated device).");
        model.AddTo(run);
        foreach (var o in new Option[] { window, swap, memory, link, device, report, trace, output }) run.Options.Add(o);
        run.SetAction((r, cancel) =>
        {
            var options = new RunOptions(
                model.Read(r),
                ParsePolicy(r.GetValue(window)!, r.GetValue(swap)),
                new DeviceSpec(r.GetValue(device)!, ByteSize.Parse(r.GetValue(memory)!), ParseGbps(r.GetValue(link))),
                r.GetValue(report), r.GetValue(trace), r.GetValue(output));
            return RunCommand.RunAsync(options, AnsiConsole.Console, cancel);
        });
        return run;
    }

    /// <summary>--window (number, all or auto) and --swap; auto chooses both, so a --swap beside it is refused.</summary>
    public static PolicySpec ParsePolicy(string window, string? swap)
    {
        if (string.Equals(window.Trim(), "auto", StringComparison.OrdinalIgnoreCase))
            return swap is null ? PolicySpec.Planned : throw new ArgumentException("--swap cannot be given with --window auto: the planner chooses both");
        return new PolicySpec(StreamPolicy.ParseWindow(window), swap is null ? null : StreamPolicy.ParseSwap(swap));
    }

    public static double? ParseGbps(string? text)
    {
        if (text is null) return null;
        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) || !(v > 0) || double.IsInfinity(v))
            throw new ArgumentException($"--link-gbps must be a positive number of GB/s; got '{text}'");
        return v;
    }
}
