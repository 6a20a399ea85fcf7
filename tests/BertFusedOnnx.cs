using System.Text;

namespace Superpipeline.Tests;

/// <summary>A small BERT encoder written as an ONNX file with the fused operators (LayerNormalization, Gelu, opset 20) and no pooler,
/// byte by byte in protobuf's wire format (onnx.proto's field numbers), so the import of exports other than MiniLM's can be checked
/// against ONNX Runtime.</summary>
static class BertFusedOnnx
{
    public const int Hidden = 8, Heads = 2, Inner = 12, Vocab = 50, Positions = 16, Types = 2, T = 5;

    sealed class Writer
    {
        readonly MemoryStream s = new();
        void Varint(ulong v)
        {
            while (v >= 0x80) { s.WriteByte((byte)(v | 0x80)); v >>= 7; }
            s.WriteByte((byte)v);
        }
        public Writer Int(int field, long v) { Varint((ulong)(field << 3)); Varint((ulong)v); return this; }
        public Writer Fixed32(int field, float v) { Varint((ulong)(field << 3 | 5)); s.Write(BitConverter.GetBytes(v)); return this; }
        public Writer Bytes(int field, byte[] b) { Varint((ulong)(field << 3 | 2)); Varint((ulong)b.Length); s.Write(b); return this; }
        public Writer Str(int field, string v) => Bytes(field, Encoding.UTF8.GetBytes(v));
        public Writer Msg(int field, Writer w) => Bytes(field, w.ToArray());
        public byte[] ToArray() => s.ToArray();
    }

    static Writer Tensor(string name, long[] dims, float[]? floats = null, long[]? longs = null)
    {
        var t = new Writer();
        foreach (var d in dims) t.Int(1, d);
        t.Int(2, floats is not null ? 1 : 7).Str(8, name);
        var raw = floats is not null ? floats.SelectMany(BitConverter.GetBytes).ToArray() : longs!.SelectMany(BitConverter.GetBytes).ToArray();
        return t.Bytes(9, raw);
    }

    static Writer ValueInfo(string name, int elem, params object[] dims)
    {
        var shape = new Writer();
        foreach (var d in dims) shape.Msg(1, d is string p ? new Writer().Str(2, p) : new Writer().Int(1, Convert.ToInt64(d)));
        return new Writer().Str(1, name).Msg(2, new Writer().Msg(1, new Writer().Int(1, elem).Msg(2, shape)));
    }

    /// <summary>Writes the graph to <paramref name="path"/> with weights drawn from <paramref name="seed"/>.</summary>
    public static void Write(string path, int seed)
    {
        var random = new Random(seed);
        float[] R(int n, double scale = 0.3) => [.. Enumerable.Range(0, n).Select(_ => (float)((random.NextDouble() * 2 - 1) * scale))];
        var graph = new Writer();
        int count = 0;
        void Init(string name, long[] dims, float[]? f = null, long[]? l = null) => graph.Msg(5, Tensor(name, dims, f, l));
        void Node(string op, string[] inputs, string output, Action<Writer>? attrs = null)
        {
            var n = new Writer();
            foreach (var i in inputs) n.Str(1, i);
            n.Str(2, output).Str(3, $"{op}_{count++}").Str(4, op);
            attrs?.Invoke(n);
            graph.Msg(1, n);
        }
        Writer IntsAttr(string name, long[] v)
        {
            var a = new Writer().Str(1, name);
            foreach (var x in v) a.Int(8, x);
            return a.Int(20, 7);
        }
        Init("word", [Vocab, Hidden], R(Vocab * Hidden));
        Init("type", [Types, Hidden], R(Types * Hidden));
        Init("pos", [Positions, Hidden], R(Positions * Hidden));
        Init("pos_ids", [1, T], l: [.. Enumerable.Range(0, T).Select(i => (long)i)]);
        Init("axes12", [2], l: [1, 2]);
        Init("one", [], [1f]);
        Init("minus", [], [-10000f]);
        Init("sqrt_d", [], [MathF.Sqrt(Hidden / Heads)]);
        Init("heads_shape", [4], l: [0, 0, Heads, Hidden / Heads]);
        Init("merged_shape", [3], l: [0, 0, Hidden]);
        void LayerNorm(string x, string name, string output)
        {
            Init($"{name}.w", [Hidden], [.. R(Hidden).Select(v => 1 + v)]);
            Init($"{name}.b", [Hidden], R(Hidden));
            Node("LayerNormalization", [x, $"{name}.w", $"{name}.b"], output,
                n => n.Msg(5, new Writer().Str(1, "epsilon").Fixed32(2, 1e-12f).Int(20, 1)).Msg(5, new Writer().Str(1, "axis").Int(3, -1).Int(20, 2)));
        }
        string Dense(string x, string name, int i, int o)
        {
            Init($"{name}.W", [i, o], R(i * o));
            Init($"{name}.b", [o], R(o));
            Node("MatMul", [x, $"{name}.W"], $"{name}.mm");
            Node("Add", [$"{name}.mm", $"{name}.b"], $"{name}.out");
            return $"{name}.out";
        }
        Node("Unsqueeze", ["attention_mask", "axes12"], "m4");
        Node("Cast", ["m4"], "mf", n => n.Msg(5, new Writer().Str(1, "to").Int(3, 1).Int(20, 2)));
        Node("Sub", ["one", "mf"], "inv");
        Node("Mul", ["inv", "minus"], "additive");
        Node("Gather", ["word", "input_ids"], "we");
        Node("Gather", ["type", "token_type_ids"], "te");
        Node("Add", ["we", "te"], "wt");
        Node("Gather", ["pos", "pos_ids"], "pe");
        Node("Add", ["wt", "pe"], "emb");
        LayerNorm("emb", "eln", "x");
        string Heads4(string v, long[] perm)
        {
            Node("Reshape", [v, "heads_shape"], $"{v}.r");
            Node("Transpose", [$"{v}.r"], $"{v}.t", n => n.Msg(5, IntsAttr("perm", perm)));
            return $"{v}.t";
        }
        string q = Heads4(Dense("x", "q", Hidden, Hidden), [0, 2, 1, 3]), k = Heads4(Dense("x", "k", Hidden, Hidden), [0, 2, 3, 1]);
        string v = Heads4(Dense("x", "v", Hidden, Hidden), [0, 2, 1, 3]);
        Node("MatMul", [q, k], "scores");
        Node("Div", ["scores", "sqrt_d"], "scaled");
        Node("Add", ["scaled", "additive"], "masked");
        Node("Softmax", ["masked"], "probs", n => n.Msg(5, new Writer().Str(1, "axis").Int(3, -1).Int(20, 2)));
        Node("MatMul", ["probs", v], "ctx");
        Node("Transpose", ["ctx"], "ctx.t", n => n.Msg(5, IntsAttr("perm", [0, 2, 1, 3])));
        Node("Reshape", ["ctx.t", "merged_shape"], "ctx.m");
        Node("Add", [Dense("ctx.m", "ao", Hidden, Hidden), "x"], "r1");
        LayerNorm("r1", "aln", "h");
        Node("Gelu", [Dense("h", "up", Hidden, Inner)], "g");
        Node("Add", [Dense("g", "down", Inner, Hidden), "h"], "r2");
        LayerNorm("r2", "oln", "last_hidden_state");
        graph.Str(2, "tiny-bert");
        foreach (var input in new[] { "input_ids", "attention_mask", "token_type_ids" }) graph.Msg(11, ValueInfo(input, 7, "batch", "sequence"));
        graph.Msg(12, ValueInfo("last_hidden_state", 1, "batch", "sequence", Hidden));
        var model = new Writer().Int(1, 9).Str(2, "test").Msg(7, graph).Msg(8, new Writer().Str(1, "").Int(2, 20));
        File.WriteAllBytes(path, model.ToArray());
    }
}
