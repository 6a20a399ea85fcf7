using System.CommandLine;
using Spectre.Console;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Images;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Simulation;
using Superpipeline.Engine.Text;
using Superpipeline.Messages;
using Superpipeline.Workers;
using static Superpipeline.Messages.JobProtocol;
using static TorchSharp.torch;

namespace Superpipeline.Coordinator.Commands;

/// <summary>What <c>superpipeline similarity</c> was asked to do, already parsed.</summary>
public sealed record SimilarityOptions(string Model, IReadOnlyList<string> Images, IReadOnlyList<string> Texts, PolicySpec Policy, DeviceSpec Device,
    string? OutputPath, long? HostMemory = null);

/// <summary>What a similarity run computed: logits_per_image [images, texts] and its softmax over texts, per image.</summary>
public sealed record SimilarityResult(float LogitScale, float[,] LogitsPerImage, float[,] Probabilities);

/// <summary><c>superpipeline similarity</c>: a CLIP checkpoint's two towers, each one job through the same engine path as <c>run</c>
/// (an embedded host, the window and swap given), then CLIPModel's logits of every image against every text.</summary>
public static class SimilarityCommand
{
    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "a CLIP checkpoint directory (config.json model_type clip)", Required = true };
        var images = new Option<string[]>("--image") { Description = "a PNG or JPEG (repeat it: one row each)", Required = true };
        var texts = new Option<string[]>("--text") { Description = "a text to compare the images with (repeat it: one column each)", Required = true };
        var streaming = new WindowOptions(WindowOptions.WithAuto);
        var output = new Option<string>("--output") { Description = "write logits_per_image [images, texts] to this NumPy .npy file" };
        var command = new Command("similarity", "CLIP: how well each image matches each text (logits_per_image and softmax per image), both " +
            "towers streamed through the device as run streams a model.");
        foreach (var o in new Option[] { model, images, texts, output }) command.Options.Add(o);
        streaming.AddTo(command);
        command.SetAction(async (r, cancel) => await RunAsync(new SimilarityOptions(
                r.GetValue(model)!, r.GetValue(images)!, r.GetValue(texts)!,
                streaming.Policy(r), streaming.DeviceSpec(r), r.GetValue(output), streaming.HostMemoryBytes(r)),
            AnsiConsole.Console, cancel));
        return command;
    }

    /// <summary>Runs both towers and prints the table; returns the exit code.</summary>
    public static async Task<int> RunAsync(SimilarityOptions o, IAnsiConsole console, CancellationToken cancel)
    {
        OutputPaths.CheckWritable(o.OutputPath, "--output");
        var result = await ComputeAsync(o, cancel);
        if (o.OutputPath is not null) Npy.Write(o.OutputPath, Payload(result.LogitsPerImage));
        Print(console, o, result);
        return 0;
    }

    /// <summary>Preprocesses the images with the checkpoint's preprocessor_config.json, tokenizes the texts with its tokenizer (padded to
    /// the longest, with the mask), runs the vision then the text tower as two jobs in one embedded host, and applies CLIPModel's
    /// similarity. One-line refusals: not a CLIP checkpoint, an image that does not decode, a text longer than the positions.</summary>
    public static async Task<SimilarityResult> ComputeAsync(SimilarityOptions o, CancellationToken cancel)
    {
        if (!Directory.Exists(o.Model)) throw new ArgumentException($"--model {o.Model}: not a directory; similarity reads a CLIP checkpoint");
        var config = ClipConfig.Read(o.Model);
        var ids = Clip.Tokenize(CheckpointTokenizer.Load(o.Model), o.Texts, config.Text);
        float logitScale = Clip.ReadLogitScale(o.Model);
        string pixels = ImageInput.WriteTemporary(o.Images, ImagePreprocess.ForCheckpoint(o.Model, config.Vision.ImageSize));
        string tokens = PromptIds.WriteTemporary(ids);
        try
        {
            var vision = ModelCatalog.CheckpointSpec(o.Model, o.Images.Count, 1, 1, pixels);
            var text = ModelCatalog.CheckpointSpec(o.Model, o.Texts.Count, 1, 1, tokens);
            foreach (var spec in new[] { vision, text }) Check(spec, o);
            await using var host = EmbeddedHost.Start(o.Device, o.HostMemory is { } h ? $"superpipeline.worker.host-memory = {h}" : null);
            var imageEmbeds = await RunJob(host, vision, o.Policy, cancel);
            var textEmbeds = await RunJob(host, text, o.Policy, cancel);
            using var image = TensorPayloads.ToTensor(imageEmbeds);
            using var words = TensorPayloads.ToTensor(textEmbeds);
            var (logits, probs) = Clip.Similarity(image, words, logitScale);
            using (logits)
            using (probs)
                return new SimilarityResult(logitScale, ToArray(logits), ToArray(probs));
        }
        finally
        {
            ImageInput.DeleteTemporary(pixels);
            PromptIds.DeleteTemporary(tokens);
        }
    }

    /// <summary>The checks <c>run</c> makes before a job: the policy against the layers, the device against the largest layer, the pins,
    /// the host memory for the weights.</summary>
    static void Check(ModelSpec spec, SimilarityOptions o)
    {
        var model = Preflight.Model(spec, o.Policy);
        Preflight.DeviceFits(model, o.Device.CapacityBytes);
        if (!o.Policy.Auto && !o.Policy.ResidentAuto)
            Planner.CheckPinsFit(ModelCost.From(model), OffloadPolicy.For(o.Policy, model.Layers.Count), o.Device.CapacityBytes);
        Preflight.HostWeightsFit(model, HostWeightLimit.Read(WorkerConfig.Load("worker")), Preflight.HostWeightBytes(spec, model, o.HostMemory));
    }

    static async Task<TensorPayload> RunJob(EmbeddedHost host, ModelSpec spec, PolicySpec policy, CancellationToken cancel)
    {
        cancel.ThrowIfCancellationRequested();
        var answer = await host.RunAsync(new SubmitJob(JobId.New(), spec, policy));
        return answer switch
        {
            JobSucceeded ok => ok.Output,
            JobFailed failed => throw new ArgumentException($"{spec.Name}: {failed.Reason}"),
            JobRefused refused => throw new ArgumentException($"{spec.Name}: {refused.Reason}"),
            _ => throw new InvalidOperationException($"{spec.Name}: unexpected answer {answer.GetType().Name}"),
        };
    }

    static float[,] ToArray(Tensor t)
    {
        var values = t.data<float>().ToArray();
        int rows = (int)t.shape[0], cols = (int)t.shape[1];
        var result = new float[rows, cols];
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++)
                result[i, j] = values[i * cols + j];
        return result;
    }

    static TensorPayload Payload(float[,] values)
    {
        var bytes = new byte[values.Length * sizeof(float)];
        Buffer.BlockCopy(values, 0, bytes, 0, bytes.Length);
        return new TensorPayload("Float32", [values.GetLength(0), values.GetLength(1)], [.. bytes]);
    }

    static void Print(IAnsiConsole console, SimilarityOptions o, SimilarityResult r)
    {
        console.MarkupLineInterpolated($"[bold]superpipeline similarity[/]: {o.Images.Count} image(s) × {o.Texts.Count} text(s)");
        console.MarkupLineInterpolated($"logit scale: exp({r.LogitScale:0.####}) = {Math.Exp(r.LogitScale):0.###}");
        var table = new Table().AddColumn("image");
        foreach (var text in o.Texts) table.AddColumn(new TableColumn(new Text(text)).RightAligned());
        for (int i = 0; i < o.Images.Count; i++)
            table.AddRow([new Text(Path.GetFileName(o.Images[i])),
                .. Enumerable.Range(0, o.Texts.Count).Select(j => new Text($"{r.LogitsPerImage[i, j]:0.000} ({r.Probabilities[i, j]:P1})"))]);
        console.Write(table);
        console.MarkupLine("each cell: logits_per_image (softmax over the texts, per image)");
        if (o.OutputPath is not null)
            console.MarkupLineInterpolated($"output: {o.OutputPath} (logits_per_image, float32 [[{o.Images.Count}, {o.Texts.Count}]])");
    }
}
