using System.Globalization;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Engine.Training;

/// <summary>The training fields the engine names in its refusals (the CLI maps each to its flag).</summary>
public static class TrainingFields
{
    public const string LearningRate = "learning rate", Momentum = "momentum", WeightDecay = "weight decay", ClipNorm = "clip norm",
        Optimizer = "optimizer", Schedule = "schedule", Warmup = "warm-up steps", Steps = "steps", MicroBatches = "micro-batches",
        Batch = "batch", Labels = "labels", Data = "data", CheckpointEvery = "checkpoint every";
}

/// <summary>torch.optim's optimizers the layer actors run on their own weights.</summary>
public enum OptimizerKind { Sgd, AdamW }

/// <summary>One optimizer with every knob, as torch.optim takes them: SGD (momentum, dampening 0, weight decay added to the
/// gradient, no Nesterov) or AdamW (decoupled weight decay, bias correction, eps). Each LayerActor builds its own instance over
/// its own parameters (<see cref="Create"/>); the arithmetic is per parameter, so the layers' optimizers together compute what
/// one optimizer over the whole model computes.</summary>
public sealed record OptimizerSettings(OptimizerKind Kind, double LearningRate, double Momentum = 0, double WeightDecay = 0,
    double Beta1 = 0.9, double Beta2 = 0.999, double Eps = 1e-8)
{
    public static OptimizerKind ParseKind(string text) => text.ToLowerInvariant() switch
    {
        "sgd" => OptimizerKind.Sgd,
        "adamw" => OptimizerKind.AdamW,
        _ => throw new FieldException(TrainingFields.Optimizer, $"must be sgd or adamw; got \"{text}\""),
    };

    /// <summary>Throws a <see cref="FieldException"/> naming the first knob out of range.</summary>
    public OptimizerSettings Validate()
    {
        if (!(LearningRate > 0) || double.IsInfinity(LearningRate))
            throw new FieldException(TrainingFields.LearningRate, $"must be a positive number; got {Format(LearningRate)}");
        if (!(Momentum >= 0) || double.IsInfinity(Momentum))
            throw new FieldException(TrainingFields.Momentum, $"must be 0 or more; got {Format(Momentum)}");
        if (Kind == OptimizerKind.AdamW && Momentum != 0)
            throw new FieldException(TrainingFields.Momentum, "applies to sgd only (adamw has its betas)");
        if (!(WeightDecay >= 0) || double.IsInfinity(WeightDecay))
            throw new FieldException(TrainingFields.WeightDecay, $"must be 0 or more; got {Format(WeightDecay)}");
        return this;
    }

    /// <summary>torch.optim.SGD or torch.optim.AdamW over <paramref name="parameters"/> (TorchSharp's own classes).</summary>
    public OptimizerHelper Create(IEnumerable<Parameter> parameters) => Kind switch
    {
        OptimizerKind.Sgd => torch.optim.SGD(parameters, LearningRate, Momentum, 0.0, WeightDecay, false, false),
        _ => torch.optim.AdamW(parameters, LearningRate, Beta1, Beta2, Eps, WeightDecay, false, false),
    };

    /// <summary>Host bytes of the state it keeps per parameter byte (SGD with momentum: one buffer; AdamW: two moments).</summary>
    public int StateCopies => Kind == OptimizerKind.AdamW ? 2 : Momentum != 0 ? 1 : 0;

    /// <summary>Host bytes a layer holds for training beside its stored weights, for <paramref name="float32Bytes"/> of parameters
    /// at float32: the master copy, the gradients and this optimizer's state.</summary>
    public long TrainingBytes(long float32Bytes) => float32Bytes * (2 + StateCopies);

    public override string ToString() => Kind == OptimizerKind.Sgd
        ? string.Create(CultureInfo.InvariantCulture, $"sgd(lr {LearningRate}, momentum {Momentum}, weight decay {WeightDecay})")
        : string.Create(CultureInfo.InvariantCulture, $"adamw(lr {LearningRate}, betas ({Beta1}, {Beta2}), eps {Eps}, weight decay {WeightDecay})");

    public static string Format(double v) => v.ToString(CultureInfo.InvariantCulture);
}

public enum ScheduleKind { Constant, Cosine }

/// <summary>The learning rate of each step: constant, or transformers' get_cosine_schedule_with_warmup (num_cycles 0.5) as
/// LambdaLR applies it: step s (0-based, the s-th optimizer step) uses base · λ(s), λ(s) = s / max(1, warmup) while
/// s &lt; warmup, then max(0, 0.5 · (1 + cos(π · 0.5 · 2 · progress))), progress = (s − warmup) / max(1, steps − warmup).</summary>
public sealed record LrSchedule(ScheduleKind Kind, int Warmup, int Steps)
{
    public static LrSchedule Constant { get; } = new(ScheduleKind.Constant, 0, 0);

    public static ScheduleKind ParseKind(string text) => text.ToLowerInvariant() switch
    {
        "constant" => ScheduleKind.Constant,
        "cosine" => ScheduleKind.Cosine,
        _ => throw new FieldException(TrainingFields.Schedule, $"must be constant or cosine; got \"{text}\""),
    };

    public LrSchedule Validate()
    {
        if (Warmup < 0) throw new FieldException(TrainingFields.Warmup, $"must be 0 or more; got {Warmup}");
        if (Kind == ScheduleKind.Constant && Warmup != 0) throw new FieldException(TrainingFields.Warmup, "applies to the cosine schedule only");
        return this;
    }

    /// <summary>λ(<paramref name="step"/>), in Python's float arithmetic (double).</summary>
    public double Factor(int step)
    {
        if (Kind == ScheduleKind.Constant) return 1.0;
        if (step < Warmup) return step / (double)Math.Max(1, Warmup);
        double progress = (step - Warmup) / (double)Math.Max(1, Steps - Warmup);
        return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * 0.5 * 2.0 * progress)));
    }

    /// <summary>The learning rate of step <paramref name="step"/>: base_lr · λ(step), as LambdaLR computes it.</summary>
    public double Rate(double baseRate, int step) => baseRate * Factor(step);
}

/// <summary>torch.nn.utils.clip_grad_norm_'s arithmetic (libtorch's, which TorchSharp calls), split between the layers that
/// hold the gradients and the step's coordinator: each layer reports the 2-norm of each of its gradients (float32, as
/// grad.norm(2) gives it); the coordinator stacks them in the model's parameter order, takes their 2-norm (total), and
/// answers with clamp(max / (total + 1e-6), max: 1), the float32 factor every gradient is multiplied by. Per-tensor norms,
/// not a squared sum per layer: stack(norms).norm() sums squares in one reduction over all of them, and only the same values
/// in the same order give the resident loop's bits.</summary>
public static class GradClip
{
    /// <summary>The total norm and the clip coefficient for per-tensor <paramref name="norms"/> in parameter order.</summary>
    public static (float Total, float Coefficient) Coefficient(IReadOnlyList<float> norms, double maxNorm)
    {
        if (norms.Count == 0) throw new ArgumentException("no gradients to clip");
        using var scope = NewDisposeScope();
        var stacked = tensor(norms.ToArray(), ScalarType.Float32);
        var total = norms.Count == 1 ? stacked[0] : stacked.norm(2.0f);
        var denominator = total + 1e-6;
        var coef = clamp(full_like(denominator, maxNorm).div_(denominator), max: 1.0); // ATen's Scalar / Tensor: fill, then divide
        return (total.item<float>(), coef.item<float>());
    }
}

/// <summary>Losses on the logits a model's head produces.</summary>
public static class TrainingLoss
{
    /// <summary>Hugging Face's causal-LM loss: the mean cross-entropy of ids[:, 1:] predicted from logits[:, :-1].</summary>
    public static Tensor CausalLm(Tensor logits, Tensor ids)
    {
        long v = logits.shape[^1];
        var shifted = logits.narrow(1, 0, logits.shape[1] - 1).reshape(-1, v);
        var labels = ids.narrow(1, 1, ids.shape[1] - 1).reshape(-1);
        return F.cross_entropy(shifted, labels);
    }

    /// <summary>The loss of <paramref name="objective"/>: <see cref="CausalLm"/> on the ids, or <see cref="ClassificationLoss.Of"/>
    /// on the class labels.</summary>
    public static Tensor Of(TrainingObjective objective, Tensor logits, Tensor labels) =>
        objective == TrainingObjective.Classification ? ClassificationLoss.Of(logits, labels) : CausalLm(logits, labels);

    /// <summary>Checks token ids as labels of a model with <paramref name="vocab"/> tokens and at most <paramref name="positions"/>
    /// positions: int64 [rows, seq] with seq ≥ 2, every id in [0, vocab). Throws a <see cref="FieldException"/> naming the labels.</summary>
    public static void CheckLabels(Tensor ids, long vocab, long positions)
    {
        if (ids.dtype != ScalarType.Int64 || ids.dim() != 2)
            throw new FieldException(TrainingFields.Labels, $"must be int64 [rows, seq]; got {ids.dtype}[{string.Join(", ", ids.shape)}]");
        if (ids.shape[1] < 2 || ids.shape[1] > positions)
            throw new FieldException(TrainingFields.Labels, $"rows must hold 2 to {positions} tokens (the model's positions); got {ids.shape[1]}");
        using var scope = NewDisposeScope();
        var bad = (ids < 0).logical_or(ids >= vocab).nonzero();
        if (bad.shape[0] == 0) return;
        long row = bad[0, 0].item<long>(), col = bad[0, 1].item<long>();
        throw new FieldException(TrainingFields.Labels,
            $"hold token id {ids[row, col].item<long>()} at row {row}, position {col}: outside the vocabulary of {vocab}");
    }
}

/// <summary>A model's trainable parameters, each once: a tensor two layers share (a head tied to the embedding: the same
/// checkpoint name in both) counts once, at its first layer, as it does in the model's state dict.</summary>
public static class ModelParameters
{
    /// <summary>(layer, name) of every distinct parameter in model order: layer by layer, each layer's own order.</summary>
    public static IReadOnlyList<(int Layer, string Name)> Distinct(LayeredModel model)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var list = new List<(int, string)>();
        foreach (var layer in model.Layers)
            foreach (var p in layer.Parameters)
                if (seen.Add(p.Name)) list.Add((layer.Index, p.Name));
        return list;
    }

    /// <summary>The layers holding each parameter that more than one layer holds (tied), in layer order.</summary>
    public static IReadOnlyDictionary<string, IReadOnlyList<int>> Tied(LayeredModel model) => model.Layers
        .SelectMany(l => l.Parameters.Select(p => (p.Name, l.Index)))
        .GroupBy(e => e.Name, StringComparer.Ordinal)
        .Where(g => g.Count() > 1)
        .ToDictionary(g => g.Key, g => (IReadOnlyList<int>)[.. g.Select(e => e.Index).Order()], StringComparer.Ordinal);
}
