using System.CommandLine;
using System.Globalization;
using System.Security.Cryptography;
using Spectre.Console;
using Superpipeline.Contracts;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Onnx;
using Superpipeline.Engine.Policy;
using static TorchSharp.torch;

namespace Superpipeline.Coordinator.Commands;

/// <summary>What <c>superpipeline embed</c> was asked to do, already parsed.</summary>
/// <param name="Vocab">The WordPiece vocab.txt; null: the one beside the model.</param>
/// <param name="Family">The ONNX family (<c>--family</c>); null: the one whose inputs the graph has. Only "bert" embeds.</param>
public sealed record EmbedOptions(string Model, IReadOnlyList<string> Texts, string OutputPath, string? HiddenStatesPath, string? Family,
    string? Vocab, PolicySpec Policy, DeviceSpec Device)
{
    public long? HostMemory { get; init; }
}

/// <summary><c>superpipeline embed</c>: sentence embeddings from a BERT encoder's ONNX file (all-MiniLM-L6-v2's pipeline: mean pooling
/// over the mask, L2 normalisation). The texts are tokenized (WordPiece, [CLS] … [SEP], padded to the longest), then one pass of
/// <c>run</c> (the same job through an embedded host, streaming the layers under (k, k')) gives the packed [N, T + 2, H] output whose
/// rows T are the embeddings (<see cref="Bert.Unpack"/>).</summary>
public static class EmbedCommand
{
    public static Command Build()
    {
        var model = new Option<string>("--model") { Description = "a BERT encoder as an ONNX file (e.g. from 'superpipeline weights --name minilm')",
            Required = true };
        var text = new Option<string[]>("--text") { Description = "a text to embed (repeatable: one embedding per text)", Required = true,
            AllowMultipleArgumentsPerToken = false };
        var output = new Option<string>("--output") { Description = "write the embeddings, float32 [texts, hidden], to this NumPy .npy file",
            Required = true };
        var hidden = new Option<string>("--hidden-states")
        {
            Description = "also write the last hidden state, float32 [texts, tokens, hidden] (padded positions as computed), to this .npy file",
        };
        var family = new Option<string>("--family") { Description = "the ONNX family (default: the one whose inputs the graph has); only bert embeds" };
        var vocab = new Option<string>("--vocab") { Description = "the WordPiece vocab.txt (default: vocab.txt beside the model)" };
        var pass = new WindowOptions(WindowOptions.WithAuto);
        var command = new Command("embed", "Embed texts with a BERT encoder from ONNX (mean pooling and L2 normalisation, as sentence-transformers' " +
            "all-MiniLM-L6-v2), streaming its layers under (k, k') as run does.");
        foreach (var o in new Option[] { model, text, output, hidden, family, vocab }) command.Options.Add(o);
        pass.AddTo(command);
        command.SetAction((r, cancel) => RunAsync(new EmbedOptions(r.GetValue(model)!, r.GetValue(text) ?? [], r.GetValue(output)!, r.GetValue(hidden),
            r.GetValue(family), r.GetValue(vocab), pass.Policy(r), pass.DeviceSpec(r)) { HostMemory = pass.HostMemoryBytes(r) }, AnsiConsole.Console, cancel));
        return command;
    }

    public static async Task<int> RunAsync(EmbedOptions o, IAnsiConsole console, CancellationToken cancel)
    {
        OutputPaths.CheckWritable(o.OutputPath, "--output");
        OutputPaths.CheckWritable(o.HiddenStatesPath, "--hidden-states");
        if (!OnnxImport.IsOnnx(o.Model)) throw new ArgumentException($"--model {o.Model}: embed takes a BERT encoder's .onnx file");
        string family = OnnxImport.FamilyOf(o.Model, o.Family);
        if (family != BertConfig.ModelType) throw new ArgumentException($"--model {o.Model}: embed takes the bert family, not {family}");
        string vocab = o.Vocab ?? Path.Combine(Path.GetDirectoryName(Path.GetFullPath(o.Model))!, "vocab.txt");
        int positions = MaxPositions(o.Model);
        var encoded = BertText.Encode(BertText.Load(vocab), o.Texts, positions);

        string scratch = Directory.CreateTempSubdirectory("superpipeline-embed-").FullName;
        try
        {
            string input = Path.Combine(scratch, "input.npy");
            Npy.Write(input, encoded);
            var spec = ModelCatalog.CheckpointSpec(o.Model, (int)encoded.Shape[0], (int)encoded.Shape[2], 0, input, family);
            var run = new RunOptions(spec, o.Policy, o.Device, null, null, null) { HostMemory = o.HostMemory };
            var ok = await RunCommand.PassAsync(run, console, cancel);
            RunCommand.Summarize(console, run, ok, Convert.ToHexStringLower(SHA256.HashData(ok.Output.Bytes.AsSpan())));
            WriteOutputs(o, ok.Output, console);
            return 0;
        }
        finally
        {
            Directory.Delete(scratch, recursive: true);
        }
    }

    /// <summary>The positions the model's embeddings have (a text longer than them is refused before any pass).</summary>
    static int MaxPositions(string model)
    {
        var probe = OnnxImport.Create(new ModelSpec(BertConfig.ModelType, 0, 0, 0, 0, Sequence: 1, Batch: 1, Seed: 0, Checkpoint: Path.GetFullPath(model)));
        return (int)probe.Layers.OfType<BertEmbeddings>().Single().MaxPositions!.Value;
    }

    static void WriteOutputs(EmbedOptions o, TensorPayload packed, IAnsiConsole console)
    {
        if (packed.DType != "Float32" || packed.Shape.Length != 3)
            throw new InvalidOperationException($"the pass gave {packed.DType}[{string.Join(", ", packed.Shape)}], not BERT's packed output");
        using var scope = NewDisposeScope();
        var all = TensorPayloads.ToTensor(packed);
        var (hidden, embeddings, _) = Bert.Unpack(all);
        embeddings = embeddings.contiguous();
        Npy.Write(o.OutputPath, TensorPayloads.From(embeddings));
        if (o.HiddenStatesPath is not null) Npy.Write(o.HiddenStatesPath, TensorPayloads.From(hidden.contiguous()));
        var values = embeddings.data<float>().ToArray();
        long h = embeddings.shape[1];
        for (int i = 0; i < o.Texts.Count; i++)
        {
            var row = values.AsSpan(i * (int)h, (int)h).ToArray();
            string first = string.Join(", ", row.Take(4).Select(v => v.ToString("0.0000", CultureInfo.InvariantCulture)));
            double norm = Math.Sqrt(row.Sum(v => (double)v * v));
            string clip = o.Texts[i].Length > 40 ? o.Texts[i][..40] + "…" : o.Texts[i];
            console.MarkupLineInterpolated($"text {i}: [[{first}, …]] norm {norm:0.0000}  \"{clip}\"");
        }
        console.MarkupLineInterpolated($"embeddings: {o.OutputPath} (float32 [[{embeddings.shape[0]}, {h}]])");
        if (o.HiddenStatesPath is not null)
            console.MarkupLineInterpolated($"hidden states: {o.HiddenStatesPath} (float32 [[{string.Join(", ", hidden.shape)}]])");
    }
}
