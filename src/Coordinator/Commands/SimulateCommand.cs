using System.CommandLine;
using System.Diagnostics;
using Superpipeline.Coordinator.Bench;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;

namespace Superpipeline.Coordinator.Commands;

/// <summary>What <c>superpipeline simulate</c> was asked to do, already parsed.</summary>
/// <param name="Spec">A JSON spec file or a built-in name (MODEL@GPU or a calibration case).</param>
/// <param name="Policy">Overrides the spec's policy (sync, resident, window:K:K', bytes:LIVE:PREFETCH, batched:K:K':M).</param>
/// <param name="Compare">Simulate the spec's comparison set side by side.</param>
/// <param name="TimelineRows">Rows of the per-layer timeline to print per pass; 0 prints none.</param>
/// <param name="JsonPath">Write everything to this file.</param>
/// <param name="Kv">Overrides the workload's KV cache placement: device or host.</param>
public sealed record SimulateOptions(
    string Spec = SimulateCommand.DefaultSpec,
    string? Policy = null,
    bool Compare = false,
    int TimelineRows = SimulateCommand.DefaultTimelineRows,
    string? JsonPath = null,
    bool List = false,
    bool Calibrate = false,
    int? Batch = null,
    int? Prompt = null,
    int? Generate = null,
    int? MicroBatches = null,
    string? DType = null,
    string? Kv = null);

/// <summary><c>superpipeline simulate</c>: analytic simulation of generation (prefill + decode passes) under the
/// peer policies, on cost models built from model shapes and GPU figures; <c>--calibrate</c> compares it with
/// published throughputs. It never runs a model: it answers in milliseconds.</summary>
public static class SimulateCommand
{
    public const string DefaultSpec = "llama2-70b@a100-80gb";
    public const int DefaultTimelineRows = 12;

    public static Command Build()
    {
        var spec = new Option<string>("--spec")
        {
            Description = $"JSON spec file, or a built-in: MODEL@GPU or a calibration case (see --list); default {DefaultSpec}",
            DefaultValueFactory = _ => DefaultSpec,
        };
        var policy = new Option<string>("--policy") { Description = $"policy instead of the spec's: {OffloadPolicy.Grammar}" };
        var compare = new Option<bool>("--compare") { Description = "simulate the peer policies side by side (sync, window, byte budgets, batched, resident)" };
        var timeline = new Option<int>("--timeline")
        {
            Description = "per-layer timeline rows to print per pass (0: none)", DefaultValueFactory = _ => DefaultTimelineRows,
        };
        var json = new Option<string>("--json") { Description = "write everything (spec, results, pass summaries, timelines) to this JSON file" };
        var list = new Option<bool>("--list") { Description = "list the built-in models, GPUs and specs" };
        var calibrate = new Option<bool>("--calibrate")
        {
            Description = "simulate the published FlexGen / Accelerate / ZeRO-Inference experiments and compare",
        };
        var batch = new Option<int?>("--batch") { Description = "sequences per micro-batch (overrides the spec)" };
        var prompt = new Option<int?>("--prompt") { Description = "prompt tokens (overrides the spec)" };
        var generate = new Option<int?>("--generate") { Description = "tokens to generate (overrides the spec)" };
        var micro = new Option<int?>("--micro-batches") { Description = "micro-batches in the job (overrides the spec)" };
        var dtype = new Option<string>("--dtype") { Description = "weight format: fp32, fp16, bf16, int8, int4 (overrides the spec)" };
        var kv = new Option<string>("--kv") { Description = "KV cache placement: device or host (overrides the spec)" };

        var command = new Command("simulate", "Simulate generation (prefill + decode) of a model on a GPU under streaming policies, from a cost model; " +
            "--calibrate checks it against published throughputs.");
        foreach (var o in new Option[] { spec, policy, compare, timeline, json, list, calibrate, batch, prompt, generate, micro, dtype, kv })
            command.Options.Add(o);
        command.SetAction((r, cancel) => RunAsync(new SimulateOptions(
            r.GetValue(spec)!, r.GetValue(policy), r.GetValue(compare), r.GetValue(timeline), r.GetValue(json), r.GetValue(list), r.GetValue(calibrate),
            r.GetValue(batch), r.GetValue(prompt), r.GetValue(generate), r.GetValue(micro), r.GetValue(dtype), r.GetValue(kv)), Console.Out, cancel));
        return command;
    }

    /// <summary>Runs the command, printing to <paramref name="output"/>. Returns the exit code; bad input throws
    /// <see cref="ArgumentException"/> with one line before any work.</summary>
    public static async Task<int> RunAsync(SimulateOptions o, TextWriter output, CancellationToken cancel = default)
    {
        if (o.TimelineRows < 0) throw new ArgumentException($"--timeline must be 0 or more rows; got {o.TimelineRows}");
        OutputPaths.CheckWritable(o.JsonPath, "--json");
        if (o.List)
        {
            output.Write(SimulationReport.ListText());
            return 0;
        }
        if (o.Calibrate) return await CalibrateAsync(o, output, cancel);

        if (string.IsNullOrWhiteSpace(o.Spec)) throw new ArgumentException("--spec must name a JSON file or a built-in spec (simulate --list shows them)");
        var spec = Apply(SimulationSpecs.Resolve(o.Spec), o);
        var given = o.Policy is null ? null : OffloadPolicy.Parse(o.Policy);
        var policies = o.Compare ? spec.ComparePolicies() : [given ?? spec.Policy];
        if (o.Compare && given is not null) policies = [given, .. policies.Where(p => p != given)];
        foreach (var p in policies) p.CreateGate(spec.Streamed()); // refuse a policy that does not fit the model before any work

        var clock = Stopwatch.StartNew();
        var results = policies.Select(p => GenerationSimulator.Run(spec, p)).ToList();
        double wall = clock.Elapsed.TotalSeconds;

        output.Write(SimulationReport.Text(spec, results, o.TimelineRows, wall));
        if (o.JsonPath is not null)
        {
            await ReportWriter.WriteJsonAsync(o.JsonPath, SimulationReport.Json(spec, results, wall), cancel);
            output.WriteLine($"written: {o.JsonPath}");
        }
        return 0;
    }

    /// <summary>The spec with the command line's workload and format overrides applied (and validated).</summary>
    public static SimulationSpec Apply(SimulationSpec spec, SimulateOptions o)
    {
        var w = spec.Workload;
        KvPlacement kv = w.Kv;
        if (o.Kv is not null && (!Enum.TryParse(o.Kv, ignoreCase: true, out kv) || int.TryParse(o.Kv, out _)))
            throw new ArgumentException($"--kv must be device or host; got '{o.Kv}'");
        static int? Count(int? value, string flag) => value is < 1 ? throw new ArgumentException($"{flag} must be at least 1; got {value}") : value;
        w = w with
        {
            Batch = Count(o.Batch, "--batch") ?? w.Batch,
            Prompt = Count(o.Prompt, "--prompt") ?? w.Prompt,
            Generate = Count(o.Generate, "--generate") ?? w.Generate,
            MicroBatches = Count(o.MicroBatches, "--micro-batches") ?? w.MicroBatches,
            Kv = kv,
        };
        long tokens = (long)w.Prompt + w.Generate;
        if ((o.Prompt ?? o.Generate) is not null && tokens > spec.Model.MaxPositions)
            throw new ArgumentException($"--prompt + --generate ({tokens}) exceeds {spec.Model.Name}'s {spec.Model.MaxPositions} positions");
        var format = o.DType is null ? spec.Format : WeightFormat.Parse(o.DType, "--dtype");
        return (spec with { Workload = w, Format = format }).Validated();
    }

    static async Task<int> CalibrateAsync(SimulateOptions o, TextWriter output, CancellationToken cancel)
    {
        var clock = Stopwatch.StartNew();
        var rows = Calibration.Run();
        double wall = clock.Elapsed.TotalSeconds;
        output.Write(SimulationReport.CalibrationText(rows, wall));
        if (o.JsonPath is not null)
        {
            await ReportWriter.WriteJsonAsync(o.JsonPath, SimulationReport.CalibrationJson(rows, wall), cancel);
            output.WriteLine($"written: {o.JsonPath}");
        }
        return 0;
    }
}
