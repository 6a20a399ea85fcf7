using System.CommandLine;
using System.Globalization;
using Spectre.Console;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;
using Superpipeline.Contracts;
using Superpipeline.Messages;
using Superpipeline.Workers;

namespace Superpipeline.Coordinator.Commands;

/// <summary><c>superpipeline plan</c>: chooses k, k' (and the batch) for a memory budget from the cost model, without running the model.</summary>
public static class PlanCommand
{
    public static Command Build()
    {
        var model = new ModelOptions();
        var memory = new Option<string>("--device-memory")
        {
            Description = "the memory budget: bytes or with a KiB/MiB/GiB suffix", DefaultValueFactory = _ => Flags.DefaultDeviceMemory,
        };
        var link = new Option<string>("--link-gbps") { Description = "host→device bandwidth in GB/s (default: measure a copy on this machine)" };
        var tflops = new Option<string>("--tflops") { Description = "device compute rate in TFLOP/s (default: measure a matmul on this machine)" };
        var batches = new Option<string>("--batches")
        {
            Description = "batch sizes to consider, comma-separated (default: the model's --batch); the plan minimises time per sample",
        };
        var plan = new Command("plan", "Choose the window k and swap k' (and batch) that minimise time for a memory budget, " +
            "by simulating the policies with the cost model.");
        model.AddTo(plan);
        foreach (var o in new Option[] { memory, link, tflops, batches }) plan.Options.Add(o);
        plan.SetAction(async (r, cancel) =>
        {
            var spec = model.Read(r);
            long budget = ByteSize.Parse(r.GetValue(memory)!, FieldException.DeviceMemory);
            var sizes = r.GetValue(batches) is { } text ? ParseBatches(text) : [spec.Batch];
            double? gbps = Flags.ParseGbps(r.GetValue(link));
            double? rate = r.GetValue(tflops) is { } t ? ParseTflops(t) : null;
            return await RunAsync(spec, budget, gbps, rate, sizes, AnsiConsole.Console);
        });
        return plan;
    }

    /// <summary>Measures the device (unless both rates are given), plans, and prints the plan.</summary>
    public static async Task<int> RunAsync(ModelSpec spec, long budget, double? linkGBps, double? flopsPerSecond, IReadOnlyList<int> batches,
        IAnsiConsole console)
    {
        ModelCost ForBatch(int b) => ModelCost.From(ModelCatalog.Create(spec with { Batch = b }));
        var first = ForBatch(batches[0]);
        DeviceCost device;
        using (var probe = new SimulatedDevice("sim:0", budget, linkGBps))
            device = await DeviceCalibration.MeasureAsync(probe);
        if (flopsPerSecond is { } f) device = device with { FlopsPerSecond = f };
        var plan = Planner.Choose(ForBatch, batches, device, budget);
        var b = plan.Best;
        string size = $"{first.Layers.Length} layers, {ByteSize.Format(first.Bytes)}", batch = batches.Count > 1 ? $" --batch {b.Batch}" : "";
        string memory = ByteSize.Format(budget);
        console.MarkupLineInterpolated($"[bold]plan[/] for {spec.Name} ({size}) in {memory}: [bold]--window {b.Window} --swap {b.Swap}[/]{batch}");
        var table = new Table().AddColumn("measure").AddColumn(new TableColumn("value").RightAligned());
        void Row(string m, string v) => table.AddRow(new Text(m), new Text(v));
        Row("predicted time per pass", $"{b.MakespanSeconds:0.0000} s");
        Row("predicted time per sample", $"{b.SecondsPerSample:0.0000} s");
        Row("predicted peak device bytes", $"{b.PeakDeviceBytes:N0}");
        Row("link bandwidth (cost model)", $"{device.LinkBytesPerSecond / 1e9:0.##} GB/s{(linkGBps is null ? " measured" : "")}");
        Row("compute rate (cost model)", $"{device.FlopsPerSecond / 1e12:0.###} TFLOP/s{(flopsPerSecond is null ? " measured" : "")}");
        Row("policies simulated", $"{plan.Simulated}");
        console.Write(table);
        return 0;
    }

    static IReadOnlyList<int> ParseBatches(string text)
    {
        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var sizes = parts.Select(p => int.TryParse(p, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) && v > 0 ? v
            : throw new ArgumentException($"--batches must be positive whole numbers separated by commas; got '{text}'")).ToArray();
        return sizes.Length > 0 ? sizes : throw new ArgumentException("--batches is empty");
    }

    static double ParseTflops(string text) =>
        double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && v > 0 && !double.IsInfinity(v)
            ? v * 1e12
            : throw new ArgumentException($"--tflops must be a positive number; got '{text}'");
}
