using System.CommandLine;
using Superpipeline.Contracts;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Policy;

namespace Superpipeline.Coordinator.Commands;

/// <summary>The window, swap, pinned-layer and device flags a command that streams layers takes (run's, in one place so every
/// command that streams reuses them instead of copying them: run, generate, embed, similarity, train): --window, --swap,
/// --resident-layers, --device-memory, --link-gbps, --device, and --host-memory where the command can read weights from disk.</summary>
/// <param name="windowDescription">--window's help: what the command accepts (run's planner takes 'auto'; train's does not).</param>
/// <param name="hostMemory">Whether the command takes --host-memory (the disk tier; training keeps its weights in host memory).</param>
public sealed class WindowOptions(string windowDescription = "k: layers resident on the device at once (a number, or 'all' for no offload)",
    bool hostMemory = true)
{
    /// <summary>--window's help for a command whose planner takes 'auto'.</summary>
    public const string WithAuto = "k: layers resident on the device at once (a number, 'all' for no offload, or 'auto' to let the planner "
        + "choose k and k' for the device memory)";

    public Option<string> Window { get; } = new("--window") { Description = windowDescription, DefaultValueFactory = _ => "3" };
    public Option<string> Swap { get; } = new("--swap")
    {
        Description = "k': layers evicted and refilled together (1 ≤ k' ≤ k); default 1, or all layers with --window all",
    };
    public Option<string> Resident { get; } = Flags.ResidentLayersOption();
    public Option<string> Memory { get; } = new("--device-memory")
    {
        Description = "device capacity: bytes or with a KiB/MiB/GiB suffix", DefaultValueFactory = _ => Flags.DefaultDeviceMemory,
    };
    public Option<string> Link { get; } = new("--link-gbps")
    {
        Description = "emulated host→device link bandwidth in GB/s (default: unlimited, a plain copy)",
    };
    public Option<string> Device { get; } = new("--device")
    {
        Description = "sim, cuda or auto (CUDA when TorchSharp sees it)", DefaultValueFactory = _ => "sim",
    };

    public Option<string> HostMemory { get; } = new("--host-memory")
    {
        Description = "host memory for a checkpoint's weights (bytes or KiB/MiB/GiB): when they exceed it, layers stay in the safetensors " +
            "files and are read when the window admits them (default: all weights held in host memory)",
    };

    public void AddTo(Command command)
    {
        foreach (var o in new Option[] { Window, Swap, Resident, Memory, Link, Device }) command.Options.Add(o);
        if (hostMemory) command.Options.Add(HostMemory);
    }

    /// <summary>--host-memory in bytes; null when it is not given (or the command does not take it).</summary>
    public long? HostMemoryBytes(ParseResult r) =>
        hostMemory && r.GetValue(HostMemory) is { } h ? ByteSize.Parse(h, FieldException.HostMemory) : null;

    public PolicySpec Policy(ParseResult r) => Flags.ParsePolicy(r.GetValue(Window)!, r.GetValue(Swap), r.GetValue(Resident));

    public DeviceSpec DeviceSpec(ParseResult r) => new(DeviceSpecs.ParseKind(r.GetValue(Device)!),
        ByteSize.Parse(r.GetValue(Memory)!, FieldException.DeviceMemory), Flags.ParseGbps(r.GetValue(Link)));
}
