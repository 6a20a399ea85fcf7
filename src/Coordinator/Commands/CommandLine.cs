using System.CommandLine;
using System.Globalization;
using System.Text.RegularExpressions;
using Superpipeline.Contracts;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Onnx;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Text;

namespace Superpipeline.Coordinator.Commands;

/// <summary>Options that size the demo model, shared by run, plan and submit.</summary>
public sealed class ModelOptions
{
    public Option<string> Model { get; } = new("--model")
    {
        Description = "model family (demo: a GPT-2 with seeded weights), a checkpoint directory with config.json "
            + "(llama, gpt2, vit, clip, llava), or an ONNX file (bert, resnet)",
        DefaultValueFactory = _ => ModelSpec.Demo.Name,
    };
    public Option<string> Input { get; } = new("--input") { Description = "int64 token ids [batch, seq] in a .npy file (checkpoint models)" };
    public Option<string[]> Prompt { get; } = new("--prompt")
    {
        Description = "text through the checkpoint's tokenizer, one batch row per --prompt (repeat it; instead of --input)",
    };
    public Option<int> Layers { get; } = new("--layers")
    {
        Description = "transformer blocks (the model streams blocks + 2 layers: embeddings and head)", DefaultValueFactory = _ => ModelSpec.Demo.Blocks,
    };
    public Option<int> Hidden { get; } = new("--hidden") { Description = "hidden size", DefaultValueFactory = _ => ModelSpec.Demo.Hidden };
    public Option<int> Heads { get; } = new("--heads") { Description = "attention heads", DefaultValueFactory = _ => ModelSpec.Demo.Heads };
    public Option<int> Vocab { get; } = new("--vocab") { Description = "vocabulary size", DefaultValueFactory = _ => ModelSpec.Demo.Vocab };
    public Option<int> SeqLen { get; } = new("--seq-len") { Description = "sequence length", DefaultValueFactory = _ => ModelSpec.Demo.Sequence };
    public Option<int> Batch { get; } = new("--batch") { Description = "batch size", DefaultValueFactory = _ => ModelSpec.Demo.Batch };
    public Option<long> Seed { get; } = new("--seed") { Description = "seed of the weights and the input", DefaultValueFactory = _ => ModelSpec.Demo.Seed };
    public Option<string> Family { get; } = new("--family")
    {
        Description = $"the family of an ONNX --model ({string.Join(", ", OnnxImport.Families.Select(f => f.Name))}; "
            + "default: the one whose inputs the graph has)",
    };

    public void AddTo(Command c)
    {
        foreach (var o in new Option[] { Model, Layers, Hidden, Heads, Vocab, SeqLen, Batch, Seed, Input, Family }) c.Options.Add(o);
    }

    /// <summary>Adds --prompt (run only: the ids travel as a temporary .npy the embedded host reads).</summary>
    public void AddPromptTo(Command c) => c.Options.Add(Prompt);

    /// <summary>The spec: a family sized by the flags, or, when --model names a directory, the checkpoint in it (its config
    /// sizes the model, so the size flags are refused beside it). With --prompt, the prompts' ids go to a temporary .npy that
    /// the spec's Input names: the caller deletes it with <see cref="PromptIds.DeleteTemporary"/>.</summary>
    public ModelSpec Read(ParseResult r)
    {
        string model = r.GetValue(Model)!;
        string? input = r.GetValue(Input);
        string[] prompts = r.CommandResult.Command.Options.Contains(Prompt) ? r.GetValue(Prompt) ?? [] : [];
        if (prompts.Length > 0)
        {
            if (!Directory.Exists(model)) throw new ArgumentException("--prompt needs --model to name a checkpoint directory: its tokenizer reads the text");
            if (input is not null) throw new ArgumentException("--prompt and --input cannot be given together: each gives the token ids");
            if (r.GetResult(SeqLen) is { Implicit: false } || r.GetResult(Batch) is { Implicit: false })
                throw new ArgumentException("--seq-len and --batch cannot be given with --prompt: the prompts set them");
        }
        if (!Directory.Exists(model) && !OnnxImport.IsOnnx(model)) // an .onnx file is a checkpoint too: its graph sizes the model
        {
            if (r.GetValue(Family) is not null) throw new ArgumentException("--family applies to an ONNX --model only");
            if (input is not null) throw new ArgumentException("--input needs --model to name a checkpoint directory");
            return new(model, r.GetValue(Layers), r.GetValue(Hidden), r.GetValue(Heads), r.GetValue(Vocab), r.GetValue(SeqLen), r.GetValue(Batch),
                r.GetValue(Seed));
        }
        var given = new Option[] { Layers, Hidden, Heads, Vocab }.Where(o => r.GetResult(o) is { Implicit: false }).Select(o => o.Name).ToList();
        if (given.Count > 0)
            throw new ArgumentException($"{string.Join(", ", given)} cannot be given with --model {model}: the checkpoint's config.json sizes the model");
        if (input is not null && (r.GetResult(SeqLen) is { Implicit: false } || r.GetResult(Batch) is { Implicit: false }))
            throw new ArgumentException($"--seq-len and --batch cannot be given with --input {input}: its shape sets them");
        string? family = r.GetValue(Family);
        if (family is not null && !OnnxImport.IsOnnx(model))
            throw new ArgumentException($"--family applies to an ONNX --model only; {model}'s config.json names its family");
        if (prompts.Length == 0) return ModelCatalog.CheckpointSpec(model, r.GetValue(Batch), r.GetValue(SeqLen), r.GetValue(Seed), input, family);
        string ids = PromptIds.WriteTemporary(PromptIds.Encode(CheckpointTokenizer.Load(model), prompts, ModelCatalog.TokenLimits(model)));
        try
        {
            return ModelCatalog.CheckpointSpec(model, r.GetValue(Batch), r.GetValue(SeqLen), r.GetValue(Seed), ids);
        }
        catch
        {
            PromptIds.DeleteTemporary(ids);
            throw;
        }
    }
}

/// <summary>The CLI's side of the boundary: its flags' texts converted to domain values, and the domain's fields named
/// by the flags that carry them.</summary>
public static class Flags
{
    public const string DefaultDeviceMemory = "64MiB";

    /// <summary>The flag that carries each domain field the engine names in its refusals.</summary>
    static readonly IReadOnlyDictionary<string, string> FlagOfField = new Dictionary<string, string>
    {
        [FieldException.Window] = "--window",
        [FieldException.Swap] = "--swap",
        [FieldException.ResidentLayers] = "--resident-layers",
        [FieldException.Policy] = "--policy",
        [FieldException.Device] = "--device",
        [FieldException.Devices] = "--devices",
        [FieldException.DeviceMemory] = "--device-memory",
        [FieldException.HostMemory] = "--host-memory",
        [FieldException.Blocks] = "--layers",
        [FieldException.Hidden] = "--hidden",
        [FieldException.Heads] = "--heads",
        [FieldException.Vocab] = "--vocab",
        [FieldException.Sequence] = "--seq-len",
        [FieldException.Batch] = "--batch",
        [FieldException.Spec] = "--spec",
    };

    /// <summary>A refusal in the words of <paramref name="command"/>: its flag for the field when it has one, else the domain's.</summary>
    public static string Describe(FieldException e, Command command) =>
        FlagOfField.TryGetValue(e.Field, out var flag) && command.Options.Any(o => o.Name == flag) ? e.MessageFor(flag) : e.Message;

    /// <summary>--window (number, all or auto) and --swap; auto chooses both, so a --swap beside it is refused. --resident-layers
    /// (a count from 0, or auto; null: none) pins layers beside the window.</summary>
    public static PolicySpec ParsePolicy(string window, string? swap, string? resident = null)
    {
        var (pins, pinsAuto) = ParseResidentLayers(resident);
        if (string.Equals(window.Trim(), "auto", StringComparison.OrdinalIgnoreCase))
            return swap is null
                ? PolicySpec.Planned with { ResidentLayers = pins, ResidentAuto = pinsAuto }
                : throw new ArgumentException("--swap cannot be given with --window auto: the planner chooses both");
        return new PolicySpec(OffloadPolicy.ParseWindow(window), swap is null ? null : OffloadPolicy.ParseSwap(swap), ResidentLayers: pins,
            ResidentAuto: pinsAuto);
    }

    /// <summary>The option every command that runs a job shares.</summary>
    public static Option<string> ResidentLayersOption() => new("--resident-layers")
    {
        Description = "layers pinned on the device for the whole job, outside the window: loaded once and never evicted, reused by the next " +
            "pass or job of the same model on the worker (a count, spread over the layers, or 'auto': the most that fit the device memory)",
    };

    static (int Count, bool Auto) ParseResidentLayers(string? text)
    {
        if (text is null) return (0, false);
        if (string.Equals(text.Trim(), "auto", StringComparison.OrdinalIgnoreCase)) return (0, true);
        return int.TryParse(text.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n >= 0
            ? (n, false)
            : throw new ArgumentException($"--resident-layers must be a whole number from 0, or 'auto'; got '{text}'");
    }

    public static double? ParseGbps(string? text)
    {
        if (text is null) return null;
        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) || !(v > 0) || double.IsInfinity(v))
            throw new ArgumentException($"--link-gbps must be a positive number of GB/s; got '{text}'");
        return v;
    }

    /// <summary>A positive duration: a number of seconds, or with an ms, s or m suffix ("3s", "500ms", "1m").</summary>
    public static TimeSpan ParseDuration(string text, string flag)
    {
        var m = Regex.Match(text.Trim(), @"^(\d+(?:\.\d+)?)\s*(ms|s|m)?$");
        if (m.Success && double.TryParse(m.Groups[1].Value, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && v > 0)
        {
            var span = m.Groups[2].Value switch { "ms" => TimeSpan.FromMilliseconds(v), "m" => TimeSpan.FromMinutes(v), _ => TimeSpan.FromSeconds(v) };
            if (span <= TimeSpan.FromDays(1)) return span;
        }
        throw new ArgumentException($"{flag} must be a positive duration up to a day, like 30s, 500ms or 2m; got '{text}'");
    }
}
