using System.Text.Json;
using Superpipeline.Engine.Models;

namespace Superpipeline.Engine.Text;

/// <summary>What tokenizer_config.json and special_tokens_map.json say (the latter wins, as transformers applies it last):
/// the special tokens' strings, add_bos_token, add_prefix_space, and the added tokens of <c>added_tokens_decoder</c>.</summary>
sealed record TokenizerSettings(IReadOnlyDictionary<string, string?> Named, bool? AddBos, bool? AddPrefixSpace,
    IReadOnlyList<(int Id, string Content)> AddedTokens)
{
    static readonly string[] Keys = ["bos_token", "eos_token", "unk_token", "pad_token"];

    public int? Id(string key, IReadOnlyDictionary<string, int> vocab) =>
        Named.GetValueOrDefault(key) is { } token && vocab.TryGetValue(token, out var id) ? id : null;

    public static TokenizerSettings Read(string directory)
    {
        var named = new Dictionary<string, string?>();
        bool? addBos = null, prefix = null;
        var added = new List<(int, string)>();
        foreach (var name in new[] { CheckpointTokenizer.TokenizerConfig, CheckpointTokenizer.SpecialTokensMap })
        {
            string file = Path.Combine(directory, name);
            if (!File.Exists(file)) continue;
            using var doc = JsonFile.Parse(file);
            var root = doc.RootElement;
            foreach (var key in Keys)
                if (root.TryGetProperty(key, out var v))
                    named[key] = v.ValueKind switch
                    {
                        JsonValueKind.String => v.GetString(),
                        JsonValueKind.Object when v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String => c.GetString(),
                        JsonValueKind.Null => null,
                        _ => throw new CheckpointConfigException(file, key, "must be a token string, an object with a content, or null"),
                    };
            if (root.TryGetProperty("add_bos_token", out var b)) addBos = JsonFile.Bool(file, "add_bos_token", b);
            if (root.TryGetProperty("add_prefix_space", out var p)) prefix = JsonFile.Bool(file, "add_prefix_space", p);
            if (root.TryGetProperty("added_tokens_decoder", out var decoder) && decoder.ValueKind == JsonValueKind.Object)
                foreach (var e in decoder.EnumerateObject())
                    if (int.TryParse(e.Name, out int id) && e.Value.TryGetProperty("content", out var c) && c.GetString() is { } s) added.Add((id, s));
                    else throw new CheckpointConfigException(file, "added_tokens_decoder", $"entry \"{e.Name}\" is not an id with a content");
        }
        return new TokenizerSettings(named, addBos, prefix, added);
    }
}

/// <summary>bos/eos/pad token ids of generation_config.json, else config.json (eos may be a list), as transformers'
/// GenerationConfig reads them.</summary>
sealed record ModelTokenIds(int? Bos, IReadOnlyList<int>? Eos, int? Pad)
{
    public static ModelTokenIds Read(string directory)
    {
        int? bos = null, pad = null;
        IReadOnlyList<int>? eos = null;
        foreach (var name in new[] { CheckpointTokenizer.Config, CheckpointTokenizer.GenerationConfig }) // the later file wins
        {
            string file = Path.Combine(directory, name);
            if (!File.Exists(file)) continue;
            using var doc = JsonFile.Parse(file);
            var root = doc.RootElement;
            if (root.TryGetProperty("bos_token_id", out var b) && b.ValueKind != JsonValueKind.Null) bos = JsonFile.Id(file, "bos_token_id", b);
            if (root.TryGetProperty("pad_token_id", out var p) && p.ValueKind != JsonValueKind.Null) pad = JsonFile.Id(file, "pad_token_id", p);
            if (root.TryGetProperty("eos_token_id", out var e) && e.ValueKind != JsonValueKind.Null)
                eos = e.ValueKind == JsonValueKind.Array
                    ? e.EnumerateArray().Select(x => JsonFile.Id(file, "eos_token_id", x)).ToList()
                    : [JsonFile.Id(file, "eos_token_id", e)];
        }
        return new ModelTokenIds(bos, eos, pad);
    }
}

static class JsonFile
{
    public static JsonDocument Parse(string file)
    {
        try
        {
            var doc = JsonDocument.Parse(File.ReadAllBytes(file));
            if (doc.RootElement.ValueKind == JsonValueKind.Object) return doc;
            doc.Dispose();
            throw new CheckpointConfigException(file, null, "must hold a JSON object");
        }
        catch (JsonException e)
        {
            throw new CheckpointConfigException(file, null, $"is not valid JSON: {e.Message.Split('\n')[0]}");
        }
    }

    public static bool Bool(string file, string key, JsonElement v) => v.ValueKind switch
    {
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => throw new CheckpointConfigException(file, key, $"must be true or false, not {v.GetRawText()}"),
    };

    public static int Id(string file, string key, JsonElement v) =>
        v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int id) && id >= 0
            ? id : throw new CheckpointConfigException(file, key, $"must be a token id (a non-negative integer), not {v.GetRawText()}");
}
