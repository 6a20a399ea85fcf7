using Superpipeline.Contracts;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Devices;

/// <summary>A CUDA device, used when TorchSharp reports CUDA (the build with -p:TorchBackend=cuda).
/// TorchSharp has no stream API and no memory statistics, so bytes are counted by <see cref="DeviceMemory"/>
/// exactly as on the simulated device. Not runnable on machines without the CUDA package.</summary>
public sealed class CudaDevice : Accelerator
{
    readonly Device _device;

    public CudaDevice(int ordinal, long capacityBytes, double? linkGBps = null) : base(CheckedName(ordinal), capacityBytes, linkGBps) =>
        _device = new Device(DeviceType.CUDA, ordinal);

    static string CheckedName(int ordinal)
    {
        if (!cuda.is_available()) throw new InvalidOperationException("CUDA is not available: build with -p:TorchBackend=cuda on a machine with an NVIDIA GPU");
        if (ordinal < 0 || ordinal >= cuda.device_count())
            throw new ArgumentOutOfRangeException(nameof(ordinal), ordinal, $"CUDA has {cuda.device_count()} devices");
        return $"cuda:{ordinal}";
    }

    public override DeviceKind Kind => DeviceKind.Cuda;
    public override bool WantsPinnedHost => true;

    protected override Tensor Place(Tensor host) => host.to(_device);

    protected override void Copied(long start, long bytes) => cuda.synchronize(_device);

    public override Tensor ToHost(Tensor deviceTensor) => deviceTensor.cpu();
}
