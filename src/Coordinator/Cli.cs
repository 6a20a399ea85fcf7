using System.CommandLine;
using Superpipeline.Coordinator.Commands;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Onnx;
using Superpipeline.Engine.Policy;

namespace Superpipeline.Coordinator;

/// <summary>The <c>superpipeline</c> command line: one command class per verb under <c>Commands/</c>. Errors are one line
/// on stderr and a non-zero exit; a refusal that names a domain field (<see cref="FieldException"/>) is printed with
/// the flag that carries the field in the command that was run.</summary>
public static class Cli
{
    public static async Task<int> MainAsync(string[] args)
    {
        var root = new RootCommand("Superpipeline: run neural models larger than accelerator memory by streaming layers onto the device.");
        root.Subcommands.Add(RunCommand.Build());
        root.Subcommands.Add(BenchCommand.Build());
        root.Subcommands.Add(PlanCommand.Build());
        root.Subcommands.Add(SimulateCommand.Build());
        root.Subcommands.Add(HostCommand.Build());
        root.Subcommands.Add(SubmitCommand.Build());
        root.Subcommands.Add(ExportDemoCommand.Build());
        root.Subcommands.Add(GenerateCommand.Build());
        root.Subcommands.Add(EmbedCommand.Build());
        root.Subcommands.Add(WeightsCommand.Build());
        root.Subcommands.Add(SimilarityCommand.Build());
        root.Subcommands.Add(TrainCommand.Build());
        var parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            Console.Error.WriteLine($"superpipeline: {parsed.Errors[0].Message}");
            return 2;
        }
        try
        {
            return await parsed.InvokeAsync(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
        }
        catch (FieldException e)
        {
            return Refuse(Flags.Describe(e, parsed.CommandResult.Command));
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("superpipeline: cancelled");
            return 130;
        }
        catch (Exception e) when (e is ArgumentException or DeviceOutOfMemoryException or IOException or UnauthorizedAccessException
            or InvalidOperationException or TimeoutException
            or CheckpointConfigException or SafetensorsException or OnnxException)
        {
            return Refuse(e.Message);
        }
    }

    static int Refuse(string message)
    {
        Console.Error.WriteLine($"superpipeline: {message.Split('\n')[0]}");
        return 1;
    }
}
