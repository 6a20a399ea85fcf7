using System.CommandLine;
using Superpipeline.Contracts;
using Superpipeline.Engine.Devices;
using Superpipeline.Engine.Policy;

namespace Superpipeline.Coordinator.Commands;

/// <summary>The window, swap, pinned-layer and device flags a command that streams layers takes (run's, in one place so a new
/// command reuses them instead of copying them): --window, --swap, --resident-layers, --device-memory, --link-gbps, --device.</summary>
/// <param name="windowDescription">--window's help: what the command accepts (run's planner takes 'auto'; train's does not).</param>
public sealed class WindowOptions(string windowDescription = "k: layers resident on the device at once (a number, or 'all' for no offload)")
{
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

    public void AddTo(Command command)
    {
        foreach (var o in new Option[] { Window, Swap, Resident, Memory, Link, Device }) command.Options.Add(o);
    }

    public PolicySpec Policy(ParseResult r) => Flags.ParsePolicy(r.GetValue(Window)!, r.GetValue(Swap), r.GetValue(Resident));

    public DeviceSpec DeviceSpec(ParseResult r) => new(DeviceSpecs.ParseKind(r.GetValue(Device)!),
        ByteSize.Parse(r.GetValue(Memory)!, FieldException.DeviceMemory), Flags.ParseGbps(r.GetValue(Link)));
}
