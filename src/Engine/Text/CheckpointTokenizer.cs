using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;
using Superpipeline.Engine.Models;

namespace Superpipeline.Engine.Text;

/// <summary>The tokenizer of a Hugging Face checkpoint directory, through Microsoft.ML.Tokenizers. Files are tried in the
/// order transformers' fast tokenizers prefer them: <c>tokenizer.json</c> (a BPE model: byte-level as GPT-2 and Llama 3,
/// or SentencePiece-style with byte fallback as Llama 2), then <c>vocab.json</c> + <c>merges.txt</c> (GPT-2's byte-level
/// BPE), then <c>tokenizer.model</c> (SentencePiece BPE, Llama). Special tokens and <c>add_bos_token</c> come from
/// <c>tokenizer_config.json</c> and <c>special_tokens_map.json</c>; the ids generation uses from
/// <c>generation_config.json</c> and <c>config.json</c>. A missing or malformed file is one
/// <see cref="CheckpointConfigException"/> naming it.</summary>
public sealed class CheckpointTokenizer
{
    public const string TokenizerJson = "tokenizer.json", VocabJson = "vocab.json", MergesTxt = "merges.txt", TokenizerModel = "tokenizer.model";
    public const string TokenizerConfig = "tokenizer_config.json", SpecialTokensMap = "special_tokens_map.json";
    public const string GenerationConfig = "generation_config.json", Config = "config.json";

    readonly Tokenizer _tokenizer;
    readonly Func<IEnumerable<int>, bool, string> _decode;
    readonly IReadOnlyDictionary<string, int> _vocabulary;
    readonly bool _addPrefixSpace;

    CheckpointTokenizer(string file, string kind, Tokenizer tokenizer, Func<IEnumerable<int>, bool, string> decode,
        IReadOnlyDictionary<string, int> vocabulary, bool addBos, int? bosId, IReadOnlyList<int> eosIds, int? padId, bool addPrefixSpace)
    {
        _addPrefixSpace = addPrefixSpace;
        (File, Kind, _tokenizer, _decode, _vocabulary) = (file, kind, tokenizer, decode, vocabulary);
        (AddBos, BosId, EosIds, PadId) = (addBos, bosId, eosIds, padId);
        Count = vocabulary.Count == 0 ? 0 : vocabulary.Values.Max() + 1;
    }

    /// <summary>The file the vocabulary was read from.</summary>
    public string File { get; }

    /// <summary>"byte-level BPE" or "SentencePiece BPE".</summary>
    public string Kind { get; }

    /// <summary>Whether <see cref="Encode"/> starts every text with <see cref="BosId"/> (tokenizer_config.json's
    /// <c>add_bos_token</c>; without it, tokenizer.json's post-processor template, else true for tokenizer.model as
    /// transformers' LlamaTokenizer has it and false for byte-level BPE as GPT2Tokenizer has it).</summary>
    public bool AddBos { get; }

    /// <summary>The beginning-of-sequence id: the tokenizer's <c>bos_token</c>, else <c>bos_token_id</c> of
    /// generation_config.json or config.json; null when none names one.</summary>
    public int? BosId { get; }

    /// <summary>The ids generation stops at: <c>eos_token_id</c> (a number or a list) of generation_config.json, else of
    /// config.json, else the tokenizer's <c>eos_token</c>; empty when none names one.</summary>
    public IReadOnlyList<int> EosIds { get; }

    /// <summary>The first of <see cref="EosIds"/>, or null.</summary>
    public int? EosId => EosIds.Count > 0 ? EosIds[0] : null;

    /// <summary>The padding id: the tokenizer's <c>pad_token</c>, else <c>pad_token_id</c> of generation_config.json or
    /// config.json; null when none names one (GPT-2 has none: a caller pads with <see cref="EosId"/>, as transformers warns it does).</summary>
    public int? PadId { get; }

    /// <summary>Ids the tokenizer knows: one more than its largest id.</summary>
    public int Count { get; }

    /// <summary>The ids of <paramref name="text"/>, with <see cref="BosId"/> first when <see cref="AddBos"/>.</summary>
    public IReadOnlyList<int> Encode(string text)
    {
        // ByteLevel's add_prefix_space: a text that does not start with a space is encoded as if it did.
        var ids = _tokenizer.EncodeToIds(_addPrefixSpace && !text.StartsWith(' ') ? " " + text : text);
        return AddBos && BosId is { } bos ? [bos, .. ids] : ids;
    }

    /// <summary>The text of <paramref name="ids"/>; special tokens (BOS, EOS, padding) are left out unless
    /// <paramref name="skipSpecialTokens"/> is false; ids the tokenizer does not have (a model may pad its vocabulary past the
    /// tokenizer's) give nothing. Decoding a growing list gives a growing text (see <see cref="TextStream"/>).</summary>
    public string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens = true) => _decode(ids, !skipSpecialTokens);

    /// <summary>A stream that turns ids, one at a time, into the text they complete (see <see cref="TokenTextStream"/>).</summary>
    public TokenTextStream TextStream() => new(this);

    /// <summary>The id of <paramref name="token"/> in the vocabulary, or null.</summary>
    public int? IdOf(string token) => _vocabulary.TryGetValue(token, out var id) ? id : null;

    /// <summary>Whether <paramref name="directory"/> holds any of the tokenizer files <see cref="Load"/> reads.</summary>
    public static bool Present(string directory) =>
        new[] { TokenizerJson, VocabJson, MergesTxt, TokenizerModel }.Any(f => System.IO.File.Exists(Path.Combine(directory, f)));

    /// <summary>Reads the tokenizer of the checkpoint in <paramref name="directory"/>.</summary>
    public static CheckpointTokenizer Load(string directory)
    {
        if (!Directory.Exists(directory)) throw new CheckpointConfigException(directory, null, "is not a directory");
        string P(string name) => Path.Combine(directory, name);
        var settings = TokenizerSettings.Read(directory);
        if (System.IO.File.Exists(P(TokenizerJson))) return FromTokenizerJson(directory, P(TokenizerJson), settings);
        bool vocab = System.IO.File.Exists(P(VocabJson)), merges = System.IO.File.Exists(P(MergesTxt));
        if (vocab && merges)
        {
            var v = ReadVocabJson(P(VocabJson));
            var m = ReadMergesTxt(P(MergesTxt));
            // GPT2Tokenizer's defaults: bos, eos and unk are <|endoftext|> unless the tokenizer config names others.
            var defaults = v.TryGetValue(EndOfText, out int eot) ? new List<(int, string)> { (eot, EndOfText) } : [];
            return ByteLevelBpe(directory, P(VocabJson), v, m, settings with { Named = WithDefaults(settings.Named, v) }, defaults, template: null,
                regex: null,
                addPrefixSpace: settings.AddPrefixSpace ?? false);
        }
        if (vocab != merges)
            throw new CheckpointConfigException(P(vocab ? MergesTxt : VocabJson), null, $"not found: {(vocab ? VocabJson : MergesTxt)} needs it");
        if (System.IO.File.Exists(P(TokenizerModel))) return FromSentencePiece(directory, P(TokenizerModel), settings, defaultAddBos: true, template: null);
        throw new CheckpointConfigException(directory, null,
            $"has no tokenizer: expected {TokenizerJson}, {VocabJson} + {MergesTxt}, or {TokenizerModel}");
    }

    const string EndOfText = "<|endoftext|>";

    static IReadOnlyDictionary<string, string?> WithDefaults(IReadOnlyDictionary<string, string?> named, Dictionary<string, int> vocab)
    {
        if (!vocab.ContainsKey(EndOfText)) return named;
        var result = new Dictionary<string, string?>(named);
        foreach (var key in new[] { "bos_token", "eos_token", "unk_token" }) result.TryAdd(key, EndOfText);
        return result;
    }

    static CheckpointTokenizer ByteLevelBpe(string directory, string file, Dictionary<string, int> vocab, List<(string A, string B)> merges,
        TokenizerSettings settings, IReadOnlyList<(int Id, string Content)> addedTokens, int? template, string? regex, bool addPrefixSpace)
    {
        // Special tokens are matched whole in the text, as transformers' added tokens are: the added tokens, and the
        // special token strings tokenizer_config.json and special_tokens_map.json name.
        var special = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var (id, content) in addedTokens) { special[content] = id; vocab.TryAdd(content, id); }
        foreach (var (id, content) in settings.AddedTokens) { special[content] = id; vocab.TryAdd(content, id); }
        foreach (var t in settings.Named.Values) if (t is not null && vocab.TryGetValue(t, out var id)) special[t] = id;

        BpeTokenizer tokenizer;
        try
        {
            tokenizer = BpeTokenizer.Create(new BpeOptions(vocab)
            {
                Merges = merges.Select(m => $"{m.A} {m.B}").ToList(),
                ByteLevel = true,
                PreTokenizer = new RegexPreTokenizer(new Regex(regex ?? Gpt2Pattern, RegexOptions.Compiled), special),
                SpecialTokens = special,
            });
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException or KeyNotFoundException)
        {
            throw new CheckpointConfigException(file, null, $"is not a BPE vocabulary the tokenizer reads: {OneLine(e.Message)}");
        }
        int? bos = settings.Id("bos_token", vocab) ?? template;
        bool addBos = settings.AddBos ?? template is not null;
        return Finish(directory, file, "byte-level BPE", tokenizer, (ids, special) => tokenizer.Decode(ids, considerSpecialTokens: special), vocab,
            settings, addBos, bos, addPrefixSpace: addPrefixSpace);
    }

    /// <summary>GPT-2's pre-tokenization pattern (openai/gpt-2 encoder.py; tokenizers' ByteLevel with use_regex).</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    /// <summary>A SentencePiece model from <paramref name="file"/>, or from <paramref name="model"/> made from it.</summary>
    static CheckpointTokenizer FromSentencePiece(string directory, string file, TokenizerSettings settings, bool defaultAddBos, int? template,
        byte[]? model = null)
    {
        SentencePieceTokenizer tokenizer;
        try
        {
            using Stream stream = model is null ? System.IO.File.OpenRead(file) : new MemoryStream(model);
            tokenizer = LlamaTokenizer.Create(stream, addBeginOfSentence: false, addEndOfSentence: false,
                specialTokens: settings.AddedTokens.Count == 0 ? null : settings.AddedTokens.ToDictionary(t => t.Content, t => t.Id));
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or FormatException or IOException
            or Google.Protobuf.InvalidProtocolBufferException)
        {
            throw new CheckpointConfigException(file, null, $"is not a SentencePiece BPE model: {OneLine(e.Message)}");
        }
        var vocab = tokenizer.Vocabulary.ToDictionary(kv => kv.Key, kv => kv.Value, StringComparer.Ordinal);
        int? bos = settings.Id("bos_token", vocab) ?? template ?? (tokenizer.BeginningOfSentenceId >= 0 ? tokenizer.BeginningOfSentenceId : null);
        int? eos = tokenizer.EndOfSentenceId >= 0 ? tokenizer.EndOfSentenceId : null;
        return Finish(directory, file, "SentencePiece BPE", tokenizer, (ids, special) => tokenizer.Decode(ids, considerSpecialTokens: special),
            vocab, settings, settings.AddBos ?? defaultAddBos, bos, eos);
    }

    static CheckpointTokenizer Finish(string directory, string file, string kind, Tokenizer tokenizer, Func<IEnumerable<int>, bool, string> decode,
        Dictionary<string, int> vocab, TokenizerSettings settings, bool addBos, int? bos, int? eos = null, bool addPrefixSpace = false)
    {
        var model = ModelTokenIds.Read(directory);
        int? tokenEos = settings.Id("eos_token", vocab) ?? eos;
        IReadOnlyList<int> eosIds = model.Eos ?? (tokenEos is { } e ? [e] : []);
        return new CheckpointTokenizer(file, kind, tokenizer, decode, vocab, addBos, bos ?? model.Bos, eosIds, settings.Id("pad_token", vocab) ?? model.Pad,
            addPrefixSpace);
    }

    static CheckpointTokenizer FromTokenizerJson(string directory, string file, TokenizerSettings settings)
    {
        JsonElement root;
        try
        {
            using var doc = JsonDocument.Parse(System.IO.File.ReadAllBytes(file));
            root = doc.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new CheckpointConfigException(file, null, $"is not valid JSON: {OneLine(e.Message)}");
        }
        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new CheckpointConfigException(file, "model", "is missing: a tokenizer.json has a model object");
        string type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "BPE";
        if (type != "BPE")
            throw new CheckpointConfigException(file, "model.type", $"is \"{type}\": only BPE tokenizers are read (GPT-2, Llama, Mistral and kin)");
        var vocab = ReadVocab(file, "model.vocab", model.TryGetProperty("vocab", out var v) ? v : default);
        var merges = ReadMerges(file, model.TryGetProperty("merges", out var m) ? m : default);
        var added = new List<(int Id, string Content)>();
        if (root.TryGetProperty("added_tokens", out var addedTokens) && addedTokens.ValueKind == JsonValueKind.Array)
            foreach (var a in addedTokens.EnumerateArray())
                if (a.TryGetProperty("id", out var id) && id.TryGetInt32(out int i) && a.TryGetProperty("content", out var c) && c.GetString() is { } s)
                    added.Add((i, s));
                else throw new CheckpointConfigException(file, "added_tokens", "has an entry without an integer id and a content");
        int? template = root.TryGetProperty("post_processor", out var post) ? TemplateBos(post) : null;
        bool byteLevel = Find(root, "pre_tokenizer", "ByteLevel") is not null || Find(root, "decoder", "ByteLevel") is not null;
        if (byteLevel)
        {
            var level = Find(root, "pre_tokenizer", "ByteLevel");
            bool prefix = level is { } l && l.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.True;
            string? regex = Find(root, "pre_tokenizer", "Split") is { } split && split.TryGetProperty("pattern", out var pat)
                && pat.TryGetProperty("Regex", out var rx) ? rx.GetString() : null;
            if (regex is null && level is { } bl && bl.TryGetProperty("use_regex", out var ur) && ur.ValueKind == JsonValueKind.False)
                regex = @"[\s\S]+"; // no split: the whole text is one piece
            return ByteLevelBpe(directory, file, vocab, merges, settings, added, template, regex, prefix);
        }
        // SentencePiece-style BPE (Llama 2, Mistral): the same model tokenizer.model holds, which the library reads directly.
        string spModel = Path.Combine(directory, TokenizerModel);
        if (System.IO.File.Exists(spModel)) return FromSentencePiece(directory, spModel, settings, template is not null, template);
        return FromSentencePieceJson(directory, file, root, model, vocab, merges, added, settings, template);
    }

    /// <summary>A SentencePiece-style BPE from tokenizer.json alone: its pieces as a SentencePiece model (a merged piece
    /// scores minus the rank of the first merge that makes it, so SentencePiece's highest-score-first merging is the BPE's
    /// lowest-rank-first), byte pieces <c>&lt;0xNN&gt;</c> as byte fallback, special added tokens as control pieces.</summary>
    static CheckpointTokenizer FromSentencePieceJson(string directory, string file, JsonElement root, JsonElement model, Dictionary<string, int> vocab,
        List<(string A, string B)> merges, List<(int Id, string Content)> added, TokenizerSettings settings, int? template)
    {
        foreach (var (id, content) in added) vocab.TryAdd(content, id);
        int count = vocab.Values.Max() + 1;
        var byId = new string?[count];
        foreach (var (piece, id) in vocab) byId[id] = piece;
        if (Array.IndexOf(byId, null) is var gap and >= 0)
            throw new CheckpointConfigException(file, "model.vocab", $"has no token with id {gap}: ids must run from 0 without gaps");
        var rank = new Dictionary<string, int>(StringComparer.Ordinal);
        for (int i = 0; i < merges.Count; i++) rank.TryAdd(merges[i].A + merges[i].B, i);
        string? unk = model.TryGetProperty("unk_token", out var u) ? u.GetString() : null;
        var control = added.Select(a => a.Content).ToHashSet(StringComparer.Ordinal);
        var pieces = byId.Select((p, id) => new SentencePieceModel.Piece(p!,
            rank.TryGetValue(p!, out var r) ? -r : -(merges.Count + id),
            p == unk ? SentencePieceModel.PieceType.Unknown
                : control.Contains(p!) ? SentencePieceModel.PieceType.Control
                : Regex.IsMatch(p!, "^<0x[0-9A-Fa-f]{2}>$") ? SentencePieceModel.PieceType.Byte
                : SentencePieceModel.PieceType.Normal)).ToList();
        bool byteFallback = model.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True;
        bool dummyPrefix = Find(root, "normalizer", "Prepend") is not null
            || Find(root, "pre_tokenizer", "Metaspace") is { } meta && !(meta.TryGetProperty("prepend_scheme", out var ps) && ps.GetString() == "never");
        int Id(string key) => settings.Id(key, vocab) ?? -1;
        var bytes = SentencePieceModel.Serialize(pieces, byteFallback, unk is not null && vocab.TryGetValue(unk, out var ui) ? ui : -1,
            Id("bos_token"), Id("eos_token"), -1, dummyPrefix);
        return FromSentencePiece(directory, file, settings, template is not null, template, bytes);
    }

    /// <summary>The id a TemplateProcessing post-processor puts before a single sequence (Llama 3's BOS), or null.</summary>
    static int? TemplateBos(JsonElement post)
    {
        if (Find(post, null, "TemplateProcessing") is not { } tp || !tp.TryGetProperty("single", out var single)
            || single.ValueKind != JsonValueKind.Array || single.GetArrayLength() == 0) return null;
        if (!single[0].TryGetProperty("SpecialToken", out var st) || st.GetProperty("id").GetString() is not { } name) return null;
        return tp.TryGetProperty("special_tokens", out var sts) && sts.TryGetProperty(name, out var entry) && entry.TryGetProperty("ids", out var ids)
            && ids.ValueKind == JsonValueKind.Array && ids.GetArrayLength() > 0 ? ids[0].GetInt32() : null;
    }

    /// <summary>The first object of <paramref name="type"/> in <paramref name="root"/>'s <paramref name="key"/> (or in
    /// <paramref name="root"/> itself when null), looking inside Sequence lists.</summary>
    static JsonElement? Find(JsonElement root, string? key, string type)
    {
        if (key is not null && !(root.TryGetProperty(key, out root))) return null;
        if (root.ValueKind == JsonValueKind.Array)
        {
            foreach (var e in root.EnumerateArray()) if (Find(e, null, type) is { } hit) return hit;
            return null;
        }
        if (root.ValueKind != JsonValueKind.Object) return null;
        if (root.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String && t.GetString() == type) return root;
        foreach (var list in new[] { "pretokenizers", "normalizers", "decoders", "processors" })
            if (root.TryGetProperty(list, out var items) && Find(items, null, type) is { } hit) return hit;
        return null;
    }

    static Dictionary<string, int> ReadVocabJson(string file)
    {
        try
        {
            using var doc = JsonDocument.Parse(System.IO.File.ReadAllBytes(file));
            return ReadVocab(file, null, doc.RootElement);
        }
        catch (JsonException e)
        {
            throw new CheckpointConfigException(file, null, $"is not valid JSON: {OneLine(e.Message)}");
        }
    }

    static Dictionary<string, int> ReadVocab(string file, string? key, JsonElement vocab)
    {
        if (vocab.ValueKind != JsonValueKind.Object)
            throw new CheckpointConfigException(file, key, "must be a JSON object of tokens to ids");
        var result = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in vocab.EnumerateObject())
        {
            if (p.Value.ValueKind != JsonValueKind.Number || !p.Value.TryGetInt32(out int id) || id < 0)
                throw new CheckpointConfigException(file, key, $"gives token \"{p.Name}\" the id {p.Value.GetRawText()}, not a non-negative integer");
            result[p.Name] = id;
        }
        if (result.Count == 0) throw new CheckpointConfigException(file, key, "is empty");
        return result;
    }

    static List<(string A, string B)> ReadMerges(string file, JsonElement merges)
    {
        if (merges.ValueKind != JsonValueKind.Array) throw new CheckpointConfigException(file, "model.merges", "must be a list of merges");
        var result = new List<(string, string)>();
        foreach (var m in merges.EnumerateArray())
        {
            if (m.ValueKind == JsonValueKind.String && m.GetString()!.Split(' ') is [var a, var b]) result.Add((a, b));
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2 && m[0].GetString() is { } x && m[1].GetString() is { } y)
                result.Add((x, y));
            else throw new CheckpointConfigException(file, "model.merges", $"has entry {result.Count} {m.GetRawText()}, not a pair of tokens");
        }
        return result;
    }

    static List<(string A, string B)> ReadMergesTxt(string file)
    {
        var result = new List<(string, string)>();
        int line = 0;
        foreach (var text in System.IO.File.ReadLines(file))
        {
            line++;
            if ((line == 1 && text.StartsWith("#version", StringComparison.Ordinal)) || text.Length == 0) continue;
            if (text.Split(' ') is [var a, var b] && a.Length > 0 && b.Length > 0) result.Add((a, b));
            else throw new CheckpointConfigException(file, null, $"line {line} is not two tokens separated by a space: \"{Truncate(text)}\"");
        }
        return result;
    }

    static string Truncate(string s) => s.Length <= 40 ? s : s[..40] + "…";

    static string OneLine(string s) => s.Split('\n')[0].Trim();
}
