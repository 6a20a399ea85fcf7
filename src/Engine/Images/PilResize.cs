namespace Superpipeline.Engine.Images;

/// <summary>PIL's <c>Image.resize</c> for 8-bit RGB (libImaging/Resample.c), which Hugging Face's image processors call: a
/// separable convolution whose kernel widens with the downscale factor (antialiasing), the horizontal pass first, each pass
/// rounded to 8 bits in PIL's fixed point, so that the pixels equal PIL's.</summary>
static class PilResize
{
    const int PrecisionBits = 32 - 8 - 2;

    /// <summary>Resizes interleaved RGB bytes (<paramref name="height"/> × <paramref name="width"/> × 3).</summary>
    public static byte[] Resize(byte[] rgb, int height, int width, ImageSize to, ResampleFilter filter)
    {
        if (to.Height == height && to.Width == width) return rgb;
        var image = rgb;
        int w = width;
        if (to.Width != width)
        {
            image = Horizontal(image, height, width, to.Width, filter);
            w = to.Width;
        }
        if (to.Height != height) image = Vertical(image, height, w, to.Height, filter);
        return image;
    }

    static double Filter(ResampleFilter f, double x)
    {
        if (x < 0) x = -x;
        if (f == ResampleFilter.Bilinear) return x < 1 ? 1 - x : 0;
        const double a = -0.5;
        if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
        if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
        return 0;
    }

    /// <summary>precompute_coeffs and normalize_coeffs_8bpc: for each output index, the first input index and the fixed-point weights.</summary>
    static (int[] Start, int[][] Weights) Coefficients(int inSize, int outSize, ResampleFilter f)
    {
        double support0 = f == ResampleFilter.Bilinear ? 1 : 2;
        double scale = (double)inSize / outSize;
        double filterScale = Math.Max(scale, 1);
        double support = support0 * filterScale;
        var start = new int[outSize];
        var weights = new int[outSize][];
        for (int xx = 0; xx < outSize; xx++)
        {
            double center = (xx + 0.5) * scale, ss = 1 / filterScale;
            int xmin = (int)(center - support + 0.5);
            if (xmin < 0) xmin = 0;
            int xmax = (int)(center + support + 0.5);
            if (xmax > inSize) xmax = inSize;
            xmax -= xmin;
            var k = new double[xmax];
            double ww = 0;
            for (int x = 0; x < xmax; x++)
            {
                k[x] = Filter(f, (x + xmin - center + 0.5) * ss);
                ww += k[x];
            }
            var fixedK = new int[xmax];
            for (int x = 0; x < xmax; x++)
            {
                double v = ww != 0 ? k[x] / ww : k[x];
                fixedK[x] = (int)(v < 0 ? v * (1 << PrecisionBits) - 0.5 : v * (1 << PrecisionBits) + 0.5);
            }
            start[xx] = xmin;
            weights[xx] = fixedK;
        }
        return (start, weights);
    }

    static byte Clip8(int v)
    {
        int s = v >> PrecisionBits;
        return s < 0 ? (byte)0 : s > 255 ? (byte)255 : (byte)s;
    }

    static byte[] Horizontal(byte[] src, int height, int width, int outWidth, ResampleFilter f)
    {
        var (start, weights) = Coefficients(width, outWidth, f);
        var dst = new byte[height * outWidth * 3];
        for (int y = 0; y < height; y++)
            for (int xx = 0; xx < outWidth; xx++)
            {
                var k = weights[xx];
                for (int c = 0; c < 3; c++)
                {
                    int ss = 1 << (PrecisionBits - 1);
                    for (int x = 0; x < k.Length; x++) ss += src[(y * width + start[xx] + x) * 3 + c] * k[x];
                    dst[(y * outWidth + xx) * 3 + c] = Clip8(ss);
                }
            }
        return dst;
    }

    static byte[] Vertical(byte[] src, int height, int width, int outHeight, ResampleFilter f)
    {
        var (start, weights) = Coefficients(height, outHeight, f);
        var dst = new byte[outHeight * width * 3];
        for (int yy = 0; yy < outHeight; yy++)
        {
            var k = weights[yy];
            for (int x = 0; x < width; x++)
                for (int c = 0; c < 3; c++)
                {
                    int ss = 1 << (PrecisionBits - 1);
                    for (int y = 0; y < k.Length; y++) ss += src[((start[yy] + y) * width + x) * 3 + c] * k[y];
                    dst[(yy * width + x) * 3 + c] = Clip8(ss);
                }
        }
        return dst;
    }
}
