using SkiaSharp;
using Superpipeline.Engine.Images;
using Superpipeline.Engine.IO;

namespace Superpipeline.Tests;

/// <summary>Images as input (issue 9, points 3 and 6): PNG and JPEG written here with SkiaSharp, decoded and preprocessed as
/// Hugging Face's image processors do it (PIL resize, center crop, 1/255, mean and std), the preprocessor_config.json keys, and
/// one-line refusals naming the file for images that are missing, empty or do not decode.</summary>
public sealed class ImageInputSpec : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("image-input-spec-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    static readonly System.Collections.Immutable.ImmutableArray<float> ImageNetMean = [0.485f, 0.456f, 0.406f], ImageNetStd = [0.229f, 0.224f, 0.225f];

    string Write(string name, int height, int width, Func<int, int, SKColor> colour, SKEncodedImageFormat format = SKEncodedImageFormat.Png,
        int quality = 100) => TestImages.Write(Path.Combine(dir, name), height, width, colour, format, quality);

    /// <summary>What (v / 255 - mean) / std is in float32, v / 255 taken in float64 as numpy's rescale takes it.</summary>
    static float Normalized(int v, float mean, float std) => ((float)(v * (1 / 255.0)) - mean) / std;

    static float[] Values(TorchSharp.torch.Tensor t) => t.data<float>().ToArray();

    [Fact]
    public void A_solid_png_normalizes_exactly_per_channel_in_rgb_order()
    {
        string png = Write("solid.png", 6, 8, (_, _) => new SKColor(200, 100, 50));
        var p = new ImagePreprocess(null, null, ResampleFilter.Bilinear, null, 1 / 255.0, ImageNetMean, ImageNetStd);
        using var t = ImageInput.Load([png], p);
        Assert.Equal([1L, 3, 6, 8], t.shape);
        var v = Values(t);
        int[] rgb = [200, 100, 50];
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < 48; i++)
                Assert.Equal(Normalized(rgb[c], ImageNetMean[c], ImageNetStd[c]), v[c * 48 + i]);
    }

    [Fact]
    public void A_solid_colour_stays_exact_through_any_resize_and_crop()
    {
        // PIL's weights sum to one: a solid image resized (up or down, bilinear or bicubic) and cropped keeps its colour.
        string png = Write("solid.png", 30, 40, (_, _) => new SKColor(17, 128, 250));
        foreach (var filter in new[] { ResampleFilter.Bilinear, ResampleFilter.Bicubic })
            foreach (var p in new[]
            {
                new ImagePreprocess(null, new ImageSize(64, 48), filter, null, 1 / 255.0, ImageNetMean, ImageNetStd),
                new ImagePreprocess(12, null, filter, new ImageSize(10, 10), 1 / 255.0, ImageNetMean, ImageNetStd),
            })
            {
                using var t = ImageInput.Load([png], p);
                var size = p.OutputSize(new ImageSize(30, 40));
                Assert.Equal([1L, 3, size.Height, size.Width], t.shape);
                var v = Values(t);
                int plane = size.Height * size.Width;
                int[] rgb = [17, 128, 250];
                for (int c = 0; c < 3; c++)
                    Assert.All(v[(c * plane)..((c + 1) * plane)], x => Assert.Equal(Normalized(rgb[c], ImageNetMean[c], ImageNetStd[c]), x));
            }
    }

    [Fact]
    public void A_two_to_one_bilinear_downscale_averages_four_pixels_as_pil_does()
    {
        // Halving with PIL's bilinear filter widens its support to 2 input pixels: output x takes inputs 2x-1 .. 2x+2 with weights
        // 1/8, 3/8, 3/8, 1/8. On a gradient v = 10·x that is 10·(2x + 0.5); at x = 3 it is 65. Rows are constant, so the vertical
        // halving (shortest edge 8 → 4, width 16 → 8) leaves them as they are.
        string png = Write("gradient.png", 8, 16, (_, x) => new SKColor((byte)(10 * x), 0, 0));
        var p = new ImagePreprocess(4, null, ResampleFilter.Bilinear, null, null, [], []);
        using var t = ImageInput.Load([png], p);
        Assert.Equal([1L, 3, 4, 8], t.shape);
        var v = Values(t);
        for (int y = 0; y < 4; y++)
        {
            Assert.Equal(65f, v[y * 8 + 3]);
            Assert.Equal(105f, v[y * 8 + 5]);
        }
    }

    [Fact]
    public void ImageNet_resizes_the_shortest_edge_to_256_and_crops_the_centre_224()
    {
        var p = ImagePreprocess.ImageNet(224);
        Assert.Equal(new ImageSize(256, 341), p.ResizedSize(new ImageSize(300, 400))); // int(256 · 400 / 300)
        Assert.Equal(new ImageSize(341, 256), p.ResizedSize(new ImageSize(400, 300)));
        string png = Write("wide.png", 30, 40, (y, x) => new SKColor((byte)x, (byte)y, 9));
        using var t = ImageInput.Load([png, png], p);
        Assert.Equal([2L, 3, 224, 224], t.shape);
    }

    [Fact]
    public void The_center_crop_takes_the_middle_as_transformers_does()
    {
        // 5 × 7 to 3 × 3: top = (5 - 3) / 2 = 1, left = (7 - 3) / 2 = 2; red carries the column, green the row.
        string png = Write("grid.png", 5, 7, (y, x) => new SKColor((byte)x, (byte)y, 0));
        var p = new ImagePreprocess(null, null, ResampleFilter.Bilinear, new ImageSize(3, 3), null, [], []);
        using var t = ImageInput.Load([png], p);
        var v = Values(t);
        Assert.Equal(new float[] { 2, 3, 4, 2, 3, 4, 2, 3, 4 }, v[..9]);
        Assert.Equal(new float[] { 1, 1, 1, 2, 2, 2, 3, 3, 3 }, v[9..18]);
    }

    [Fact]
    public void A_jpeg_decodes_within_its_loss()
    {
        string jpg = Write("solid.jpg", 16, 16, (_, _) => new SKColor(180, 60, 120), SKEncodedImageFormat.Jpeg, 95);
        var p = ImagePreprocess.Vit(16);
        using var t = ImageInput.Load([jpg], p);
        var v = Values(t);
        int[] rgb = [180, 60, 120];
        for (int c = 0; c < 3; c++)
            Assert.All(v[(c * 256)..((c + 1) * 256)], x => Assert.InRange(x, Normalized(rgb[c] - 4, 0.5f, 0.5f), Normalized(rgb[c] + 4, 0.5f, 0.5f)));
    }

    [Fact]
    public void The_pixels_travel_as_a_float32_npy_of_n_3_h_w()
    {
        string a = Write("a.png", 4, 4, (_, _) => new SKColor(255, 0, 0)), b = Write("b.png", 4, 4, (_, _) => new SKColor(0, 0, 255));
        string npy = ImageInput.WriteTemporary([a, b], ImagePreprocess.Vit(4));
        try
        {
            var (descr, shape, data) = Npy.Read(npy);
            Assert.Equal("<f4", descr);
            Assert.Equal([2L, 3, 4, 4], shape);
            var f = new float[data.Length / 4];
            Buffer.BlockCopy(data, 0, f, 0, data.Length);
            Assert.Equal(1f, f[0]);            // a, red, (255/255 - 0.5) / 0.5
            Assert.Equal(-1f, f[2 * 16]);      // a, blue
            Assert.Equal(1f, f[48 + 2 * 16]);  // b, blue
        }
        finally
        {
            ImageInput.DeleteTemporary(npy);
        }
        Assert.False(File.Exists(npy));
    }

    [Fact]
    public void A_missing_empty_undecodable_or_truncated_image_is_one_line_naming_the_file()
    {
        string missing = Path.Combine(dir, "missing.png");
        string empty = Path.Combine(dir, "empty.png");
        File.WriteAllBytes(empty, []);
        string text = Path.Combine(dir, "text.png");
        File.WriteAllText(text, "not an image at all");
        string good = Write("good.png", 32, 32, (y, x) => new SKColor((byte)(x * 7), (byte)(y * 5), (byte)(x ^ y)));
        string truncated = Path.Combine(dir, "truncated.png");
        var bytes = File.ReadAllBytes(good);
        File.WriteAllBytes(truncated, bytes[..(bytes.Length / 2)]);
        foreach (var path in new[] { missing, empty, text, truncated })
        {
            var e = Assert.Throws<ArgumentException>(() => ImageInput.Load([good, path], ImagePreprocess.Vit(8)).Dispose());
            Assert.StartsWith(path, e.Message);
            Assert.DoesNotContain('\n', e.Message);
        }
    }

    [Fact]
    public void Images_of_different_sizes_without_a_resize_are_refused()
    {
        string a = Write("a.png", 4, 4, (_, _) => SKColors.Red), b = Write("b.png", 4, 5, (_, _) => SKColors.Red);
        var e = Assert.Throws<ArgumentException>(() => ImageInput.Load([a, b], new ImagePreprocess(null, null, ResampleFilter.Bilinear, null, null, [], [])));
        Assert.StartsWith(b, e.Message);
    }

    [Fact]
    public void A_clip_preprocessor_config_reads_shortest_edge_bicubic_crop_and_its_mean()
    {
        string file = Path.Combine(dir, "preprocessor_config.json");
        File.WriteAllText(file, """
            {"crop_size": {"height": 224, "width": 224}, "do_center_crop": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
             "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_processor_type": "CLIPImageProcessor",
             "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "rescale_factor": 0.00392156862745098,
             "size": {"shortest_edge": 224}}
            """);
        var p = ImagePreprocess.FromFile(file);
        Assert.Equal(224, p.ShortestEdge);
        Assert.Null(p.Resize);
        Assert.Equal(ResampleFilter.Bicubic, p.Resample);
        Assert.Equal(new ImageSize(224, 224), p.CenterCrop);
        Assert.Equal(0.48145466f, p.Mean[0]);
        Assert.Equal(0.27577711f, p.Std[2]);
    }

    [Fact]
    public void A_vit_preprocessor_config_resizes_to_its_exact_size_and_an_old_integer_size_is_square()
    {
        string file = Path.Combine(dir, "preprocessor_config.json");
        File.WriteAllText(file, """{"do_normalize": true, "do_resize": true, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": 384}""");
        var p = ImagePreprocess.FromFile(file);
        Assert.Equal(new ImageSize(384, 384), p.Resize);
        Assert.Null(p.CenterCrop);
        Assert.Equal(ResampleFilter.Bilinear, p.Resample);
        Assert.Equal(1 / 255.0, p.RescaleFactor);

        // What export writes reads back as the same pipeline.
        var vit = ImagePreprocess.Vit(32);
        File.WriteAllText(file, vit.ToJson());
        Assert.Equal(vit, ImagePreprocess.FromFile(file));
        var clip = ImagePreprocess.Clip(48);
        File.WriteAllText(file, clip.ToJson("CLIPImageProcessor"));
        Assert.Equal(clip, ImagePreprocess.FromFile(file));
        Assert.NotEqual(vit, clip);

        Assert.Equal(ImagePreprocess.Vit(48).Resize, ImagePreprocess.ForCheckpoint(Path.Combine(dir, "no-such-dir"), 48).Resize);
    }

    [Fact]
    public void A_preprocessor_config_with_an_unsupported_resample_names_the_key()
    {
        string file = Path.Combine(dir, "preprocessor_config.json");
        File.WriteAllText(file, """{"resample": 1, "size": {"height": 8, "width": 8}}""");
        var e = Assert.Throws<CheckpointConfigException>(() => ImagePreprocess.FromFile(file));
        Assert.Contains("\"resample\"", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
