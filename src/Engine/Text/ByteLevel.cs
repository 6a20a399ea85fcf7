namespace Superpipeline.Engine.Text;

/// <summary>GPT-2's byte-level alphabet (openai/gpt-2 encoder.py <c>bytes_to_unicode</c>): every byte maps to one printable
/// character, so a byte-level BPE vocabulary (vocab.json, tokenizer.json) is a JSON of strings. The space byte is 'Ġ'.</summary>
public static class ByteLevel
{
    /// <summary>The 256 bytes in GPT-2's id order: the printable bytes first ('!'..'~', '¡'..'¬', '®'..'ÿ'), then the rest.</summary>
    public static IReadOnlyList<byte> BytesInIdOrder { get; }

    /// <summary>The character each byte stands for.</summary>
    public static IReadOnlyList<char> CharOfByte { get; }

    static ByteLevel()
    {
        var order = new List<byte>();
        var chars = new char[256];
        for (int b = 0; b < 256; b++)
            if (b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF) { order.Add((byte)b); chars[b] = (char)b; }
        int extra = 0;
        for (int b = 0; b < 256; b++)
            if (!order.Contains((byte)b)) { order.Add((byte)b); chars[b] = (char)(256 + extra++); }
        BytesInIdOrder = order;
        CharOfByte = chars;
    }

    /// <summary>The byte-level string of <paramref name="bytes"/>: one character per byte.</summary>
    public static string Encode(ReadOnlySpan<byte> bytes)
    {
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) chars[i] = CharOfByte[bytes[i]];
        return new string(chars);
    }
}
