using System.Globalization;
using Microsoft.ML.Tokenizers;
using Superpipeline.Contracts;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Policy;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Engine.Models;

/// <summary>The shape of a BERT encoder (transformers' BertModel: post-LN blocks, exact erf gelu, absolute positions, token types).
/// An ONNX import reads it from the graph (<c>Onnx.BertOnnx</c>); there is no config.json reader yet.</summary>
/// <param name="MaskValue">What a padding position adds to the attention scores: modeling_bert.py's (1 − mask) · torch.finfo(float32).min,
/// or the constant an export baked in (older transformers: −10000).</param>
/// <param name="Pooler">Whether the model has BertPooler (dense + tanh on the [CLS] position).</param>
public sealed record BertConfig(int Hidden, int Layers, int Heads, int Intermediate, int Vocab, int MaxPositions, int TypeVocab = 2,
    double LayerNormEps = 1e-12, float MaskValue = float.MinValue, bool Pooler = true)
{
    public const string ModelType = "bert";
    public int HeadDim => Hidden / Heads;

    /// <summary>Token ids ride between layers as float32 channels, which hold integers exactly below 2^24.</summary>
    public const int MaxVocab = 1 << 24;

    /// <summary>Parameters of one encoder block (attention, its output, intermediate, output, two LayerNorms).</summary>
    public long BlockParameters => 4L * Hidden * Hidden + 4L * Hidden + 2L * Hidden * Intermediate + Intermediate + Hidden + 4L * Hidden;

    /// <summary>The word embedding table is split into row shards, each a layer, so that no shard is larger than a block: as few
    /// shards as that allows (⌈vocab · hidden / block parameters⌉), of equal rows (⌈vocab / shards⌉; the last one takes the rest).</summary>
    public int WordShards => (int)Math.Max(1, (Vocab * (long)Hidden + BlockParameters - 1) / BlockParameters);
    public int WordShardRows => (Vocab + WordShards - 1) / WordShards;

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first bad field (BertConfig's own names for them).</summary>
    public void Validate()
    {
        void Positive(int value, string field)
        {
            if (value < 1) throw new ArgumentException($"bert: {field} must be at least 1 (got {value})");
        }
        Positive(Hidden, "hidden"); Positive(Layers, "layers"); Positive(Heads, "heads"); Positive(Intermediate, "intermediate");
        Positive(Vocab, "vocab"); Positive(MaxPositions, "max positions"); Positive(TypeVocab, "token types");
        if (Hidden % Heads != 0) throw new ArgumentException($"bert: hidden ({Hidden}) must be a multiple of the heads ({Heads})");
        if (Vocab > MaxVocab || TypeVocab > MaxVocab)
            throw new ArgumentException($"bert: vocab {Vocab} exceeds {MaxVocab}, the ids float32 activations carry exactly");
        if (!(LayerNormEps > 0)) throw new ArgumentException($"bert: layer norm eps must be positive (got {LayerNormEps})");
    }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"bert(layers {Layers}, hidden {Hidden}, heads {Heads}, intermediate {Intermediate}, vocab {Vocab}, positions {MaxPositions}, " +
        $"types {TypeVocab}, eps {LayerNormEps}, pooler {(Pooler ? "yes" : "no")})");
}

/// <summary>The BERT encoder family (transformers' BertModel) as a flat list of layers over one activation:
/// <list type="number">
/// <item>word-embedding shards <c>embed.words.S</c> (<see cref="BertWordShard"/>): the input int64 [B, 3, T] (input_ids, attention_mask,
/// token_type_ids stacked on dim 1) becomes float32 [B, T, H + 3]: the word embedding (each shard writes the rows of the ids in its
/// range), then the id, the mask and the token type as three trailing channels;</item>
/// <item><c>embed</c> (<see cref="BertEmbeddings"/>): + token type + position embeddings, LayerNorm → [B, T, H + 1], the last channel
/// the attention mask (0 or 1), which every block carries on;</item>
/// <item><c>block.N</c> (<see cref="BertBlock"/>), one per encoder layer → [B, T, H + 1];</item>
/// <item><c>pool</c> (<see cref="BertHead"/>) → [B, T + 2, H]: rows [0, T) the last hidden state, row T the sentence embedding
/// (sentence-transformers' mean pooling over the mask, then L2 normalisation), row T + 1 BertPooler's tanh(dense(h[CLS])) (zeros when
/// the model has no pooler). One pass gives all three; <see cref="Unpack"/> splits them.</item></list>
/// Parameter names are Hugging Face BertModel's (<see cref="BertNames"/>).</summary>
public static class Bert
{
    /// <summary>The model over the token ids in <paramref name="input"/> (int64 [B, 3, T], see <see cref="ReadInput"/>), or over seeded
    /// ids [<paramref name="batch"/>, 3, <paramref name="sequence"/>] when it is null (row r keeps T − r mod T real tokens, the rest padding).</summary>
    public static LayeredModel Create(string name, BertConfig config, int batch, int sequence, TensorPayload? input = null)
    {
        config.Validate();
        if (input is not null) (batch, sequence) = ((int)input.Shape[0], (int)input.Shape[2]);
        if (batch < 1) throw new FieldException(FieldException.Batch, $"must be at least 1 (got {batch})");
        if (sequence < 1 || sequence > config.MaxPositions)
            throw new FieldException(FieldException.Sequence, $"({sequence}) must be in [1, {config.MaxPositions}] (the model's positions)");
        var layers = new List<Layer>();
        for (int s = 0; s < config.WordShards; s++) layers.Add(new BertWordShard(layers.Count, s, config));
        layers.Add(new BertEmbeddings(layers.Count, config));
        for (int b = 0; b < config.Layers; b++) layers.Add(new BertBlock(layers.Count, b, config));
        layers.Add(new BertHead(layers.Count, config));
        return new LayeredModel(name, layers, [batch, 3, sequence], ScalarType.Int64, seed =>
        {
            if (input is not null) return TensorPayloads.ToTensor(input);
            using var g = new Generator(unchecked((ulong)seed ^ 0xbe27_5eedUL));
            var ids = randint(config.Vocab, [batch, sequence], dtype: ScalarType.Int64, generator: g);
            var lengths = arange(batch, dtype: ScalarType.Int64).remainder(sequence).neg().add(sequence).unsqueeze(1);
            var mask = arange(sequence, dtype: ScalarType.Int64).unsqueeze(0).lt(lengths).to(ScalarType.Int64);
            return stack([ids * mask, mask, zeros_like(ids)], 1);
        });
    }

    /// <summary>Reads the model input from a .npy file: int64 [batch, 3, seq], input_ids, attention_mask (0 or 1) and token_type_ids.
    /// Refusals are one line naming the file.</summary>
    public static TensorPayload ReadInput(string path, BertConfig c)
    {
        if (!File.Exists(path)) throw new ArgumentException($"{path}: not found");
        var (descr, shape, data) = Npy.Read(path);
        if (descr != "<i8") throw new ArgumentException($"{path}: BERT inputs must be int64 (<i8), got '{descr}'");
        if (shape.Length != 3 || shape[0] < 1 || shape[1] != 3 || shape[2] < 1)
            throw new ArgumentException($"{path}: BERT inputs must have shape [batch, 3, seq] (ids, mask, types), got [{string.Join(", ", shape)}]");
        if (shape[2] > c.MaxPositions) throw new ArgumentException($"{path}: sequence length {shape[2]} exceeds the model's {c.MaxPositions} positions");
        if (data.Length != shape[0] * 3 * shape[2] * sizeof(long))
            throw new ArgumentException($"{path}: data is {data.Length} bytes, not {Shape(shape)} int64");
        long t = shape[2];
        for (long i = 0; i < data.Length / sizeof(long); i++)
        {
            long value = BitConverter.ToInt64(data, (int)(i * sizeof(long)));
            var (what, limit) = (i / t % 3) switch { 0 => ("token id", (long)c.Vocab), 1 => ("attention mask", 2L), _ => ("token type", (long)c.TypeVocab) };
            if (value < 0 || value >= limit)
                throw new ArgumentException($"{path}: {what} {value} at row {i / t / 3}, position {i % t} is outside [0, {limit})");
        }
        return new TensorPayload("Int64", [.. shape], [.. data]);
    }

    /// <summary>The three outputs of a pass's [B, T + 2, H]: the last hidden state [B, T, H], the sentence embeddings [B, H] (mean
    /// pooled, L2 normalised) and the tanh pooler [B, H]. Views of <paramref name="output"/>.</summary>
    public static (Tensor Hidden, Tensor Embeddings, Tensor Pooler) Unpack(Tensor output)
    {
        long t = output.shape[1] - 2;
        return (output.narrow(1, 0, t), output.select(1, t), output.select(1, t + 1));
    }

    static string Shape(long[] shape) => $"[{string.Join(", ", shape)}]";

    internal static void CheckActivations(long[] input, BertConfig c, int channels, string layer)
    {
        if (input.Length != 3 || input[2] != c.Hidden + channels || input[1] > c.MaxPositions)
            throw new ArgumentException($"{layer}: expected activations [batch, ≤{c.MaxPositions}, {c.Hidden + channels}], got {Shape(input)}");
    }

    internal static IReadOnlyDictionary<string, Tensor> Seeded(IReadOnlyList<ParamSpec> parameters, Generator g) => parameters.ToDictionary(p => p.Name,
        p => p.Name.Contains("LayerNorm", StringComparison.Ordinal)
            ? (p.Name.EndsWith(".weight", StringComparison.Ordinal) ? Gpt2.NormWeight(g, p.Shape[0]) : Gpt2.NormBias(g, p.Shape[0]))
            : Gpt2.Normal(g, [.. p.Shape]));
}

/// <summary>Hugging Face BertModel's tensor names (no "bert." prefix, as BertModel saves them and ONNX exports keep them), plus the
/// name of a word-embedding row shard.</summary>
public static class BertNames
{
    public const string Words = "embeddings.word_embeddings.weight";
    public const string Positions = "embeddings.position_embeddings.weight";
    public const string Types = "embeddings.token_type_embeddings.weight";
    public const string EmbeddingNormWeight = "embeddings.LayerNorm.weight", EmbeddingNormBias = "embeddings.LayerNorm.bias";
    public const string PoolerWeight = "pooler.dense.weight", PoolerBias = "pooler.dense.bias";

    /// <summary>Rows [start, end) of the word embedding table: "embeddings.word_embeddings.weight[start:end]".</summary>
    public static string WordShard(long start, long end) => $"{Words}[{start}:{end}]";

    public static string Block(int i, string tensor) => $"encoder.layer.{i}.{tensor}";

    /// <summary>A block's tensors (Linear weights [out, in]), with their shapes.</summary>
    public static IReadOnlyList<ParamSpec> BlockParameters(int i, BertConfig c)
    {
        long h = c.Hidden, f = c.Intermediate;
        return
        [
            new(Block(i, "attention.self.query.weight"), h, h), new(Block(i, "attention.self.query.bias"), h),
            new(Block(i, "attention.self.key.weight"), h, h), new(Block(i, "attention.self.key.bias"), h),
            new(Block(i, "attention.self.value.weight"), h, h), new(Block(i, "attention.self.value.bias"), h),
            new(Block(i, "attention.output.dense.weight"), h, h), new(Block(i, "attention.output.dense.bias"), h),
            new(Block(i, "attention.output.LayerNorm.weight"), h), new(Block(i, "attention.output.LayerNorm.bias"), h),
            new(Block(i, "intermediate.dense.weight"), f, h), new(Block(i, "intermediate.dense.bias"), f),
            new(Block(i, "output.dense.weight"), h, f), new(Block(i, "output.dense.bias"), h),
            new(Block(i, "output.LayerNorm.weight"), h), new(Block(i, "output.LayerNorm.bias"), h),
        ];
    }
}

/// <summary>Rows [Start, Start + Rows) of the word embedding table. Shard 0 takes the model input int64 [B, 3, T] and gives float32
/// [B, T, H + 3] (zeros, then id, mask, type); every shard writes word_embeddings[id] at the positions whose id is in its range (each
/// position's row is written by exactly one shard, so the result is the table's row bit for bit, whatever the sharding).</summary>
public sealed class BertWordShard : Layer
{
    readonly BertConfig c;

    public BertWordShard(int index, int shard, BertConfig config) : base(index, $"embed.words.{shard}")
    {
        c = config;
        Shard = shard;
        Start = (long)shard * config.WordShardRows;
        Rows = Math.Min(config.WordShardRows, config.Vocab - Start);
        Parameters = [new(BertNames.WordShard(Start, Start + Rows), Rows, config.Hidden)];
    }

    public int Shard { get; }
    public long Start { get; }
    public long Rows { get; }
    public override IReadOnlyList<ParamSpec> Parameters { get; }
    public override long? MaxPositions => c.MaxPositions;

    public override long[] OutputShape(long[] input)
    {
        if (Shard == 0)
        {
            if (input.Length != 3 || input[1] != 3 || input[2] > c.MaxPositions)
                throw new ArgumentException($"{Name}: expected ids, mask and types int64 [batch, 3, ≤{c.MaxPositions}], got [{string.Join(", ", input)}]");
            return [input[0], input[2], c.Hidden + 3];
        }
        Bert.CheckActivations(input, c, 3, Name);
        return input;
    }

    public override double Flops(long[] input) => (double)input[0] * (Shard == 0 ? input[2] : input[1]) * c.Hidden;

    /// <summary>N = B·T tokens, H hidden. Shard 0: the side channels as floats (3·N) and the zeros (N·H); every shard: the ids (N int64),
    /// the in-range test (three N-element bools, counted at 4 bytes as a storage probe sees them, and one N-float temporary), the local
    /// ids (2·N int64), the gathered rows (N·H) and the written hidden state (N·H).</summary>
    public override long WorkspaceBytes(long[] input)
    {
        long n = input[0] * (Shard == 0 ? input[2] : input[1]), h = c.Hidden;
        long floats = 2 * n * h + n + 3 * n + (Shard == 0 ? n * h + 3 * n : 0);
        return floats * sizeof(float) + 3 * n * sizeof(long);
    }

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        Tensor hidden, side;
        if (Shard == 0)
        {
            side = x.transpose(1, 2).to(ScalarType.Float32);
            hidden = zeros([x.shape[0], x.shape[2], c.Hidden], device: x.device);
        }
        else
        {
            hidden = x.narrow(-1, 0, c.Hidden);
            side = x.narrow(-1, c.Hidden, 3);
        }
        long b = hidden.shape[0], t = hidden.shape[1];
        var ids = side.select(-1, 0).to(ScalarType.Int64);
        var inRange = ids.ge(Start).logical_and(ids.lt(Start + Rows));
        var local = (ids - Start).clamp(0, Rows - 1);
        var rows = w[Parameters[0].Name].index_select(0, local.reshape(-1)).view(b, t, c.Hidden);
        return cat([where(inRange.unsqueeze(-1), rows, hidden), side], -1);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => Bert.Seeded(Parameters, g);
}

/// <summary>BertEmbeddings after the word rows: (words + token_type_embeddings[type]) + position_embeddings[0..T), LayerNorm (the order
/// modeling_bert.py adds them in): [B, T, H + 3] → [B, T, H + 1], the mask carried as the last channel.</summary>
public sealed class BertEmbeddings(int index, BertConfig c) : Layer(index, "embed")
{
    public override IReadOnlyList<ParamSpec> Parameters { get; } =
    [
        new(BertNames.Positions, c.MaxPositions, c.Hidden), new(BertNames.Types, c.TypeVocab, c.Hidden),
        new(BertNames.EmbeddingNormWeight, c.Hidden), new(BertNames.EmbeddingNormBias, c.Hidden),
    ];

    public override long? MaxPositions => c.MaxPositions;

    public override long[] OutputShape(long[] input)
    {
        Bert.CheckActivations(input, c, 3, Name);
        return [input[0], input[1], c.Hidden + 1];
    }

    public override double Flops(long[] input) => 10.0 * input[0] * input[1] * c.Hidden;

    /// <summary>N = B·T tokens: the types (N int64), their rows (N·H), the two sums (2·N·H), the LayerNorm (N·H).</summary>
    public override long WorkspaceBytes(long[] input)
    {
        long n = input[0] * input[1];
        return 4 * n * c.Hidden * sizeof(float) + n * sizeof(long);
    }

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        long b = x.shape[0], t = x.shape[1];
        var words = x.narrow(-1, 0, c.Hidden);
        var types = x.select(-1, c.Hidden + 2).to(ScalarType.Int64);
        var e = words + w[BertNames.Types].index_select(0, types.reshape(-1)).view(b, t, c.Hidden);
        e = e + w[BertNames.Positions].narrow(0, 0, t);
        var normed = F.layer_norm(e, [c.Hidden], w[BertNames.EmbeddingNormWeight], w[BertNames.EmbeddingNormBias], c.LayerNormEps);
        return cat([normed, x.narrow(-1, c.Hidden + 1, 1)], -1);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => Bert.Seeded(Parameters, g);
}

/// <summary>One BertLayer, post-LN: h = LN(x + dense(softmax(q·kᵀ / √d + mask) · v)), out = LN(h + dense(gelu_erf(dense(h)))), the additive
/// mask (1 − m) · MaskValue built from the mask channel m: [B, T, H + 1] → [B, T, H + 1].</summary>
public sealed class BertBlock(int index, int block, BertConfig c) : Layer(index, $"block.{block}")
{
    public int Block { get; } = block;

    public override IReadOnlyList<ParamSpec> Parameters { get; } = BertNames.BlockParameters(block, c);

    public override long[] OutputShape(long[] input)
    {
        Bert.CheckActivations(input, c, 1, Name);
        return input;
    }

    public override double Flops(long[] input)
    {
        double tokens = input[0] * input[1], h = c.Hidden, t = input[1];
        return 2 * tokens * (4 * h * h + 2 * h * c.Intermediate) + 2 * 2 * tokens * t * h;
    }

    /// <summary>Counted from <see cref="Forward"/>: N = B·T tokens, H hidden, F intermediate, A = B·heads·T·T. The additive mask (1 − m,
    /// its product and its broadcast view's sum: 3·B·T), q, k, v (3·N·H), the scores, scaled, masked and softmaxed (4·A), the context
    /// (N·H) and its merged copy (N·H), the attention output, residual and LayerNorm (3·N·H), the intermediate and its gelu (2·N·F), the
    /// output dense, residual and LayerNorm (3·N·H); the concatenation with the mask is the output. tests/BertOnnxSpec.cs checks it
    /// against the storages the forward's scope holds.</summary>
    public override long WorkspaceBytes(long[] input)
    {
        long b = input[0], t = input[1], n = b * t, a = b * c.Heads * t * t;
        return (3 * b * t + 11 * n * c.Hidden + 2 * n * c.Intermediate + 4 * a) * sizeof(float);
    }

    string N(string tensor) => BertNames.Block(Block, tensor);

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor input)
    {
        long b = input.shape[0], t = input.shape[1];
        int heads = c.Heads, d = c.HeadDim, hidden = c.Hidden;
        var x = input.narrow(-1, 0, hidden);
        var m = input.narrow(-1, hidden, 1);
        var mask = (1.0f - m.view(b, 1, 1, t)) * c.MaskValue;
        Tensor Heads(Tensor y) => y.view(b, t, heads, d).transpose(1, 2);
        var q = Heads(F.linear(x, w[N("attention.self.query.weight")], w[N("attention.self.query.bias")]));
        var k = Heads(F.linear(x, w[N("attention.self.key.weight")], w[N("attention.self.key.bias")]));
        var v = Heads(F.linear(x, w[N("attention.self.value.weight")], w[N("attention.self.value.bias")]));
        var scores = matmul(q, k.transpose(-1, -2)).div(Math.Sqrt(d)).add(mask);
        var context = matmul(scores.softmax(-1), v).transpose(1, 2).reshape(b, t, hidden);
        var attended = F.linear(context, w[N("attention.output.dense.weight")], w[N("attention.output.dense.bias")]) + x;
        var h = F.layer_norm(attended, [hidden], w[N("attention.output.LayerNorm.weight")], w[N("attention.output.LayerNorm.bias")], c.LayerNormEps);
        var inner = F.gelu(F.linear(h, w[N("intermediate.dense.weight")], w[N("intermediate.dense.bias")]));
        var output = F.linear(inner, w[N("output.dense.weight")], w[N("output.dense.bias")]) + h;
        var normed = F.layer_norm(output, [hidden], w[N("output.LayerNorm.weight")], w[N("output.LayerNorm.bias")], c.LayerNormEps);
        return cat([normed, m], -1);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => Bert.Seeded(Parameters, g);
}

/// <summary>The outputs: [B, T, H + 1] → [B, T + 2, H]: the last hidden state (rows [0, T)), the sentence embedding (row T:
/// sentence-transformers' Pooling(mean) over the mask, sum(h · m) / max(sum(m), 1e-9), then Normalize, h / max(‖h‖₂, 1e-12)) and
/// BertPooler's tanh(dense(h[:, 0])) (row T + 1; zeros when the model has no pooler). <see cref="Bert.Unpack"/> splits them.</summary>
public sealed class BertHead(int index, BertConfig c) : Layer(index, "pool")
{
    public override IReadOnlyList<ParamSpec> Parameters { get; } =
        c.Pooler ? [new(BertNames.PoolerWeight, c.Hidden, c.Hidden), new(BertNames.PoolerBias, c.Hidden)] : [];


    public override long[] OutputShape(long[] input)
    {
        Bert.CheckActivations(input, c, 1, Name);
        return [input[0], input[1] + 2, c.Hidden];
    }

    public override double Flops(long[] input) => 3.0 * input[0] * input[1] * c.Hidden + 2.0 * input[0] * c.Hidden * c.Hidden;

    /// <summary>N = B·T tokens: the masked hidden state (N·H), its sum, the mean and the normalised rows (3·B·H), the mask's sum and
    /// its clamp (2·B), the pooler's dense and tanh (2·B·H; without a pooler, its zeros B·H).</summary>
    public override long WorkspaceBytes(long[] input)
    {
        long n = input[0] * input[1], b = input[0], h = c.Hidden;
        return (n * h + 3 * b * h + 2 * b + (c.Pooler ? 2 : 1) * b * h) * sizeof(float);
    }

    public override Tensor Forward(IReadOnlyDictionary<string, Tensor> w, Tensor x)
    {
        long b = x.shape[0];
        var hidden = x.narrow(-1, 0, c.Hidden);
        var m = x.narrow(-1, c.Hidden, 1);
        var mean = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9);
        var embedding = F.normalize(mean, p: 2, dim: 1, eps: 1e-12);
        var pooled = c.Pooler
            ? F.linear(hidden.select(1, 0), w[BertNames.PoolerWeight], w[BertNames.PoolerBias]).tanh()
            : zeros([b, c.Hidden], device: x.device);
        return cat([hidden, embedding.unsqueeze(1), pooled.unsqueeze(1)], 1);
    }

    public override IReadOnlyDictionary<string, Tensor> Initialize(Generator g) => Bert.Seeded(Parameters, g);
}

/// <summary>Texts to BERT inputs through Microsoft.ML.Tokenizers' <see cref="BertTokenizer"/> (WordPiece from a vocab.txt, lower-cased,
/// [CLS] text [SEP]), padded with [PAD] to the longest (mask 0 there), token types 0.</summary>
public static class BertText
{
    public static BertTokenizer Load(string vocabPath)
    {
        if (!File.Exists(vocabPath)) throw new ArgumentException($"{vocabPath}: vocabulary not found");
        return BertTokenizer.Create(vocabPath, new BertOptions { LowerCaseBeforeTokenization = true });
    }

    /// <summary>int64 [N, 3, T] for <paramref name="texts"/>, T the longest text's tokens with [CLS] and [SEP]. A text longer than the
    /// model's <paramref name="maxPositions"/> is refused (one line naming it by index), never truncated.</summary>
    public static TensorPayload Encode(BertTokenizer tokenizer, IReadOnlyList<string> texts, int maxPositions)
    {
        if (texts.Count == 0) throw new ArgumentException("no text to embed");
        var rows = new List<IReadOnlyList<int>>();
        for (int i = 0; i < texts.Count; i++)
        {
            var ids = tokenizer.EncodeToIds(texts[i], addSpecialTokens: true, considerPreTokenization: true, considerNormalization: true);
            if (ids.Count > maxPositions)
                throw new ArgumentException($"text {i} is {ids.Count} tokens with [CLS] and [SEP]; the model takes at most {maxPositions} positions");
            rows.Add(ids);
        }
        int t = rows.Max(r => r.Count);
        var data = new long[texts.Count * 3 * t];
        for (int i = 0; i < rows.Count; i++)
            for (int j = 0; j < t; j++)
            {
                bool real = j < rows[i].Count;
                data[(i * 3 + 0) * t + j] = real ? rows[i][j] : tokenizer.PaddingTokenId;
                data[(i * 3 + 1) * t + j] = real ? 1 : 0;
            }
        var bytes = new byte[data.Length * sizeof(long)];
        Buffer.BlockCopy(data, 0, bytes, 0, bytes.Length);
        return new TensorPayload("Int64", [texts.Count, 3, t], [.. bytes]);
    }
}
