using System.Security.Cryptography;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine;

/// <summary>Sizes and raw bytes of tensors.</summary>
public static class TensorBytes
{
    public static long ElementSize(ScalarType dtype) => dtype switch
    {
        ScalarType.Byte or ScalarType.Int8 or ScalarType.Bool => 1,
        ScalarType.Int16 or ScalarType.Float16 or ScalarType.BFloat16 => 2,
        ScalarType.Int32 or ScalarType.Float32 => 4,
        ScalarType.Int64 or ScalarType.Float64 or ScalarType.ComplexFloat32 => 8,
        ScalarType.ComplexFloat64 => 16,
        _ => throw new NotSupportedException($"dtype {dtype} is not supported"),
    };

    public static long Count(IEnumerable<long> shape) => shape.Aggregate(1L, (a, b) => a * b);

    public static long Of(long[] shape, ScalarType dtype) => Count(shape) * ElementSize(dtype);

    public static long Of(Tensor t) => t.numel() * ElementSize(t.dtype);

    /// <summary>The tensor's raw bytes, row-major, as stored on the host.</summary>
    public static byte[] Raw(Tensor t)
    {
        using var host = t.device_type == DeviceType.CPU ? t.contiguous() : t.cpu().contiguous();
        return host.bytes.ToArray();
    }

    public static string Sha256(Tensor t) => Convert.ToHexStringLower(SHA256.HashData(Raw(t)));
}
