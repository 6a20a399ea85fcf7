using System.Collections.Immutable;
using System.Text.Json;
using Superpipeline.Engine.Models;

namespace Superpipeline.Engine.Images;

/// <summary>The resampling filter of a resize, numbered as PIL and Hugging Face's <c>resample</c> key number them.</summary>
public enum ResampleFilter
{
    Bilinear = 2,
    Bicubic = 3,
}

/// <summary>A height and a width in pixels.</summary>
public sealed record ImageSize(int Height, int Width)
{
    public override string ToString() => $"{Height}×{Width}";
}

/// <summary>An image pipeline as Hugging Face's image processors (ViTImageProcessor, CLIPImageProcessor) describe it, applied in
/// their order: resize (the shortest edge to <see cref="ShortestEdge"/> keeping the aspect ratio, or to exactly
/// <see cref="Resize"/>; neither: no resize) with <see cref="Resample"/>, center crop to <see cref="CenterCrop"/> (null: none),
/// multiply by <see cref="RescaleFactor"/> (null: none), then <c>(x - mean) / std</c> per RGB channel (<see cref="Mean"/> and
/// <see cref="Std"/> empty: none). Build one with <see cref="ImageNet"/>, <see cref="Vit"/>, <see cref="FromFile"/> or
/// <see cref="ForCheckpoint"/>, and run it with <see cref="ImageInput.Load"/>.</summary>
public sealed record ImagePreprocess
{
    public const string FileName = "preprocessor_config.json";

    public static readonly ImmutableArray<float> ImageNetMean = [0.485f, 0.456f, 0.406f], ImageNetStd = [0.229f, 0.224f, 0.225f];
    public static readonly ImmutableArray<float> HalfMean = [0.5f, 0.5f, 0.5f], HalfStd = [0.5f, 0.5f, 0.5f];
    public static readonly ImmutableArray<float> ClipMean = [0.48145466f, 0.4578275f, 0.40821073f], ClipStd = [0.26862954f, 0.26130258f, 0.27577711f];

    public ImagePreprocess(int? ShortestEdge, ImageSize? Resize, ResampleFilter Resample, ImageSize? CenterCrop, double? RescaleFactor,
        ImmutableArray<float> Mean, ImmutableArray<float> Std)
    {
        if (ShortestEdge is not null && Resize is not null) throw new ArgumentException("image resize: a shortest edge or an exact size, not both");
        if (ShortestEdge is < 1) throw new ArgumentException($"image resize: shortest edge {ShortestEdge} must be at least 1");
        if (Resize is { } r && (r.Height < 1 || r.Width < 1)) throw new ArgumentException($"image resize: size {r} must be at least 1×1");
        if (CenterCrop is { } c && (c.Height < 1 || c.Width < 1)) throw new ArgumentException($"image center crop: size {c} must be at least 1×1");
        if (!Enum.IsDefined(Resample)) throw new ArgumentException($"image resample {(int)Resample} is neither 2 (bilinear) nor 3 (bicubic)");
        Mean = Mean.IsDefault ? [] : Mean;
        Std = Std.IsDefault ? [] : Std;
        if (Mean.Length != Std.Length || Mean.Length is not (0 or 3))
            throw new ArgumentException($"image normalize: mean and std need 3 values each (RGB); got {Mean.Length} and {Std.Length}");
        if (Std.Any(s => !(s > 0))) throw new ArgumentException($"image normalize: std [{string.Join(", ", Std)}] must be positive");
        this.ShortestEdge = ShortestEdge;
        this.Resize = Resize;
        this.Resample = Resample;
        this.CenterCrop = CenterCrop;
        this.RescaleFactor = RescaleFactor;
        this.Mean = Mean;
        this.Std = Std;
    }

    public int? ShortestEdge { get; }
    public ImageSize? Resize { get; }
    public ResampleFilter Resample { get; }
    public ImageSize? CenterCrop { get; }
    public double? RescaleFactor { get; }
    public ImmutableArray<float> Mean { get; }
    public ImmutableArray<float> Std { get; }

    /// <summary>torchvision's ImageNet evaluation transform: shortest edge to 256 · size / 224 (256 for 224), bilinear, center
    /// crop size × size, 1/255, ImageNet mean and std.</summary>
    public static ImagePreprocess ImageNet(int size = 224) =>
        new((int)Math.Round(size * 256.0 / 224), null, ResampleFilter.Bilinear, new ImageSize(size, size), 1 / 255.0, ImageNetMean, ImageNetStd);

    /// <summary>ViTImageProcessor's defaults at <paramref name="imageSize"/>: resize to exactly size × size, bilinear, no crop,
    /// 1/255, mean and std 0.5.</summary>
    public static ImagePreprocess Vit(int imageSize) =>
        new(null, new ImageSize(imageSize, imageSize), ResampleFilter.Bilinear, null, 1 / 255.0, HalfMean, HalfStd);

    /// <summary>CLIPImageProcessor's defaults at <paramref name="imageSize"/>: shortest edge to size, bicubic, center crop size × size,
    /// 1/255, OpenAI CLIP's mean and std.</summary>
    public static ImagePreprocess Clip(int imageSize) =>
        new(imageSize, null, ResampleFilter.Bicubic, new ImageSize(imageSize, imageSize), 1 / 255.0, ClipMean, ClipStd);

    /// <summary>The height and width of what the pipeline makes of an image of <paramref name="input"/>.</summary>
    public ImageSize OutputSize(ImageSize input) => CenterCrop ?? ResizedSize(input);

    /// <summary>The size after the resize step alone (Hugging Face's get_resize_output_image_size: the long edge is
    /// truncated, <c>int(shortest · long / short)</c>).</summary>
    public ImageSize ResizedSize(ImageSize input)
    {
        if (Resize is { } exact) return exact;
        if (ShortestEdge is not { } s) return input;
        bool tall = input.Height >= input.Width;
        int shortIn = tall ? input.Width : input.Height, longIn = tall ? input.Height : input.Width;
        int longOut = (int)((long)s * longIn / shortIn);
        return tall ? new ImageSize(longOut, s) : new ImageSize(s, longOut);
    }

    /// <summary><c>DIR/preprocessor_config.json</c> when the checkpoint has one, else ViT's defaults at the config's
    /// <paramref name="imageSize"/> (<see cref="Vit"/>).</summary>
    public static ImagePreprocess ForCheckpoint(string directory, int imageSize)
    {
        string file = Path.Combine(directory, FileName);
        return File.Exists(file) ? FromFile(file) : Vit(imageSize);
    }

    /// <summary>A Hugging Face <c>preprocessor_config.json</c> (ViTImageProcessor or CLIPImageProcessor keys: do_resize, size
    /// ({height, width}, {shortest_edge} or a number), resample (2 bilinear, 3 bicubic), do_center_crop, crop_size, do_rescale,
    /// rescale_factor, do_normalize, image_mean, image_std). A key that is absent takes the processor's default: CLIP's when
    /// <c>image_processor_type</c> (or <c>feature_extractor_type</c>) names CLIP, else ViT's. A key it cannot honour is a
    /// <see cref="CheckpointConfigException"/> naming the file and the key.</summary>
    public static ImagePreprocess FromFile(string file)
    {
        using var json = ConfigJson.Open(file);
        string type = json.String("image_processor_type") ?? json.String("feature_extractor_type") ?? "ViTImageProcessor";
        bool clip = type.StartsWith("CLIP", StringComparison.OrdinalIgnoreCase);
        var defaults = clip ? Clip(224) : Vit(224);

        int? shortest = null;
        ImageSize? exact = null;
        if (json.Bool("do_resize", true))
        {
            if (!json.Has("size")) (shortest, exact) = (defaults.ShortestEdge, defaults.Resize);
            else
            {
                var size = json.Root.GetProperty("size");
                if (size.ValueKind == JsonValueKind.Number)
                {
                    int n = PositiveInt(json, "size", size);
                    // An integer size: ViT squares it, CLIP takes it as the shortest edge (get_size_dict's default_to_square).
                    if (clip) shortest = n; else exact = new ImageSize(n, n);
                }
                else if (size.ValueKind == JsonValueKind.Object && size.TryGetProperty("shortest_edge", out var se) && !size.TryGetProperty("height", out _))
                {
                    if (size.TryGetProperty("longest_edge", out var le) && le.ValueKind != JsonValueKind.Null)
                        throw new CheckpointConfigException(json.File, "size", "has longest_edge, which this reader does not apply");
                    shortest = PositiveInt(json, "size", se);
                }
                else exact = SizeOf(json, "size", size);
            }
        }

        var resample = (ResampleFilter)json.Int("resample", (int)defaults.Resample);
        if (!Enum.IsDefined(resample))
            throw new CheckpointConfigException(json.File, "resample", $"is {(int)resample}; only 2 (bilinear) and 3 (bicubic) are supported");

        ImageSize? crop = null;
        if (json.Bool("do_center_crop", clip))
            crop = json.Has("crop_size") ? SizeOf(json, "crop_size", json.Root.GetProperty("crop_size")) : defaults.CenterCrop ?? defaults.Resize;

        double? rescale = json.Bool("do_rescale", true) ? json.Double("rescale_factor", 1 / 255.0) : null;
        ImmutableArray<float> mean = [], std = [];
        if (json.Bool("do_normalize", true))
        {
            mean = Floats(json, "image_mean") ?? defaults.Mean;
            std = Floats(json, "image_std") ?? defaults.Std;
        }
        try
        {
            return new ImagePreprocess(shortest, exact, resample, crop, rescale, mean, std);
        }
        catch (ArgumentException e)
        {
            throw new CheckpointConfigException(json.File, null, e.Message);
        }
    }

    static int PositiveInt(ConfigJson json, string key, JsonElement e) =>
        e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int n) && n > 0 ? n
            : throw new CheckpointConfigException(json.File, key, $"is {e.GetRawText()}, not a positive integer");

    static ImageSize SizeOf(ConfigJson json, string key, JsonElement e)
    {
        if (e.ValueKind == JsonValueKind.Number) { int n = PositiveInt(json, key, e); return new ImageSize(n, n); }
        if (e.ValueKind == JsonValueKind.Object && e.TryGetProperty("height", out var h) && e.TryGetProperty("width", out var w))
            return new ImageSize(PositiveInt(json, key, h), PositiveInt(json, key, w));
        throw new CheckpointConfigException(json.File, key, $"is {e.GetRawText()}, not {{\"height\", \"width\"}}, {{\"shortest_edge\"}} or a number");
    }

    static ImmutableArray<float>? Floats(ConfigJson json, string key)
    {
        if (!json.Has(key)) return null;
        var e = json.Root.GetProperty(key);
        if (e.ValueKind == JsonValueKind.Number) { float v = (float)e.GetDouble(); return [v, v, v]; }
        if (e.ValueKind == JsonValueKind.Array && e.GetArrayLength() == 3 && e.EnumerateArray().All(x => x.ValueKind == JsonValueKind.Number))
            return [.. e.EnumerateArray().Select(x => (float)x.GetDouble())];
        throw new CheckpointConfigException(json.File, key, $"is {e.GetRawText()}, not three numbers (RGB)");
    }

    /// <summary>The keys <see cref="FromFile"/> reads, as Hugging Face writes them (for export).</summary>
    public string ToJson(string processorType = "ViTImageProcessor")
    {
        var o = new Dictionary<string, object?>
        {
            ["image_processor_type"] = processorType,
            ["do_resize"] = ShortestEdge is not null || Resize is not null,
        };
        if (ShortestEdge is { } s) o["size"] = new Dictionary<string, int> { ["shortest_edge"] = s };
        else if (Resize is { } r) o["size"] = new Dictionary<string, int> { ["height"] = r.Height, ["width"] = r.Width };
        o["resample"] = (int)Resample;
        o["do_center_crop"] = CenterCrop is not null;
        if (CenterCrop is { } c) o["crop_size"] = new Dictionary<string, int> { ["height"] = c.Height, ["width"] = c.Width };
        o["do_rescale"] = RescaleFactor is not null;
        if (RescaleFactor is { } f) o["rescale_factor"] = f;
        o["do_normalize"] = Mean.Length > 0;
        if (Mean.Length > 0) { o["image_mean"] = Mean.ToArray(); o["image_std"] = Std.ToArray(); }
        return JsonSerializer.Serialize(o, new JsonSerializerOptions { WriteIndented = true });
    }
}
