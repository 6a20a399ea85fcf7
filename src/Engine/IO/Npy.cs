using System.Text;
using Superpipeline.Contracts;

namespace Superpipeline.Engine.IO;

/// <summary>NumPy .npy format, version 1.0: magic, header dict, raw little-endian C-order data.</summary>
public static class Npy
{
    static readonly byte[] Magic = [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y', 1, 0];

    public static string Descr(string dtype) => dtype switch
    {
        "Float32" => "<f4", "Float64" => "<f8", "Float16" => "<f2", "Int64" => "<i8", "Int32" => "<i4",
        "Int16" => "<i2", "Int8" => "|i1", "Byte" => "|u1", "Bool" => "|b1",
        _ => throw new NotSupportedException($"dtype {dtype} has no .npy equivalent"),
    };

    public static void Write(Stream stream, TensorPayload tensor)
    {
        var shape = tensor.Shape.Length switch
        {
            0 => "()",
            1 => $"({tensor.Shape[0]},)",
            _ => $"({string.Join(", ", tensor.Shape)})",
        };
        var header = $"{{'descr': '{Descr(tensor.DType)}', 'fortran_order': False, 'shape': {shape}, }}";
        int unpadded = Magic.Length + 2 + header.Length + 1;
        header += new string(' ', (64 - unpadded % 64) % 64) + "\n";
        stream.Write(Magic);
        stream.Write(BitConverter.GetBytes((ushort)header.Length));
        stream.Write(Encoding.ASCII.GetBytes(header));
        stream.Write(tensor.Bytes.AsSpan());
    }

    public static void Write(string path, TensorPayload tensor)
    {
        using var file = File.Create(path);
        Write(file, tensor);
    }

    /// <summary>Reads back the header (descr, shape) and data; enough to check files this project writes.</summary>
    public static (string Descr, long[] Shape, byte[] Data) Read(string path)
    {
        var bytes = File.ReadAllBytes(path);
        if (!bytes.AsSpan(0, Magic.Length).SequenceEqual(Magic)) throw new InvalidDataException($"{path} is not a version 1.0 .npy file");
        int headerLength = BitConverter.ToUInt16(bytes, 8);
        var header = Encoding.ASCII.GetString(bytes, 10, headerLength);
        var descr = header.Split("'descr': '")[1].Split('\'')[0];
        var shapeText = header.Split("'shape': (")[1].Split(')')[0];
        var shape = shapeText.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(long.Parse).ToArray();
        return (descr, shape, bytes[(10 + headerLength)..]);
    }
}
