using System.Diagnostics;
using Superpipeline.Engine.Policy;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Generation;

/// <summary>Prompts of different lengths as one batch: left padded with <paramref name="PadId"/>, mask 0 on the padding.</summary>
public sealed record PaddedPrompts(long[,] Ids, long[,] Mask, long PadId)
{
    public int Batch => Ids.GetLength(0);
    public int Length => Ids.GetLength(1);

    /// <summary>Left pads <paramref name="prompts"/> (each at least one id) to the longest; throws a <see cref="FieldException"/>
    /// naming the prompt when one is empty.</summary>
    public static PaddedPrompts LeftPad(IReadOnlyList<IReadOnlyList<long>> prompts, long padId)
    {
        if (prompts.Count == 0) throw new FieldException(GenerationFields.Prompt, "list is empty: give at least one prompt");
        for (int b = 0; b < prompts.Count; b++)
            if (prompts[b].Count == 0) throw new FieldException(GenerationFields.Prompt, $"{b} has no tokens");
        int length = prompts.Max(p => p.Count);
        var ids = new long[prompts.Count, length];
        var mask = new long[prompts.Count, length];
        for (int b = 0; b < prompts.Count; b++)
        {
            int pad = length - prompts[b].Count;
            for (int t = 0; t < length; t++)
            {
                ids[b, t] = t < pad ? padId : prompts[b][t - pad];
                mask[b, t] = t < pad ? 0 : 1;
            }
        }
        return new PaddedPrompts(ids, mask, padId);
    }
}

/// <summary>What generation is asked to do, beyond its prompts.</summary>
/// <param name="Eos">The end-of-sequence id: a row that emits it is finished and emits <paramref name="PadId"/> after it
/// (as transformers' generate does); null: rows run to <paramref name="MaxNewTokens"/>.</param>
/// <param name="PadId">Fills left padding and finished rows; the EOS id when there is one, else 0, by default.</param>
public sealed record GenerationRequest(int MaxNewTokens, SamplingSettings Sampling, long? Eos = null, long? PadId = null)
{
    public long Pad => PadId ?? Eos ?? 0;

    /// <summary>Throws a <see cref="FieldException"/> naming the first bad setting: max new tokens below 1, a sampling setting
    /// out of range, or prompts plus new tokens beyond the <paramref name="maxPositions"/> the model has.</summary>
    public void Validate(int longestPrompt, long? maxPositions, long vocab)
    {
        if (MaxNewTokens < 1) throw new FieldException(GenerationFields.MaxNewTokens, $"must be at least 1; got {MaxNewTokens}");
        Sampling.Validate();
        if (Eos is { } e && (e < 0 || e >= vocab)) throw new FieldException(GenerationFields.Eos, $"id {e} is outside the vocabulary [0, {vocab})");
        if (maxPositions is { } max && longestPrompt + (long)MaxNewTokens > max)
            throw new FieldException(GenerationFields.MaxNewTokens,
                $"({MaxNewTokens}) plus the prompt's {longestPrompt} tokens exceed the model's {max} positions");
    }
}

/// <summary>One token per row, as it is made: <paramref name="Step"/> 0 is the token the prefill chose.</summary>
public sealed record TokenStep(int Step, long[] Tokens, bool[] Finished);

/// <summary>What a generation made: token ids [B, prompt + new] (the padded prompts, then one column per step run; fewer
/// than asked when every row finished), and its timings.</summary>
/// <param name="FirstTokenSeconds">From the start to the first token (the prefill pass and its sampling).</param>
/// <param name="DecodeSeconds">The decode passes after the first token, and their sampling.</param>
public sealed record GenerationOutcome(long[,] Tokens, int PromptLength, int NewTokens, double FirstTokenSeconds, double DecodeSeconds)
{
    /// <summary>Tokens made by decode passes (every row, every step after the first) per second of decoding; 0 with none.</summary>
    public double DecodeTokensPerSecond => NewTokens > 1 && DecodeSeconds > 0 ? Tokens.GetLength(0) * (NewTokens - 1) / DecodeSeconds : 0;
}

/// <summary>The generation loop, independent of where passes run: a prefill pass over the left-padded prompts, then one
/// decode pass per new token, each given the step's token ids [B, T] and <see cref="StepContext"/> and returning the logits of
/// the last position, [B, 1, V] (a host tensor the loop disposes). The caller's pass function owns the KV caches.</summary>
public static class GenerationLoop
{
    public delegate Task<Tensor> Pass(Tensor ids, StepContext step, CancellationToken cancel);

    /// <param name="prefillInput">The family's prefill input made from the padded prompts' ids (a host tensor the loop disposes:
    /// LLaVA's ids with the image features, <c>Llava.PrefillInput</c>); null: the ids themselves. Decode passes always take ids.</param>
    public static async Task<GenerationOutcome> RunAsync(PaddedPrompts prompts, GenerationRequest request, Pass pass,
        Action<TokenStep>? onToken = null, CancellationToken cancel = default, Func<Tensor, Tensor>? prefillInput = null)
    {
        int batch = prompts.Batch, promptLength = prompts.Length;
        var clock = Stopwatch.StartNew();
        var tokens = new List<long[]>();
        var finished = new bool[batch];
        var mask = (long[,])prompts.Mask.Clone();
        using var sampler = new TokenSampler(request.Sampling, batch);
        double firstToken = 0;
        long[]? last = null;
        for (int step = 0; step < request.MaxNewTokens; step++)
        {
            cancel.ThrowIfCancellationRequested();
            Tensor logits;
            using (var ids = step == 0 ? Prefill(prompts.Ids, prefillInput) : from_array(last!).view(batch, 1))
            using (var context = Context(mask, step == 0 ? 0 : promptLength + step - 1))
                logits = await pass(ids, context, cancel).ConfigureAwait(false);
            long[] next;
            using (logits)
            {
                if (logits.dim() != 3 || logits.shape[0] != batch || logits.shape[1] != 1)
                    throw new InvalidOperationException($"a generation pass returned logits [{string.Join(", ", logits.shape)}], not [{batch}, 1, vocab]");
                using var lastPosition = logits.select(1, 0);
                next = sampler.Next(lastPosition);
            }
            for (int b = 0; b < batch; b++)
            {
                if (finished[b]) next[b] = request.Pad;
                else if (request.Eos is { } eos && next[b] == eos) finished[b] = true;
            }
            tokens.Add(next);
            if (step == 0) firstToken = clock.Elapsed.TotalSeconds;
            onToken?.Invoke(new TokenStep(step, next, (bool[])finished.Clone()));
            if (finished.All(f => f)) break;
            mask = Extend(mask);
            last = next;
        }
        var all = new long[batch, promptLength + tokens.Count];
        for (int b = 0; b < batch; b++)
        {
            for (int t = 0; t < promptLength; t++) all[b, t] = prompts.Ids[b, t];
            for (int s = 0; s < tokens.Count; s++) all[b, promptLength + s] = tokens[s][b];
        }
        return new GenerationOutcome(all, promptLength, tokens.Count, firstToken, clock.Elapsed.TotalSeconds - firstToken);
    }

    static Tensor Prefill(long[,] ids, Func<Tensor, Tensor>? prefillInput)
    {
        if (prefillInput is null) return from_array(ids);
        using var tensor = from_array(ids);
        return prefillInput(tensor);
    }

    /// <summary>The context of a pass over the last <c>T</c> columns of <paramref name="mask"/> (T = all of it for the prefill
    /// at <paramref name="past"/> 0, else 1): positions cumsum(mask) − 1, 1 on padding (transformers' position_ids).</summary>
    public static StepContext Context(long[,] mask, long past)
    {
        int batch = mask.GetLength(0), total = mask.GetLength(1);
        long tokens = total - past;
        var positions = new long[batch, tokens];
        for (int b = 0; b < batch; b++)
        {
            long sum = 0;
            for (int t = 0; t < total; t++)
            {
                sum += mask[b, t];
                if (t >= past) positions[b, t - past] = mask[b, t] == 0 ? 1 : sum - 1;
            }
        }
        return new StepContext(from_array(positions), from_array(mask), past, lastPositionOnly: true);
    }

    static long[,] Extend(long[,] mask)
    {
        int batch = mask.GetLength(0), total = mask.GetLength(1);
        var longer = new long[batch, total + 1];
        for (int b = 0; b < batch; b++)
        {
            for (int t = 0; t < total; t++) longer[b, t] = mask[b, t];
            longer[b, total] = 1;
        }
        return longer;
    }
}
