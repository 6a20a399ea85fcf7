namespace Superpipeline.Contracts;

/// <summary>What a device is: the simulated accelerator (host memory, exact byte accounting, optional emulated link)
/// or a CUDA GPU. A request for "auto" is not a kind: it is a <see cref="DeviceSpec"/> whose kind is null, resolved
/// by the engine's DeviceFactory when the device is made.</summary>
public enum DeviceKind
{
    Sim,
    Cuda,
}
