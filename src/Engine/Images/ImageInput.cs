using SkiaSharp;
using Superpipeline.Contracts;
using Superpipeline.Engine.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Images;

/// <summary>PNG and JPEG files (decoded with SkiaSharp) as the float32 pixels [N, 3, H, W] (RGB, channel-first) a vision model
/// takes, through an <see cref="ImagePreprocess"/>; and the temporary .npy that carries them as <c>ModelSpec.Input</c>, so that
/// the spec crossing the wire keeps a path (every member of a cluster reads the same path), not the pixels.</summary>
public static class ImageInput
{
    const string TemporaryPrefix = "superpipeline-pixels-";

    /// <summary>The pixels of <paramref name="paths"/>, one row each, as a float32 CPU tensor [N, 3, H, W] (the caller disposes
    /// it). Refused with a one-line <see cref="ArgumentException"/> naming the file: a missing, empty or undecodable file, and
    /// images whose preprocessed sizes differ (a pipeline without resize or crop).</summary>
    public static Tensor Load(IReadOnlyList<string> paths, ImagePreprocess p)
    {
        var (pixels, size) = Pixels(paths, p);
        return torch.tensor(pixels, [paths.Count, 3, size.Height, size.Width], ScalarType.Float32);
    }

    /// <summary>The pixels of <see cref="Load"/> as a payload (float32 [N, 3, H, W]), for a .npy or the wire.</summary>
    public static TensorPayload LoadPayload(IReadOnlyList<string> paths, ImagePreprocess p)
    {
        var (pixels, size) = Pixels(paths, p);
        var bytes = new byte[pixels.Length * sizeof(float)];
        Buffer.BlockCopy(pixels, 0, bytes, 0, bytes.Length);
        return new TensorPayload("Float32", [paths.Count, 3, size.Height, size.Width], [.. bytes]);
    }

    /// <summary>Writes the pixels of <paramref name="paths"/> to <paramref name="npyPath"/> (float32 [N, 3, H, W]).</summary>
    public static void WriteNpy(string npyPath, IReadOnlyList<string> paths, ImagePreprocess p) => Npy.Write(npyPath, LoadPayload(paths, p));

    /// <summary>Writes the pixels of <paramref name="paths"/> to a new .npy file in the temporary directory and returns its path:
    /// the input of a job (<c>ModelSpec.Input</c>). Delete it with <see cref="DeleteTemporary"/> when the job is done.</summary>
    public static string WriteTemporary(IReadOnlyList<string> paths, ImagePreprocess p)
        => TemporaryNpy.Write(TemporaryPrefix, LoadPayload(paths, p));

    /// <summary>Deletes <paramref name="path"/> when it is a file <see cref="WriteTemporary"/> wrote; anything else is left alone.</summary>
    public static void DeleteTemporary(string? path) => TemporaryNpy.Delete(TemporaryPrefix, path);

    static (float[] Pixels, ImageSize Size) Pixels(IReadOnlyList<string> paths, ImagePreprocess p)
    {
        if (paths.Count == 0) throw new ArgumentException("no image given");
        float[]? all = null;
        ImageSize? size = null;
        for (int i = 0; i < paths.Count; i++)
        {
            var (rgb, decoded) = Decode(paths[i]);
            var (pixels, outSize) = Preprocess(rgb, decoded, p);
            if (size is null)
            {
                size = outSize;
                all = new float[paths.Count * pixels.Length];
            }
            else if (size != outSize)
                throw new ArgumentException($"{paths[i]}: preprocessed to {outSize}, unlike {paths[0]} ({size}); one batch needs one size");
            pixels.CopyTo(all!, i * pixels.Length);
        }
        return (all!, size!);
    }

    /// <summary>The RGB bytes (interleaved, row-major) of a PNG or JPEG; alpha is dropped as PIL's convert("RGB") drops it.</summary>
    internal static (byte[] Rgb, ImageSize Size) Decode(string path)
    {
        if (!File.Exists(path)) throw new ArgumentException($"{path}: image not found");
        var data = File.ReadAllBytes(path);
        if (data.Length == 0) throw new ArgumentException($"{path}: image file is empty");
        using var skData = SKData.CreateCopy(data);
        using var codec = SKCodec.Create(skData);
        if (codec is null) throw new ArgumentException($"{path}: not an image SkiaSharp can decode (PNG or JPEG)");
        var info = new SKImageInfo(codec.Info.Width, codec.Info.Height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        if (info.Width < 1 || info.Height < 1) throw new ArgumentException($"{path}: image has no pixels ({info.Width}×{info.Height})");
        var rgba = new byte[info.BytesSize];
        SKCodecResult result;
        unsafe
        {
            fixed (byte* ptr = rgba) result = codec.GetPixels(info, (IntPtr)ptr);
        }
        if (result != SKCodecResult.Success)
            throw new ArgumentException($"{path}: image does not decode ({(result == SKCodecResult.IncompleteInput ? "truncated" : result.ToString())})");
        var rgb = new byte[info.Width * info.Height * 3];
        for (int i = 0, n = info.Width * info.Height; i < n; i++)
        {
            rgb[i * 3] = rgba[i * 4];
            rgb[i * 3 + 1] = rgba[i * 4 + 1];
            rgb[i * 3 + 2] = rgba[i * 4 + 2];
        }
        return (rgb, new ImageSize(info.Height, info.Width));
    }

    /// <summary>Resize, center crop, rescale, normalize, as Hugging Face does them: the first two on 8-bit pixels (PIL), the rescale
    /// in float64 rounded to float32, the normalize in float32. Returns channel-first floats [3, H, W].</summary>
    internal static (float[] Pixels, ImageSize Size) Preprocess(byte[] rgb, ImageSize size, ImagePreprocess p)
    {
        var resized = p.ResizedSize(size);
        rgb = PilResize.Resize(rgb, size.Height, size.Width, resized, p.Resample);
        size = resized;
        if (p.CenterCrop is { } crop)
        {
            rgb = CenterCrop(rgb, size, crop);
            size = crop;
        }
        int plane = size.Height * size.Width;
        var output = new float[3 * plane];
        for (int c = 0; c < 3; c++)
        {
            float mean = p.Mean.Length > 0 ? p.Mean[c] : 0, std = p.Mean.Length > 0 ? p.Std[c] : 1;
            for (int i = 0; i < plane; i++)
            {
                byte v = rgb[i * 3 + c];
                float x = p.RescaleFactor is { } f ? (float)(v * f) : v;
                output[c * plane + i] = p.Mean.Length > 0 ? (x - mean) / std : x;
            }
        }
        return (output, size);
    }

    /// <summary>transformers' center_crop: top = (h - ch) / 2, left = (w - cw) / 2; where the image is smaller than the crop, it
    /// is padded with zeros around the centre.</summary>
    static byte[] CenterCrop(byte[] rgb, ImageSize size, ImageSize crop)
    {
        if (crop == size) return rgb;
        var dst = new byte[crop.Height * crop.Width * 3];
        int top = (size.Height - crop.Height) / 2, left = (size.Width - crop.Width) / 2;
        if (size.Height < crop.Height) top = -((crop.Height - size.Height) / 2);
        if (size.Width < crop.Width) left = -((crop.Width - size.Width) / 2);
        for (int y = 0; y < crop.Height; y++)
        {
            int sy = y + top;
            if (sy < 0 || sy >= size.Height) continue;
            for (int x = 0; x < crop.Width; x++)
            {
                int sx = x + left;
                if (sx < 0 || sx >= size.Width) continue;
                for (int c = 0; c < 3; c++) dst[(y * crop.Width + x) * 3 + c] = rgb[(sy * size.Width + sx) * 3 + c];
            }
        }
        return dst;
    }
}
