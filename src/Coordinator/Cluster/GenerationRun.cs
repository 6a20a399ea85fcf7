using System.Collections.Immutable;
using System.Diagnostics;
using Akka.Actor;
using Superpipeline.Contracts;
using Superpipeline.Engine.Generation;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using Superpipeline.Workers;
using static Superpipeline.Messages.GenerationProtocol;
using static TorchSharp.torch;

namespace Superpipeline.Coordinator.Cluster;

/// <summary>The job manager's side of one generation attempt: which stages are ready and which have ended, and the generation
/// loop (<see cref="GenerationLoop.RunAsync"/>) whose <c>Pass</c> sends each step to stage 0 and waits for the last stage's
/// logits (delivered by the job manager from <see cref="GenerationLogits"/>). The loop runs off the actor's thread; it talks
/// back only through the callbacks it is given. Cancelling it (the attempt failed or was given up) ends the loop.</summary>
public sealed class GenerationRun(Attempt attempt, PaddedPrompts prompts, GenerationRequest request, KvPlacement placement) : IDisposable
{
    readonly object _lock = new();
    readonly CancellationTokenSource _cancel = new();
    TaskCompletionSource<Tensor>? _pending;
    int _pendingStep = -1;
    Stopwatch? _clock;

    public Attempt Attempt { get; } = attempt;
    public PaddedPrompts Prompts { get; } = prompts;
    public GenerationRequest Request { get; } = request;
    public KvPlacement Placement { get; } = placement;
    /// <summary>Entries each attention layer's cache holds at most: prompt + new tokens.</summary>
    public long Capacity => Prompts.Length + (long)Request.MaxNewTokens;

    public ImmutableHashSet<int> Ready { get; private set; } = [];
    public ImmutableSortedDictionary<int, GenerationEnded> Ended { get; private set; } = ImmutableSortedDictionary<int, GenerationEnded>.Empty;
    public bool Started => _clock is not null;
    /// <summary>What the loop made, once it has finished (the stages are then asked to end their sessions).</summary>
    public GenerationOutcome? Outcome { get; set; }
    public bool AllReady => Ready.Count == Attempt.Placement.Length;
    public bool AllEnded => Ended.Count == Attempt.Placement.Length;

    public void StageReady(int stage) => Ready = Ready.Add(stage);
    public void StageEnded(GenerationEnded ended) => Ended = Ended.SetItem(ended.Stage, ended);

    /// <summary>Starts the loop. <paramref name="send"/> sends a step to stage 0 (from the loop's thread); <paramref name="onToken"/>
    /// hears each step's tokens. The task ends with the outcome, or faults (a step failed, or the run was cancelled).</summary>
    public Task<GenerationOutcome> Start(Action<GenerationStepInput> send, Action<TokenStep> onToken)
    {
        _clock = Stopwatch.StartNew();
        var cancel = _cancel.Token;
        int step = 0;
        return Task.Run(() => GenerationLoop.RunAsync(Prompts, Request, async (ids, context, token) =>
        {
            var answer = new TaskCompletionSource<Tensor>(TaskCreationOptions.RunContinuationsAsynchronously);
            lock (_lock) (_pending, _pendingStep) = (answer, step);
            using var registration = token.Register(() => answer.TrySetCanceled(token));
            send(new GenerationStepInput(Attempt.Run, Attempt.Number, 0, step++, TensorPayloads.From(ids), TensorPayloads.From(context.Positions),
                TensorPayloads.From(context.AttentionMask), context.PastLength));
            return await answer.Task.ConfigureAwait(false);
        }, onToken, cancel), cancel);
    }

    /// <summary>The last stage's logits for <paramref name="step"/>; ignored unless the loop waits for that step.</summary>
    public void Deliver(int step, TensorPayload logits)
    {
        TaskCompletionSource<Tensor>? answer;
        lock (_lock)
        {
            if (step != _pendingStep || _pending is null) return;
            (answer, _pending) = (_pending, null);
        }
        var tensor = TensorPayloads.ToTensor(logits);
        if (!answer.TrySetResult(tensor)) tensor.Dispose();
    }

    /// <summary>Seconds since the loop started.</summary>
    public double WallSeconds => _clock?.Elapsed.TotalSeconds ?? 0;

    /// <summary>The one report of the generation: the stages' figures (peak of the fullest device, KV and moved bytes summed),
    /// the loop's timings, and the placement.</summary>
    public GenerationReport Report(LayeredModel model, GenerationOutcome outcome)
    {
        var placement = Attempt.Placement;
        var stages = placement.Select(p => Ended.TryGetValue(p.Stage, out var e)
            ? e.Plan with { Node = p.Slot.Node, Device = p.Slot.Device.Name }
            : new GenerationStagePlan(p.Stage, p.Slot.Node, p.Slot.Device.Name, p.FirstLayer, p.LayerCount, 0, 0, 0, 0, 0, 0)).ToImmutableArray();
        long capacity = Ended.Count > 0 ? Ended.Values.Min(e => e.DeviceCapacityBytes) : placement.Min(p => p.Slot.Device.CapacityBytes);
        return new GenerationReport(
            placement.Length == 1 ? placement[0].Slot.Device.Name : string.Join(",", placement.Select(p => $"{p.Slot.Node}/{p.Slot.Device.Name}")),
            model.Layers.Count, stages[0].Window, stages[0].Swap, GenerationSession.Name(Placement), Prompts.Batch, Prompts.Length, outcome.NewTokens,
            stages[0].Passes, model.Bytes, capacity, outcome.FirstTokenSeconds, outcome.DecodeTokensPerSecond, stages.Max(s => s.PeakDeviceBytes),
            stages.Sum(s => s.KvBytes), stages.Sum(s => s.BytesTransferred), WallSeconds)
        {
            Stages = stages, PeakHostWeightBytes = stages.Max(s => s.PeakHostWeightBytes),
        };
    }

    /// <summary>Tokens int64 [B, prompt + new] as they cross the wire.</summary>
    public static TensorPayload Tokens(long[,] tokens)
    {
        var bytes = new byte[tokens.Length * sizeof(long)];
        Buffer.BlockCopy(tokens, 0, bytes, 0, bytes.Length);
        return new TensorPayload("Int64", [tokens.GetLength(0), tokens.GetLength(1)], [.. bytes]);
    }

    /// <summary>Stops the loop (its pending step is cancelled).</summary>
    public void Cancel()
    {
        try { _cancel.Cancel(); } catch (ObjectDisposedException) { }
    }

    public void Dispose() => Cancel();
}
