using System.Buffers.Binary;
using System.Text;

namespace Superpipeline.Engine.Text;

/// <summary>A SentencePiece BPE model as <c>tokenizer.model</c> stores it: the serialized <c>ModelProto</c> of
/// sentencepiece_model.proto (pieces = 1, trainer_spec = 2, normalizer_spec = 3), written here with the few fields a
/// Llama tokenizer uses, so no protobuf code generation is needed. Microsoft.ML.Tokenizers' <c>LlamaTokenizer</c> reads it.</summary>
public static class SentencePieceModel
{
    /// <summary>sentencepiece_model.proto's <c>SentencePiece.Type</c>.</summary>
    public enum PieceType { Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6 }

    public sealed record Piece(string Text, float Score, PieceType Type);

    /// <summary>The serialized model: BPE (trainer_spec.model_type = 2) with <paramref name="byteFallback"/>, unk/bos/eos ids as
    /// given (-1 = none), the "identity" normalizer with <paramref name="addDummyPrefix"/>, whitespace escaped to '▁' and
    /// kept as it is (remove_extra_whitespaces false), as Llama's tokenizer.model has them.</summary>
    public static byte[] Serialize(IReadOnlyList<Piece> pieces, bool byteFallback, int unkId, int bosId, int eosId, int padId,
        bool addDummyPrefix = true)
    {
        var model = new MemoryStream();
        Span<byte> f = stackalloc byte[4];
        foreach (var p in pieces)
        {
            var piece = new MemoryStream();
            WriteString(piece, 1, p.Text);
            WriteTag(piece, 2, 5);
            BinaryPrimitives.WriteSingleLittleEndian(f, p.Score);
            piece.Write(f);
            WriteVarintField(piece, 3, (long)p.Type);
            WriteBytes(model, 1, piece.ToArray());
        }
        var trainer = new MemoryStream();
        WriteVarintField(trainer, 3, 2); // model_type BPE
        WriteVarintField(trainer, 4, pieces.Count); // vocab_size
        WriteVarintField(trainer, 35, byteFallback ? 1 : 0);
        WriteVarintField(trainer, 40, unkId);
        WriteVarintField(trainer, 41, bosId);
        WriteVarintField(trainer, 42, eosId);
        WriteVarintField(trainer, 43, padId);
        if (unkId >= 0) WriteString(trainer, 45, pieces[unkId].Text);
        if (bosId >= 0) WriteString(trainer, 46, pieces[bosId].Text);
        if (eosId >= 0) WriteString(trainer, 47, pieces[eosId].Text);
        WriteBytes(model, 2, trainer.ToArray());
        var normalizer = new MemoryStream();
        WriteString(normalizer, 1, "identity");
        WriteVarintField(normalizer, 3, addDummyPrefix ? 1 : 0);
        WriteVarintField(normalizer, 4, 0); // remove_extra_whitespaces
        WriteVarintField(normalizer, 5, 1); // escape_whitespaces
        WriteBytes(model, 3, normalizer.ToArray());
        return model.ToArray();
    }

    static void WriteTag(Stream s, int field, int wireType) => WriteVarint(s, (ulong)((field << 3) | wireType));

    static void WriteVarintField(Stream s, int field, long value)
    {
        WriteTag(s, field, 0);
        WriteVarint(s, unchecked((ulong)value)); // a negative int32 is sign-extended to ten bytes, as protobuf does
    }

    static void WriteString(Stream s, int field, string value) => WriteBytes(s, field, Encoding.UTF8.GetBytes(value));

    static void WriteBytes(Stream s, int field, byte[] value)
    {
        WriteTag(s, field, 2);
        WriteVarint(s, (ulong)value.Length);
        s.Write(value);
    }

    static void WriteVarint(Stream s, ulong v)
    {
        while (v >= 0x80) { s.WriteByte((byte)(v | 0x80)); v >>= 7; }
        s.WriteByte((byte)v);
    }
}
