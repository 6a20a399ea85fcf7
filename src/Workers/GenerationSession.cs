using System.Diagnostics;
using Akka.Actor;
using Superpipeline.Contracts;
using Superpipeline.Engine.Generation;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>What a generation session is asked to do: the loop's request, the offload policy every pass streams under, and
/// where the KV caches live.</summary>
public sealed record GenerationOptions(GenerationRequest Request, OffloadPolicy Policy, KvPlacement Placement = KvPlacement.Device)
{
    /// <summary>The family's prefill input from the padded prompts' ids (see <see cref="GenerationLoop.RunAsync"/>); null: the ids.</summary>
    public Func<Tensor, Tensor>? PrefillInput { get; init; }
}

/// <summary>A generation's tokens, int64 [B, prompt + new] (left-padded prompts, then the new tokens), and its report.</summary>
public sealed record GenerationResult(long[,] Tokens, GenerationReport Report);

/// <summary>Generation on one stage that holds every layer: a prefill pass over the left-padded prompts, then one decode pass
/// per new token, each a <see cref="DeviceLoaderActor.RunPass"/> with a <see cref="GenerationStep"/> on the same loader, layer
/// actors and (k, k') as a plain pass. Generation jobs (generate, submit --generate) run the same passes stage by stage from the
/// job manager (see <see cref="GenerationStageSession"/>); this loop over one stage is the engine's reference. Whatever happens
/// (success, a failed pass, cancellation), the session's KV caches are freed on the device and in the layer actors before it
/// returns.</summary>
public static class GenerationSession
{
    /// <param name="prompts">Token ids, one list per batch row, of any lengths (left padded here).</param>
    /// <param name="passTimeout">The longest one pass may take.</param>
    /// <param name="onToken">Called once per step with each row's new token (on the caller's continuation).</param>
    public static async Task<GenerationResult> RunAsync(IActorRef loader, LayeredModel model, IReadOnlyList<IActorRef> layerActors,
        IReadOnlyList<IReadOnlyList<long>> prompts, GenerationOptions options, TimeSpan passTimeout, Action<TokenStep>? onToken = null,
        CancellationToken cancel = default)
    {
        var request = options.Request;
        var padded = Check(model, prompts, request);

        var session = Guid.NewGuid();
        long capacity = padded.Length + (long)request.MaxNewTokens;
        var clock = Stopwatch.StartNew();
        var reports = new List<PassReport>();
        GenerationOutcome outcome;
        try
        {
            outcome = await GenerationLoop.RunAsync(padded, request, async (ids, context, token) =>
            {
                var step = new GenerationStep(session, context, options.Placement, capacity);
                var answer = await loader.Ask<object>(new DeviceLoaderActor.RunPass(model, layerActors, ids, options.Policy)
                    {
                        // Pinned layers stay on the device from one token's pass to the next: the layer actors that own the
                        // weights are the model's identity.
                        Step = step, Stop = token, ResidentKey = layerActors[0],
                    },
                    passTimeout, token).ConfigureAwait(false);
                switch (answer)
                {
                    case DeviceLoaderActor.PassSucceeded ok:
                        reports.Add(ok.Report);
                        return ok.Output;
                    case DeviceLoaderActor.PassFailed failed:
                        throw new GenerationFailedException(failed.Reason, failed.Cause);
                    default:
                        throw new InvalidOperationException($"unexpected answer to a generation pass: {answer}");
                }
            }, onToken, cancel, options.PrefillInput).ConfigureAwait(false);
        }
        catch
        {
            // The pass's own error is the one to report; freeing is still attempted (a failed pass has freed the device already).
            try { await EndAsync(loader, layerActors, model, session, options.Placement, passTimeout).ConfigureAwait(false); }
            catch (Exception) { /* a loader or layer actor that is gone frees its caches when it stops */ }
            throw;
        }
        await EndAsync(loader, layerActors, model, session, options.Placement, passTimeout).ConfigureAwait(false);

        var first = reports[0];
        long kvBytes = model.Layers.Sum(l => l.Kv?.Bytes(padded.Batch, capacity) ?? 0);
        var report = new GenerationReport(first.Device, model.Layers.Count, first.Window, first.Swap, Name(options.Placement), padded.Batch,
            padded.Length, outcome.NewTokens, reports.Count, model.Bytes, first.DeviceCapacityBytes, outcome.FirstTokenSeconds,
            outcome.DecodeTokensPerSecond, reports.Max(r => r.PeakDeviceBytes), kvBytes, reports.Sum(r => r.BytesTransferred),
            clock.Elapsed.TotalSeconds);
        return new GenerationResult(outcome.Tokens, report);
    }

    /// <summary>The prompts left padded, once the request and the prompts are checked against <paramref name="model"/> (the whole
    /// model): a <see cref="FieldException"/> names the first bad field (max new tokens below 1, a sampling setting out of range,
    /// an EOS id outside the vocabulary, prompt plus new tokens beyond the model's positions, an empty prompt, an id ≥ vocab).</summary>
    public static PaddedPrompts Check(LayeredModel model, IReadOnlyList<IReadOnlyList<long>> prompts, GenerationRequest request)
    {
        var padded = PaddedPrompts.LeftPad(prompts, request.Pad);
        long vocab = model.ActivationShapes()[^1].Shape[^1];
        long? maxPositions = model.Layers.Select(l => l.MaxPositions).Where(p => p is not null).Min();
        request.Validate(padded.Length, maxPositions, vocab);
        for (int b = 0; b < prompts.Count; b++)
            foreach (long id in prompts[b])
                if (id < 0 || id >= vocab)
                    throw new FieldException(GenerationFields.Prompt, $"{b} holds token id {id}, outside the vocabulary [0, {vocab})");
        return padded;
    }

    /// <summary>A generation job's request, prompts and KV placement as the engine takes them (the one conversion from the wire
    /// record); a <see cref="FieldException"/> naming the KV placement when it is neither "device" nor "host".</summary>
    public static (GenerationRequest Request, IReadOnlyList<IReadOnlyList<long>> Prompts, KvPlacement Placement) FromSpec(GenerationParameters spec) =>
        (new GenerationRequest(spec.MaxNewTokens, new SamplingSettings(spec.Temperature, spec.TopK, spec.TopP, spec.Seed), spec.Eos, spec.Pad),
            spec.Prompts.IsDefault ? [] : [.. spec.Prompts.Select(p => (IReadOnlyList<long>)(p.IsDefault ? [] : [.. p]))],
            ParsePlacement(spec.Kv));

    /// <summary>The placement as the report and the CLI name it: "device" or "host".</summary>
    public static string Name(KvPlacement placement) => placement == KvPlacement.Host ? "host" : "device";

    /// <summary>"device" or "host"; a <see cref="FieldException"/> naming the KV placement otherwise.</summary>
    public static KvPlacement ParsePlacement(string text) => text.Trim().ToLowerInvariant() switch
    {
        "device" => KvPlacement.Device,
        "host" => KvPlacement.Host,
        _ => throw new FieldException(GenerationFields.KvPlacement, $"must be 'device' or 'host'; got '{text}'"),
    };

    /// <summary>Frees the session's caches: the loader's device caches, and each attention layer's host cache (send it after the
    /// session's last pass has answered).</summary>
    public static async Task EndAsync(IActorRef loader, IReadOnlyList<IActorRef> layerActors, LayeredModel model, Guid session, KvPlacement placement,
        TimeSpan timeout)
    {
        var ends = new List<Task> { loader.Ask<DeviceLoaderActor.SessionEnded>(new DeviceLoaderActor.EndSession(session), timeout) };
        if (placement == KvPlacement.Host)
            for (int i = 0; i < layerActors.Count; i++)
                if (model.Layers[i].Kv is not null) ends.Add(layerActors[i].Ask<LayerActor.KvEnded>(new LayerActor.EndKv(session), timeout));
        await Task.WhenAll(ends).ConfigureAwait(false);
    }
}

/// <summary>A generation pass failed; the message is the pass's one-line reason.</summary>
public sealed class GenerationFailedException(string reason, Exception? cause) : Exception(reason, cause);
