using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Superpipeline.Engine.Text;

/// <summary>The tokenizer export-demo writes beside a seeded checkpoint, in the files Hugging Face's own checkpoints of the
/// family have, with exactly <c>vocab_size</c> ids. Deterministic: merges are learned from <see cref="Corpus"/> (most
/// frequent pair first, ties by ordinal order), then, when the text has no pair left, made from the vocabulary in order.
/// <list type="bullet">
/// <item>gpt2 (as openai-community/gpt2): byte-level BPE in vocab.json + merges.txt and the same in tokenizer.json; the 256
/// byte tokens are ids 0-255 in GPT-2's order, merges follow, <c>&lt;|endoftext|&gt;</c> is the last id (bos = eos = unk, as
/// config.json's bos/eos_token_id say). At least 257 ids.</item>
/// <item>llama (as Llama 2's tokenizer.model, which transformers' LlamaTokenizer and Microsoft.ML.Tokenizers' LlamaTokenizer
/// both read directly, with no conversion): SentencePiece BPE with byte fallback, <c>&lt;unk&gt;</c> 0, <c>&lt;s&gt;</c> 1,
/// <c>&lt;/s&gt;</c> 2, the byte pieces <c>&lt;0x00&gt;</c>..<c>&lt;0xFF&gt;</c> 3-258, merged pieces, then single characters,
/// '▁' (the word boundary) first; add_bos_token true. At least 260 ids: with '▁' only as bytes, Microsoft.ML.Tokenizers would
/// not drop the leading space SentencePiece adds (add_dummy_prefix) when it decodes.</item>
/// <item>clip (as openai/clip-vit-base-patch32's tokenizer files, less its lowercasing and "&lt;/w&gt;" word ends): gpt2's
/// byte-level BPE with <c>&lt;|startoftext|&gt;</c> and <c>&lt;|endoftext|&gt;</c> the last two ids (bos, and eos = pad = unk) and
/// RobertaProcessing as the post-processor, as CLIPTokenizerFast has them. At least 258 ids.</item>
/// <item>llava (as llava-hf's): llama's, with <c>&lt;image&gt;</c> an added special token at the last id. At least 261 ids.</item>
/// </list>
/// Also tokenizer_config.json, special_tokens_map.json and generation_config.json (bos/eos ids).</summary>
public static class DemoTokenizer
{
    /// <summary>A small built-in English text the merges are learned from.</summary>
    public const string Corpus =
        "The model is larger than the device, so its layers stream through a window of memory while the device computes. " +
        "Each layer loads, computes and leaves in turn; the next ones are already on their way. When the window holds " +
        "every layer, nothing moves after the first pass, and the model runs as if the device were large enough. " +
        "A tokenizer turns the text of a prompt into the ids the model reads, and the ids it writes back into text. " +
        "Hello world! The quick brown fox jumps over the lazy dog, then the dog sleeps in the warm sun of the afternoon. " +
        "In the beginning there was the word, and the word was split into pieces that the model could count. " +
        "She said that they would meet again at the station, where the trains leave for the north and the sea.";

    public const string EndOfText = "<|endoftext|>", StartOfText = "<|startoftext|>", Unk = "<unk>", Bos = "<s>", Eos = "</s>";

    /// <summary>LLaVA's image placeholder: an added special token after the llama pieces (the last id), as llava-hf's tokenizers
    /// add it after Llama's 32000.</summary>
    public const string Image = "<image>";

    /// <summary>The fewest ids a family's tokenizer can have: the 256 bytes and its special tokens (and '▁' for llama).</summary>
    public static int MinimumVocab(string family) => family switch
    {
        "gpt2" => 257,
        "clip" => 258,
        "llama" => 260,
        "llava" => 261,
        _ => throw new ArgumentException($"no demo tokenizer for family '{family}' (known: llama, gpt2, clip, llava)"),
    };

    /// <summary>Writes the family's tokenizer files with <paramref name="vocab"/> ids into <paramref name="directory"/>; returns
    /// the file names. A vocabulary below <see cref="MinimumVocab"/> is refused naming vocab_size.</summary>
    public static IReadOnlyList<string> Write(string directory, string family, int vocab, int maxPositions)
    {
        int minimum = MinimumVocab(family);
        if (vocab < minimum)
            throw new ArgumentException($"vocab_size {vocab} is too small for a {family} tokenizer: it needs at least {minimum} ids " +
                family switch
                {
                    "gpt2" => "(256 bytes and <|endoftext|>)",
                    "clip" => "(256 bytes, <|startoftext|> and <|endoftext|>)",
                    "llava" => "(<unk>, <s>, </s>, 256 bytes, '▁' and <image>)",
                    _ => "(<unk>, <s>, </s>, 256 bytes and '▁')",
                });
        Directory.CreateDirectory(directory);
        return family switch
        {
            "gpt2" => WriteGpt2(directory, vocab, maxPositions),
            "clip" => WriteGpt2(directory, vocab, maxPositions, clip: true),
            "llava" => WriteLlama(directory, vocab - 1, maxPositions, imageId: vocab - 1), // llama's pieces, then <image>
            _ => WriteLlama(directory, vocab, maxPositions),
        };
    }

    /// <summary>GPT-2's files; with <paramref name="clip"/>, CLIP's: &lt;|startoftext|&gt; before &lt;|endoftext|&gt; at the end of
    /// the vocabulary, RobertaProcessing adding both around a text, no generation_config.json.</summary>
    static IReadOnlyList<string> WriteGpt2(string directory, int size, int maxPositions, bool clip = false)
    {
        int specials = clip ? 2 : 1;
        var tokens = ByteLevel.BytesInIdOrder.Select(b => ByteLevel.CharOfByte[b].ToString()).ToList();
        var words = Regex.Matches(Corpus, CheckpointTokenizer.Gpt2Pattern).Select(m => ByteLevel.Encode(Encoding.UTF8.GetBytes(m.Value)));
        var merges = LearnMerges(words, tokens, size - 256 - specials, word => word.Select(c => c.ToString()).ToList(), _ => true,
            tokens.Where(t => t[0] is >= 'a' and <= 'z' or 'Ġ').ToList());
        var vocab = new Dictionary<string, int>();
        foreach (var t in tokens) vocab[t] = vocab.Count;
        if (clip) vocab[StartOfText] = size - 2;
        vocab[EndOfText] = size - 1;
        int eot = size - 1, sot = size - 2;

        var addedToken = new JsonObject
        {
            ["content"] = EndOfText, ["lstrip"] = false, ["normalized"] = true, ["rstrip"] = false, ["single_word"] = false, ["special"] = true,
        };
        var byteLevel = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true };
        JsonObject Added(int id, string content) => new()
        {
            ["id"] = id, ["content"] = content, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false, ["normalized"] = true,
            ["special"] = true,
        };
        var roberta = new JsonObject
        {
            ["type"] = "RobertaProcessing", ["sep"] = new JsonArray(EndOfText, eot), ["cls"] = new JsonArray(StartOfText, sot),
            ["trim_offsets"] = false, ["add_prefix_space"] = false,
        };
        var tokenizerJson = new JsonObject
        {
            ["version"] = "1.0", ["truncation"] = null, ["padding"] = null,
            ["added_tokens"] = clip ? new JsonArray(Added(sot, StartOfText), Added(eot, EndOfText)) : new JsonArray(Added(eot, EndOfText)),
            ["normalizer"] = null, ["pre_tokenizer"] = byteLevel.DeepClone(), ["post_processor"] = clip ? roberta : byteLevel.DeepClone(),
            ["decoder"] = byteLevel.DeepClone(),
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = "", ["end_of_word_suffix"] = "",
                ["fuse_unk"] = false, ["byte_fallback"] = false, ["ignore_merges"] = false,
                ["vocab"] = new JsonObject(vocab.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
                ["merges"] = new JsonArray([.. merges.Select(m => (JsonNode?)new JsonArray(m.A, m.B))]),
            },
        };
        WriteJson(directory, "vocab.json", JsonSerializer.Serialize(vocab, Compact));
        File.WriteAllText(Path.Combine(directory, "merges.txt"),
            "#version: 0.2\n" + string.Concat(merges.Select(m => $"{m.A} {m.B}\n")), Utf8);
        WriteJson(directory, "tokenizer.json", tokenizerJson.ToJsonString(Indented));
        if (clip) return WriteClipSettings(directory, maxPositions, sot, eot, addedToken);
        WriteJson(directory, "tokenizer_config.json", new JsonObject
        {
            ["add_bos_token"] = false, ["add_prefix_space"] = false,
            ["added_tokens_decoder"] = new JsonObject { [$"{eot}"] = addedToken.DeepClone() },
            ["bos_token"] = EndOfText, ["clean_up_tokenization_spaces"] = false, ["eos_token"] = EndOfText, ["extra_special_tokens"] = new JsonObject(),
            ["model_max_length"] = maxPositions, ["pad_token"] = null, ["tokenizer_class"] = "GPT2Tokenizer", ["unk_token"] = EndOfText,
        }.ToJsonString(Indented));
        WriteJson(directory, "special_tokens_map.json", new JsonObject
        {
            ["bos_token"] = EndOfText, ["eos_token"] = EndOfText, ["unk_token"] = EndOfText,
        }.ToJsonString(Indented));
        WriteGenerationConfig(directory, eot, eot);
        return ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"];
    }

    /// <summary>CLIPTokenizer's tokenizer_config.json and special_tokens_map.json: bos &lt;|startoftext|&gt;, eos, pad and unk
    /// &lt;|endoftext|&gt;.</summary>
    static IReadOnlyList<string> WriteClipSettings(string directory, int maxPositions, int sot, int eot, JsonObject addedToken)
    {
        var start = addedToken.DeepClone();
        start["content"] = StartOfText;
        WriteJson(directory, "tokenizer_config.json", new JsonObject
        {
            ["add_prefix_space"] = false,
            ["added_tokens_decoder"] = new JsonObject { [$"{sot}"] = start, [$"{eot}"] = addedToken.DeepClone() },
            ["bos_token"] = StartOfText, ["clean_up_tokenization_spaces"] = false, ["do_lower_case"] = false, ["eos_token"] = EndOfText,
            ["errors"] = "replace", ["extra_special_tokens"] = new JsonObject(), ["model_max_length"] = maxPositions, ["pad_token"] = EndOfText,
            ["tokenizer_class"] = "CLIPTokenizer", ["unk_token"] = EndOfText,
        }.ToJsonString(Indented));
        WriteJson(directory, "special_tokens_map.json", new JsonObject
        {
            ["bos_token"] = StartOfText, ["eos_token"] = EndOfText, ["pad_token"] = EndOfText, ["unk_token"] = EndOfText,
        }.ToJsonString(Indented));
        return ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];
    }

    static IReadOnlyList<string> WriteLlama(string directory, int size, int maxPositions, int? imageId = null)
    {
        // SentencePiece's view of the text: spaces are '▁', each sentence starts with one (add_dummy_prefix), a piece never
        // spans a space except at its start, and digits stay single (Llama's split_digits).
        string text = "▁" + Corpus.Replace(' ', '▁');
        var words = Regex.Matches(text, @"▁?[^▁\d]+|\d|▁").Select(m => m.Value).ToList();
        int budget = size - 259;
        var chars = words.SelectMany(w => w.EnumerateRunes()).GroupBy(r => r.ToString())
            .OrderBy(g => g.Key == "▁" ? 0 : 1).ThenByDescending(g => g.Count()).ThenBy(g => g.Key, StringComparer.Ordinal).Select(g => g.Key)
            .Take(budget).ToList();
        var merges = LearnMerges(words, [.. chars], budget - chars.Count, word => word.EnumerateRunes().Select(r => r.ToString()).ToList(),
            piece => piece.LastIndexOf('▁') <= 0 && !piece.Any(char.IsDigit), chars.Where(c => c != "▁" && !c.Any(char.IsDigit)).ToList());
        var pieces = new List<SentencePieceModel.Piece>
        {
            new(Unk, 0, SentencePieceModel.PieceType.Unknown),
            new(Bos, 0, SentencePieceModel.PieceType.Control),
            new(Eos, 0, SentencePieceModel.PieceType.Control),
        };
        for (int b = 0; b < 256; b++) pieces.Add(new($"<0x{b:X2}>", 0, SentencePieceModel.PieceType.Byte));
        foreach (var piece in merges.Select(m => m.A + m.B).Concat(chars))
            pieces.Add(new(piece, -(pieces.Count - 259), SentencePieceModel.PieceType.Normal));
        File.WriteAllBytes(Path.Combine(directory, "tokenizer.model"),
            SentencePieceModel.Serialize(pieces, byteFallback: true, unkId: 0, bosId: 1, eosId: 2, padId: -1));

        JsonObject Added(string content) => new()
        {
            ["content"] = content, ["lstrip"] = false, ["normalized"] = false, ["rstrip"] = false, ["single_word"] = false, ["special"] = true,
        };
        JsonObject Special(string content) => new()
        {
            ["content"] = content, ["lstrip"] = false, ["normalized"] = false, ["rstrip"] = false, ["single_word"] = false,
        };
        var added = new JsonObject { ["0"] = Added(Unk), ["1"] = Added(Bos), ["2"] = Added(Eos) };
        if (imageId is { } image) added[$"{image}"] = Added(Image);
        WriteJson(directory, "tokenizer_config.json", new JsonObject
        {
            ["add_bos_token"] = true, ["add_eos_token"] = false,
            ["added_tokens_decoder"] = added,
            ["bos_token"] = Bos, ["clean_up_tokenization_spaces"] = false, ["eos_token"] = Eos, ["extra_special_tokens"] = new JsonObject(),
            ["legacy"] = true, ["model_max_length"] = maxPositions, ["pad_token"] = null, ["sp_model_kwargs"] = new JsonObject(),
            ["tokenizer_class"] = "LlamaTokenizer", ["unk_token"] = Unk, ["use_default_system_prompt"] = false,
        }.ToJsonString(Indented));
        WriteJson(directory, "special_tokens_map.json", new JsonObject
        {
            ["bos_token"] = Special(Bos), ["eos_token"] = Special(Eos), ["unk_token"] = Special(Unk),
        }.ToJsonString(Indented));
        WriteGenerationConfig(directory, 1, 2);
        return ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"];
    }

    /// <summary>BPE merges learned from <paramref name="words"/>: <paramref name="count"/> of them, most frequent adjacent
    /// pair of known tokens first (ties by ordinal order of the pair); each result joins <paramref name="tokens"/>. When the
    /// words have no pair left, the rest joins each token in order with each of <paramref name="extensions"/>.</summary>
    static List<(string A, string B)> LearnMerges(IEnumerable<string> words, List<string> tokens, int count, Func<string, List<string>> split,
        Func<string, bool> allowed, IReadOnlyList<string> extensions)
    {
        var known = tokens.ToHashSet(StringComparer.Ordinal);
        var merges = new List<(string, string)>();
        var bag = words.GroupBy(w => w).Select(g => (Symbols: split(g.Key), Count: g.Count())).OrderBy(w => string.Concat(w.Symbols), StringComparer.Ordinal)
            .ToList();
        while (merges.Count < count)
        {
            var pairs = new Dictionary<(string, string), int>();
            foreach (var (symbols, n) in bag)
                for (int i = 0; i + 1 < symbols.Count; i++)
                    if (known.Contains(symbols[i]) && known.Contains(symbols[i + 1]) && allowed(symbols[i] + symbols[i + 1]))
                        pairs[(symbols[i], symbols[i + 1])] = pairs.GetValueOrDefault((symbols[i], symbols[i + 1])) + n;
            if (pairs.Count == 0) break;
            var best = pairs.OrderByDescending(p => p.Value).ThenBy(p => p.Key.Item1, StringComparer.Ordinal)
                .ThenBy(p => p.Key.Item2, StringComparer.Ordinal).First().Key;
            string merged = best.Item1 + best.Item2;
            if (known.Add(merged)) // a pair that makes a token already known joins the words, not the merges: one id per token
            {
                merges.Add(best);
                tokens.Add(merged);
            }
            foreach (var (symbols, _) in bag)
                for (int i = 0; i + 1 < symbols.Count; i++)
                    if (symbols[i] == best.Item1 && symbols[i + 1] == best.Item2) { symbols[i] = merged; symbols.RemoveAt(i + 1); }
        }
        for (int next = 0; merges.Count < count && next < tokens.Count; next++)
            foreach (var e in extensions)
            {
                if (merges.Count == count) break;
                string merged = tokens[next] + e;
                if (!allowed(merged) || !known.Add(merged)) continue;
                merges.Add((tokens[next], e));
                tokens.Add(merged);
            }
        if (merges.Count < count) throw new InvalidOperationException($"could not make {count} merges"); // unreachable: the tokens grow
        return merges;
    }

    static void WriteGenerationConfig(string directory, int bos, int eos) =>
        WriteJson(directory, "generation_config.json", new JsonObject
        {
            ["_from_model_config"] = true, ["bos_token_id"] = bos, ["eos_token_id"] = eos,
        }.ToJsonString(Indented));

    static readonly UTF8Encoding Utf8 = new(false);
    static readonly JsonSerializerOptions Compact = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, IndentSize = 2, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    static void WriteJson(string directory, string name, string json) => File.WriteAllText(Path.Combine(directory, name), json + "\n", Utf8);
}
