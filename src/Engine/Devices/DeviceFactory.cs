using Superpipeline.Contracts;
using TorchSharp;

namespace Superpipeline.Engine.Devices;

public static class DeviceFactory
{
    /// <summary>Makes device number <paramref name="index"/> of kind "sim", "cuda" or "auto" (CUDA when TorchSharp
    /// sees it, otherwise the simulated accelerator).</summary>
    public static IDevice Create(DeviceSpec spec, int index = 0)
    {
        var kind = spec.Kind == "auto" ? (torch.cuda.is_available() ? "cuda" : "sim") : spec.Kind;
        return kind switch
        {
            "sim" => new SimulatedDevice($"sim:{index}", spec.CapacityBytes, spec.LinkGBps),
            "cuda" => new CudaDevice(index, spec.CapacityBytes, spec.LinkGBps),
            _ => throw new ArgumentException($"unknown device kind '{spec.Kind}' (expected sim, cuda or auto)"),
        };
    }
}
