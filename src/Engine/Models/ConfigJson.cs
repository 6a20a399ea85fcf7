using System.Text.Json;

namespace Superpipeline.Engine.Models;

/// <summary>A checkpoint's config.json is unreadable or lacks what a family needs. One line naming the file and the key.</summary>
public sealed class CheckpointConfigException(string file, string? key, string problem)
    : Exception(key is null ? $"{file}: {problem}" : $"{file}: \"{key}\" {problem}")
{
    public string File { get; } = file;
    public string? Key { get; } = key;
}

/// <summary>A Hugging Face config.json, open for one family's reader: typed keys whose absence, null or wrong type is a
/// <see cref="CheckpointConfigException"/> naming the file and the key. Every family and the catalog read through it.</summary>
public sealed class ConfigJson : IDisposable
{
    readonly JsonDocument _doc;

    ConfigJson(string file, JsonDocument doc) { File = file; _doc = doc; }

    public string File { get; }
    public JsonElement Root => _doc.RootElement;

    /// <summary>Opens <c>DIR/config.json</c>, or <paramref name="path"/> itself when it is a file.</summary>
    public static ConfigJson Open(string path)
    {
        string file = Directory.Exists(path) ? Path.Combine(path, "config.json") : path;
        if (!System.IO.File.Exists(file)) throw new CheckpointConfigException(file, null, "not found");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(System.IO.File.ReadAllBytes(file)); }
        catch (JsonException e) { throw new CheckpointConfigException(file, null, $"is not valid JSON: {e.Message.ReplaceLineEndings(" ")}"); }
        if (doc.RootElement.ValueKind != JsonValueKind.Object)
        {
            doc.Dispose();
            throw new CheckpointConfigException(file, null, "is not a JSON object");
        }
        return new ConfigJson(file, doc);
    }

    /// <summary>A config held in <paramref name="json"/> (a section of another: LLaVA's text_config with its defaults filled in);
    /// errors name <paramref name="file"/> as the file.</summary>
    public static ConfigJson FromText(string file, string json) => new(file, JsonDocument.Parse(json));

    /// <summary><c>model_type</c>, checked against the families <paramref name="known"/> to the caller.</summary>
    public string ModelType(IReadOnlyCollection<string> known)
    {
        string type = String("model_type") ?? throw new CheckpointConfigException(File, "model_type", "is missing");
        return known.Contains(type)
            ? type
            : throw new CheckpointConfigException(File, "model_type",
                $"is \"{type}\", not a family this reader knows (known: {string.Join(", ", known)})");
    }

    /// <summary>Whether <paramref name="key"/> is present and not null.</summary>
    public bool Has(string key) => TryGet(key, out _);

    bool TryGet(string key, out JsonElement value) => Root.TryGetProperty(key, out value) && value.ValueKind != JsonValueKind.Null;

    public string? String(string key)
    {
        if (!TryGet(key, out var v)) return null;
        return v.ValueKind == JsonValueKind.String ? v.GetString() : throw new CheckpointConfigException(File, key, $"is {v.GetRawText()}, not a string");
    }

    /// <summary>An integer; missing is <paramref name="fallback"/>, or an error without one.</summary>
    public int Int(string key, int? fallback = null)
    {
        if (!TryGet(key, out var v)) return fallback ?? throw new CheckpointConfigException(File, key, "is missing");
        return v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int n) ? n
            : throw new CheckpointConfigException(File, key, $"is {v.GetRawText()}, not an integer");
    }

    /// <summary>A number; missing is <paramref name="fallback"/>, or an error without one.</summary>
    public double Double(string key, double? fallback = null)
    {
        if (!TryGet(key, out var v)) return fallback ?? throw new CheckpointConfigException(File, key, "is missing");
        return v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw new CheckpointConfigException(File, key, $"is {v.GetRawText()}, not a number");
    }

    public bool Bool(string key, bool fallback)
    {
        if (!TryGet(key, out var v)) return fallback;
        return v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new CheckpointConfigException(File, key, $"is {v.GetRawText()}, not true or false"),
        };
    }

    public void Dispose() => _doc.Dispose();
}
