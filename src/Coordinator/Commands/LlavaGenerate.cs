using Akka.Actor;
using Superpipeline.Contracts;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Generation;
using Superpipeline.Engine.Images;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Workers;
using static TorchSharp.torch;

namespace Superpipeline.Coordinator.Commands;

/// <summary>What a LLaVA generation with images made: the tokens and the generation's report, and the vision pass's report.</summary>
public sealed record LlavaGeneration(GenerationResult Result, PassReport Vision);

/// <summary><c>generate --image</c> on a LLaVA checkpoint, on one in-process stage (the engine's own generation path,
/// <see cref="GenerationStage"/>): the images through the vision side (<see cref="Llava.CreateVision"/>) as one pass on the stage's
/// device loader under the same (k, k') as the decoder (k and k' capped at the vision side's layers), then the decoder's prefill
/// with the image features at the image tokens (<see cref="Llava.PrefillInput"/>) and Llama's decode steps. The job system
/// (cluster, <c>submit</c>) carries token ids only, so images do not go through it.</summary>
public static class LlavaGenerate
{
    /// <summary>The vision side's policy: the decoder's (k, k', pinned layers), each capped at the vision side's
    /// <paramref name="layers"/> (window all stays all).</summary>
    public static OffloadPolicy VisionPolicy(PolicySpec spec, int layers)
    {
        int? window = spec.Window is { } k ? Math.Min(k, layers) : null;
        int? swap = spec.Swap is { } s ? Math.Min(s, window ?? layers) : null;
        return OffloadPolicy.For(spec with { Window = window, Swap = swap, ResidentLayers = Math.Min(spec.ResidentLayers, layers) }, layers);
    }

    /// <param name="prompts">Token ids, each image token already expanded (<see cref="Llava.ExpandImageTokens"/>).</param>
    /// <param name="images">PNG or JPEG files, one per <c>&lt;image&gt;</c> of the prompts in order.</param>
    public static async Task<LlavaGeneration> RunAsync(string directory, IReadOnlyList<string> images, IReadOnlyList<long[]> prompts,
        GenerationRequest request, PolicySpec policy, KvPlacement placement, DeviceSpec deviceSpec, Action<TokenStep>? onToken,
        CancellationToken cancel)
    {
        var config = LlavaConfig.Read(directory);
        var names = LlavaNames.In(directory);
        var preprocess = File.Exists(Path.Combine(directory, ImagePreprocess.FileName))
            ? ImagePreprocess.FromFile(Path.Combine(directory, ImagePreprocess.FileName))
            : ImagePreprocess.Clip(config.Vision.ImageSize);
        using var pixels = ImageInput.Load(images, preprocess);
        if (pixels.shape[2] != config.Vision.ImageSize || pixels.shape[3] != config.Vision.ImageSize)
            throw new ArgumentException($"--image: the checkpoint's image processing gives {pixels.shape[2]}×{pixels.shape[3]} pixels, but the vision "
                + $"tower takes {config.Vision.ImageSize}×{config.Vision.ImageSize} (vision_config.image_size)");

        var decoder = Llava.Create("llava", config, prompts.Count, prompts.Max(p => p.Length), names);
        var vision = Llava.CreateVision("llava-vision", config, images.Count, names);
        var decoderPolicy = OffloadPolicy.For(policy, decoder.Layers.Count);
        var visionPolicy = VisionPolicy(policy, vision.Layers.Count);
        using (var check = new CheckpointWeights(directory))
        {
            check.Check(decoder);
            check.Check(vision);
        }

        var hocon = WorkerConfig.Load();
        var settings = SuperpipelineSettings.Create(hocon);
        var system = ActorSystem.Create("superpipeline-llava", hocon);
        var device = DeviceFactory.Create(deviceSpec);
        var weights = new CheckpointWeights(directory);
        try
        {
            using var stage = GenerationStage.Start(system, device, decoder, weights, settings.AskTimeout, "llava");
            var visionLayers = vision.Layers.Select(l => system.ActorOf(LayerActor.Props(l, weights, device.WantsPinnedHost), $"llava-layer-{l.Index}"))
                .ToArray();
            var answer = await stage.Loader.Ask<object>(new DeviceLoaderActor.RunPass(vision, visionLayers, pixels, visionPolicy) { Stop = cancel },
                settings.PassTimeout, cancel).ConfigureAwait(false);
            foreach (var layer in visionLayers) system.Stop(layer);
            var (features, visionReport) = answer switch
            {
                DeviceLoaderActor.PassSucceeded ok => (ok.Output, ok.Report),
                DeviceLoaderActor.PassFailed failed => throw new InvalidOperationException($"the vision pass failed: {failed.Reason}"),
                _ => throw new InvalidOperationException($"unexpected answer to the vision pass: {answer}"),
            };
            using (features)
            {
                var options = new GenerationOptions(request, decoderPolicy, placement)
                {
                    PrefillInput = ids => Llava.PrefillInput(ids, features, config.ImageTokenIndex),
                };
                var result = await stage.GenerateAsync(prompts.Select(p => (IReadOnlyList<long>)p).ToArray(), options, settings.PassTimeout, onToken, cancel)
                    .ConfigureAwait(false);
                return new LlavaGeneration(result, visionReport);
            }
        }
        finally
        {
            await system.Terminate().ConfigureAwait(false);
            weights.Dispose();
            device.Dispose();
        }
    }
}
