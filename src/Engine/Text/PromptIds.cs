using Superpipeline.Contracts;
using Superpipeline.Engine.IO;

namespace Superpipeline.Engine.Text;

/// <summary>What a model accepts as token ids: its vocabulary and the positions it has, with the config key that sets them.</summary>
public sealed record TokenLimits(int Vocab, int MaxPositions, string PositionsKey);

/// <summary>Text prompts as the [batch, seq] int64 token ids a forward pass takes (one row per prompt), through the
/// checkpoint's tokenizer; and the temporary .npy that carries them as <see cref="ModelSpec.Input"/>, so that the spec
/// crossing the wire keeps a path, not the ids.</summary>
public static class PromptIds
{
    const string TemporaryPrefix = "superpipeline-prompt-";

    /// <summary>The ids of <paramref name="prompts"/>. Refused in one line: a prompt that encodes to nothing, one longer than the
    /// model's positions, an id outside its vocabulary, and prompts of different lengths (they need an attention mask).</summary>
    public static TensorPayload Encode(CheckpointTokenizer tokenizer, IReadOnlyList<string> prompts, TokenLimits limits)
    {
        var rows = EncodeRows(tokenizer, prompts, limits);
        if (rows.Select(r => r.Count).Distinct().Count() > 1)
            throw new ArgumentException($"prompts of different lengths ({string.Join(", ", rows.Select(r => r.Count))} tokens) need an attention " +
                "mask; `generate` takes them");
        int seq = rows[0].Count;
        var bytes = new byte[rows.Count * seq * sizeof(long)];
        for (int b = 0; b < rows.Count; b++)
            for (int t = 0; t < seq; t++)
                BitConverter.TryWriteBytes(bytes.AsSpan((b * seq + t) * sizeof(long)), (long)rows[b][t]);
        return new TensorPayload("Int64", [rows.Count, seq], [.. bytes]);
    }

    /// <summary>The ids of each of <paramref name="prompts"/>, of any lengths (generation left-pads them). Refused in one line: a
    /// prompt that encodes to nothing, one longer than the model's positions, an id outside its vocabulary.</summary>
    public static IReadOnlyList<IReadOnlyList<int>> EncodeRows(CheckpointTokenizer tokenizer, IReadOnlyList<string> prompts, TokenLimits limits)
    {
        if (prompts.Count == 0) throw new ArgumentException("no prompt given");
        var rows = new List<IReadOnlyList<int>>();
        foreach (var (prompt, row) in prompts.Select((p, i) => (p, i + 1)))
        {
            var ids = tokenizer.Encode(prompt);
            if (ids.Count == 0) throw new ArgumentException($"prompt {row} encodes to no tokens");
            if (ids.Count > limits.MaxPositions)
                throw new ArgumentException($"prompt {row} is {ids.Count} tokens, more than the {limits.MaxPositions} positions the model has " +
                    $"({limits.PositionsKey})");
            if (ids.FirstOrDefault(id => id < 0 || id >= limits.Vocab, -1) is var bad and >= 0)
                throw new ArgumentException($"prompt {row}: token id {bad} from {Path.GetFileName(tokenizer.File)} is outside the model's " +
                    $"vocabulary [0, {limits.Vocab}) (vocab_size)");
            rows.Add(ids);
        }
        return rows;
    }

    /// <summary>Writes <paramref name="ids"/> to a new .npy file in the temporary directory; returns its path. Delete it with
    /// <see cref="DeleteTemporary"/> when the job is done.</summary>
    public static string WriteTemporary(TensorPayload ids) => TemporaryNpy.Write(TemporaryPrefix, ids);

    /// <summary>Deletes <paramref name="path"/> when it is a file <see cref="WriteTemporary"/> wrote; anything else is left alone.</summary>
    public static void DeleteTemporary(string? path) => TemporaryNpy.Delete(TemporaryPrefix, path);
}
