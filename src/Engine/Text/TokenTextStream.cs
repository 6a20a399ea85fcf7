namespace Superpipeline.Engine.Text;

/// <summary>Text as it is produced, one id at a time: each <see cref="Append"/> returns the text the new id completes.
/// The ids so far are decoded whole (SentencePiece drops the first word's space, byte-level BPE may split a character
/// over tokens), and a text ending in an incomplete character (U+FFFD) is held back until a later id completes it,
/// as transformers' TextStreamer does.</summary>
public sealed class TokenTextStream(CheckpointTokenizer tokenizer)
{
    readonly List<int> _ids = [];
    int _printed;

    /// <summary>The ids appended so far.</summary>
    public IReadOnlyList<int> Ids => _ids;

    /// <summary>Appends <paramref name="id"/>; returns the new text that is final (possibly empty).</summary>
    public string Append(int id)
    {
        _ids.Add(id);
        string text = tokenizer.Decode(_ids);
        if (text.EndsWith('\uFFFD')) return "";
        return Take(text);
    }

    /// <summary>The text not returned yet, incomplete characters included: call once at the end.</summary>
    public string Flush() => Take(tokenizer.Decode(_ids));

    string Take(string text)
    {
        if (text.Length <= _printed) return "";
        string fresh = text[_printed..];
        _printed = text.Length;
        return fresh;
    }
}
