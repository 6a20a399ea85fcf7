using Superpipeline.Contracts;
using TorchSharp;

namespace Superpipeline.Engine.Devices;

/// <summary>Makes the <see cref="Accelerator"/> a <see cref="DeviceSpec"/> asks for; the one place "auto" is resolved.</summary>
public static class DeviceFactory
{
    /// <summary>The kind "auto" (a null kind) stands for here: CUDA when TorchSharp sees it, otherwise the simulated accelerator.</summary>
    public static DeviceKind Resolve(DeviceKind? kind) => kind ?? (torch.cuda.is_available() ? DeviceKind.Cuda : DeviceKind.Sim);

    /// <summary>Makes device number <paramref name="index"/> of the spec's kind (<see cref="Resolve"/>d when auto).</summary>
    public static Accelerator Create(DeviceSpec spec, int index = 0) => Resolve(spec.Kind) switch
    {
        DeviceKind.Sim => new SimulatedDevice($"sim:{index}", spec.CapacityBytes, spec.LinkGBps),
        DeviceKind.Cuda => new CudaDevice(index, spec.CapacityBytes, spec.LinkGBps),
        var other => throw new ArgumentOutOfRangeException(nameof(spec), other, "unknown device kind"),
    };
}
