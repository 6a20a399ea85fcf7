using SkiaSharp;

namespace Superpipeline.Tests;

/// <summary>Pictures the tests draw themselves: each pixel from a function of (row, column), so a spec can say what every pixel
/// is and work out its preprocessed value by hand.</summary>
static class TestImages
{
    /// <summary>Writes an opaque RGBA picture of <paramref name="height"/> × <paramref name="width"/>, pixel (y, x) being
    /// <paramref name="colour"/>(y, x), encoded as <paramref name="format"/> at <paramref name="quality"/>; returns <paramref name="path"/>.</summary>
    public static string Write(string path, int height, int width, Func<int, int, SKColor> colour,
        SKEncodedImageFormat format = SKEncodedImageFormat.Png, int quality = 100)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Opaque));
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
                bitmap.SetPixel(x, y, colour(y, x));
        using var data = bitmap.Encode(format, quality);
        File.WriteAllBytes(path, data.ToArray());
        return path;
    }
}
