using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Devices;

/// <summary>A CUDA device, used when TorchSharp reports CUDA (the build with -p:TorchBackend=cuda).
/// TorchSharp has no stream API and no memory statistics, so bytes are counted by <see cref="DeviceMemory"/>
/// exactly as on the simulated device. Not runnable on machines without the CUDA package.</summary>
public sealed class CudaDevice : IDevice
{
    readonly DeviceThread _transfer;
    readonly DeviceThread _compute;
    readonly Device _device;

    public CudaDevice(int ordinal, long capacityBytes, double? linkGBps = null)
    {
        if (!cuda.is_available()) throw new InvalidOperationException("CUDA is not available: build with -p:TorchBackend=cuda on a machine with an NVIDIA GPU");
        if (ordinal < 0 || ordinal >= cuda.device_count()) throw new ArgumentOutOfRangeException(nameof(ordinal), ordinal, $"CUDA has {cuda.device_count()} devices");
        _device = new Device(DeviceType.CUDA, ordinal);
        Name = $"cuda:{ordinal}";
        Memory = new DeviceMemory(Name, capacityBytes);
        LinkBytesPerSecond = linkGBps * 1e9;
        _transfer = new DeviceThread($"{Name}-transfer");
        _compute = new DeviceThread($"{Name}-compute");
    }

    public string Name { get; }
    public string Kind => "cuda";
    public DeviceMemory Memory { get; }
    public double? LinkBytesPerSecond { get; }
    public bool WantsPinnedHost => true;

    public Task<T> OnTransferThread<T>(Func<T> work) => _transfer.Run(work);
    public Task<T> OnComputeThread<T>(Func<T> work) => _compute.Run(work);

    public DeviceTensors Upload(IReadOnlyList<(string Name, Tensor Host)> tensors, string what)
    {
        var reservation = Memory.Reserve(tensors.Sum(t => TensorBytes.Of(t.Host)), what);
        var placed = new Dictionary<string, Tensor>(tensors.Count);
        try
        {
            foreach (var (name, host) in tensors)
            {
                using var detached = host.detach();
                placed[name] = detached.to(_device);
            }
            cuda.synchronize(_device);
            return new DeviceTensors(placed, reservation);
        }
        catch
        {
            foreach (var t in placed.Values) t.Dispose();
            reservation.Dispose();
            throw;
        }
    }

    public DeviceMemory.Reservation ReserveFor(long[] shape, ScalarType dtype, string what) =>
        Memory.Reserve(TensorBytes.Of(shape, dtype), what);

    public Tensor ToHost(Tensor deviceTensor) => deviceTensor.cpu();

    public void Dispose()
    {
        _transfer.Dispose();
        _compute.Dispose();
    }
}
