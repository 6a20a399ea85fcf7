using System.Globalization;
using Superpipeline.Engine.Policy;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Generation;

/// <summary>The domain names of the generation settings, as refusals name them (the CLI maps each to its flag).</summary>
public static class GenerationFields
{
    public const string MaxNewTokens = "max new tokens", Temperature = "temperature", TopK = "top-k", TopP = "top-p",
        KvPlacement = "kv placement", Eos = "eos", Prompt = "prompt";
}

/// <summary>How the next token is chosen. Greedy (argmax) when none of <paramref name="Temperature"/>, <paramref name="TopK"/>,
/// <paramref name="TopP"/> is set; otherwise sampling as transformers' generate does with do_sample: the logits divided by the
/// temperature, then top-k, then top-p (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper in that order), softmax,
/// one multinomial draw. Each batch row draws from a generator of its own seeded from <paramref name="Seed"/> and its row, so
/// a row's tokens never depend on what the other rows hold.</summary>
public sealed record SamplingSettings(double? Temperature = null, int? TopK = null, double? TopP = null, long Seed = 0)
{
    public static SamplingSettings Greedy { get; } = new();
    public bool Samples => Temperature is not null || TopK is not null || TopP is not null;

    /// <summary>Throws a <see cref="FieldException"/> naming the first setting out of range.</summary>
    public void Validate()
    {
        if (Temperature is { } t && !(t > 0) || Temperature is double.PositiveInfinity)
            throw new FieldException(GenerationFields.Temperature, $"must be a positive number when sampling; got {Format(Temperature!.Value)}");
        if (TopK is { } k && k < 1) throw new FieldException(GenerationFields.TopK, $"must be at least 1; got {k}");
        if (TopP is { } p && !(p > 0 && p <= 1)) throw new FieldException(GenerationFields.TopP, $"must be in (0, 1]; got {Format(p)}");
    }

    static string Format(double v) => v.ToString(CultureInfo.InvariantCulture);

    public override string ToString() => !Samples ? "greedy"
        : $"sampling (temperature {Format(Temperature ?? 1.0)}, top-k {TopK?.ToString(CultureInfo.InvariantCulture) ?? "off"}, "
          + $"top-p {(TopP is { } p ? Format(p) : "off")}, seed {Seed})";
}

/// <summary>Chooses next tokens from logits [B, V] under <see cref="SamplingSettings"/>; holds one generator per row.</summary>
public sealed class TokenSampler : IDisposable
{
    readonly SamplingSettings _settings;
    readonly Generator[] _rows;

    public TokenSampler(SamplingSettings settings, int batch)
    {
        settings.Validate();
        _settings = settings;
        _rows = settings.Samples ? [.. Enumerable.Range(0, batch).Select(b => new Generator(RowSeed(settings.Seed, b)))] : [];
    }

    /// <summary>The seed of row <paramref name="row"/>'s generator: <paramref name="seed"/> mixed with the row (splitmix64).</summary>
    public static ulong RowSeed(long seed, int row)
    {
        ulong z = unchecked((ulong)seed + 0x9E3779B97F4A7C15UL * (ulong)(row + 1));
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        return z ^ (z >> 31);
    }

    /// <summary>The next token of each row from float logits [B, V] (host).</summary>
    public long[] Next(Tensor logits)
    {
        using var scope = NewDisposeScope();
        using var noGrad = inference_mode();
        var scores = logits.to_type(ScalarType.Float32);
        long batch = scores.shape[0];
        var next = new long[batch];
        for (long b = 0; b < batch; b++)
        {
            var row = scores[b];
            next[b] = _settings.Samples ? Sample(row, _rows[b]) : row.argmax().item<long>();
        }
        return next;
    }

    /// <summary>The warpers in transformers' order, then softmax and one draw with the row's generator.</summary>
    long Sample(Tensor row, Generator generator)
    {
        var scores = row;
        if (_settings.Temperature is { } t && t != 1.0) scores = scores / t;
        if (_settings.TopK is { } k)
        {
            long keep = Math.Min(k, scores.shape[0]);
            var kth = scores.topk((int)keep).values[keep - 1];
            scores = scores.masked_fill(scores.lt(kth), double.NegativeInfinity);
        }
        if (_settings.TopP is { } p && p < 1.0)
        {
            var (sorted, order) = scores.sort(descending: false);
            var cumulative = sorted.softmax(-1).cumsum(-1);
            var remove = cumulative.le(1 - p);
            remove[-1] = false; // keep at least one token
            var removeInPlace = remove.scatter(0, order, remove);
            scores = scores.masked_fill(removeInPlace, double.NegativeInfinity);
        }
        var probs = scores.softmax(-1);
        return multinomial(probs, 1, generator: generator).item<long>();
    }

    public void Dispose()
    {
        foreach (var g in _rows) g.Dispose();
    }
}
