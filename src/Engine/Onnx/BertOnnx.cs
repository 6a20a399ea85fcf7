using Superpipeline.Contracts;
using Superpipeline.Engine.Models;

namespace Superpipeline.Engine.Onnx;

/// <summary>The ONNX family "bert": a BertModel export (inputs input_ids, attention_mask, token_type_ids int64 [batch, sequence]) mapped
/// onto <see cref="Bert"/>'s layers by following the graph from input_ids: the three embedding Gathers and their Adds, LayerNorm (the fused
/// LayerNormalization op or its ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add form), then per block the Q/K/V MatMul + Add with their
/// Reshape/Transpose to heads (the heads from the Reshape's shape), scores MatMul, Div by √d (or Mul by 1/√d), the additive mask (traced
/// back to attention_mask through Unsqueeze/Cast, its (1 − mask) · value constant read), Softmax, the context MatMul/Transpose/Reshape,
/// output dense, residual Add, LayerNorm, intermediate MatMul + Add, gelu (a Gelu op or the erf form Div/Erf/Add/Mul/Mul), output
/// MatMul + Add, residual Add, LayerNorm; then optionally BertPooler (Gather of position 0, Gemm or MatMul + Add, Tanh). Weights of a
/// MatMul ([in, out]) are read transposed into Linear's [out, in]. Model input: int64 [batch, 3, seq] in a .npy (<see cref="Bert.ReadInput"/>).</summary>
public sealed class BertOnnx : IOnnxFamily
{
    public string Name => BertConfig.ModelType;

    public bool Claims(OnnxGraph graph) =>
        graph.Inputs.Any(i => i.Name == "input_ids" && i.ElementType == "int64") && graph.Inputs.Any(i => i.Name == "attention_mask");

    public OnnxImported Import(OnnxGraph graph)
    {
        var (config, table) = new Walk(graph).Run();
        return new OnnxImported(Name, table, spec => Bert.Create(Name, config, spec.Batch, spec.Sequence,
            spec.Input is null ? null : Bert.ReadInput(spec.Input, config)));
    }

    /// <summary>The imported configuration alone (what <c>embed</c> needs to tokenize before a model is built).</summary>
    public static BertConfig ConfigOf(OnnxGraph graph) => new Walk(graph).Run().Config;

    /// <summary>One walk over a graph: the nodes it has matched, the parameters found, the configuration read.</summary>
    sealed class Walk(OnnxGraph g)
    {
        readonly Dictionary<string, OnnxParam> table = new(StringComparer.Ordinal);
        string ids = "", mask = "", types = "", wordTable = "";
        int hidden, heads = -1, vocab, intermediate = -1, positions, typeVocab;
        double eps = -1;
        float? maskValue;
        bool pooler;

        public (BertConfig Config, IReadOnlyDictionary<string, OnnxParam> Table) Run()
        {
            ids = Input("input_ids");
            mask = Input("attention_mask");
            types = g.Inputs.Any(i => i.Name == "token_type_ids") ? "token_type_ids" : "";
            string x = Embeddings();
            int layers = 0;
            while (g.Consumers(x).Count(n => n.OpType == "MatMul") == 3) x = Block(layers++, x);
            if (layers == 0) throw At(FirstConsumer(x), "expected the first encoder block's Q, K and V MatMuls on the embeddings' LayerNorm");
            Head(x);
            if (heads < 0 || maskValue is null) throw new OnnxException($"{g.File}: no attention block found");
            var config = new BertConfig(hidden, layers, heads, intermediate, vocab, positions, typeVocab, eps, maskValue.Value, pooler);
            try
            {
                config.Validate();
            }
            catch (ArgumentException e)
            {
                throw new OnnxException($"{g.File}: {e.Message}");
            }
            for (int s = 0; s < config.WordShards; s++)
            {
                long start = (long)s * config.WordShardRows, rows = Math.Min(config.WordShardRows, config.Vocab - start);
                table[BertNames.WordShard(start, start + rows)] = new OnnxParam(wordTable, RowStart: start, Rows: rows);
            }
            return (config, table);
        }

        string Input(string name)
        {
            var input = g.Inputs.FirstOrDefault(i => i.Name == name);
            if (input is null && g.Inputs.Select(i => g.Consumers(i.Name).FirstOrDefault()).FirstOrDefault(n => n is not null) is { } first)
                throw At(first, $"expected a BERT encoder's input '{name}' (graph inputs: {string.Join(", ", g.Inputs.Select(i => i.Name))})");
            if (input is null) throw new OnnxException($"{g.File}: no graph input '{name}'; not a BERT encoder");
            if (input.ElementType != "int64") throw new OnnxException($"{g.File}: input '{name}' is {input.ElementType}, not int64");
            return name;
        }

        Exception At(OnnxNode node, string why) => OnnxException.AtNode(g, node, why);

        OnnxNode FirstConsumer(string value) => g.Consumers(value).FirstOrDefault() ?? g.Producer(value)
            ?? throw new OnnxException($"{g.File}: '{value}' is used by no node");

        /// <summary>The one consumer of <paramref name="value"/> among <paramref name="ops"/> (others, such as Shape, are looked past); at
        /// the first consumer when there is not exactly one.</summary>
        OnnxNode Next(string value, string what, params string[] ops)
        {
            var found = g.Consumers(value).Where(n => ops.Contains(n.OpType)).ToArray();
            if (found.Length == 1) return found[0];
            var other = g.Consumers(value).FirstOrDefault(n => n.OpType != "Shape") ?? FirstConsumer(value);
            throw At(other, $"expected {what} ({string.Join(" or ", ops)}) after '{value}', found {found.Length}");
        }

        /// <summary>The input of binary <paramref name="node"/> that is not <paramref name="value"/>.</summary>
        string Other(OnnxNode node, string value)
        {
            if (node.Inputs.Count != 2) throw At(node, $"expected two inputs, got {node.Inputs.Count}");
            if (node.Inputs[0] == value) return node.Inputs[1];
            if (node.Inputs[1] == value) return node.Inputs[0];
            throw At(node, $"expected '{value}' as an input");
        }

        float? Scalar(string value)
        {
            if (!g.IsConstant(value) || g.ConstantShape(value).Aggregate(1L, (a, d) => a * d) != 1) return null;
            try
            {
                return g.Floats(value)[0];
            }
            catch (OnnxException)
            {
                return null;
            }
        }

        float ScalarOf(OnnxNode node, string value, string what) =>
            Scalar(Other(node, value)) ?? throw At(node, $"expected {what} as a float constant");

        long[] Shape(OnnxNode node, string value, int rank, string what)
        {
            if (!g.IsConstant(value)) throw At(node, $"expected {what} as a constant, got '{value}'");
            var shape = g.ConstantShape(value);
            if (shape.Length != rank) throw At(node, $"{what} '{value}' is [{string.Join(", ", shape)}], expected rank {rank}");
            return shape;
        }

        static bool Near(double a, double b) => Math.Abs(a - b) <= 1e-4 * Math.Abs(b);

        // ---- embeddings ----

        string Embeddings()
        {
            var gather = g.Consumers(ids).Where(n => n.OpType != "Shape").ToArray();
            if (gather.Length != 1 || gather[0].OpType != "Gather" || gather[0].Inputs[1] != ids)
                throw At(gather.FirstOrDefault() ?? FirstConsumer(ids), "expected input_ids to feed one Gather of the word embeddings");
            wordTable = gather[0].Inputs[0];
            var shape = Shape(gather[0], wordTable, 2, "the word embedding table");
            (vocab, hidden) = ((int)shape[0], (int)shape[1]);
            string x = gather[0].Outputs[0];
            string positionTable = "", typeTable = "";
            while (true)
            {
                if (g.Consumers(x).Where(n => n.OpType != "Shape").ToArray() is not [{ OpType: "Add" } add] || Scalar(Other(add, x)) is not null) break;
                var other = g.Producer(Other(add, x));
                if (other is null || other.OpType != "Gather" || !g.IsConstant(other.Inputs[0]) || other.Int("axis", 0) != 0)
                    throw At(other ?? add, "expected a Gather of a position or token type embedding table");
                var t = Shape(other, other.Inputs[0], 2, "an embedding table");
                if (t[1] != hidden) throw At(other, $"embedding table '{other.Inputs[0]}' is {t[1]} wide, the word embeddings {hidden}");
                if (other.Inputs[1] == types && types.Length > 0) (typeTable, typeVocab) = (other.Inputs[0], (int)t[0]);
                else if (positionTable.Length == 0 && !DependsOnInput(other.Inputs[1])) (positionTable, positions) = (other.Inputs[0], (int)t[0]);
                else throw At(other, "expected the token type Gather (of token_type_ids) or the position Gather (of position ids)");
                x = add.Outputs[0];
            }
            if (positionTable.Length == 0) throw At(FirstConsumer(x), "no position embedding Gather was added before the LayerNorm");
            if (typeTable.Length == 0) throw At(FirstConsumer(x), "no token type embedding Gather (of token_type_ids) was added before the LayerNorm");
            table[BertNames.Positions] = new(positionTable);
            table[BertNames.Types] = new(typeTable);
            return LayerNorm(x, BertNames.EmbeddingNormWeight, BertNames.EmbeddingNormBias);
        }

        /// <summary>True when <paramref name="value"/> is computed from input_ids' values (not only their shape) or is a graph input.</summary>
        bool DependsOnInput(string value)
        {
            var seen = new HashSet<string>();
            var stack = new Stack<string>([value]);
            while (stack.Count > 0)
            {
                string v = stack.Pop();
                if (!seen.Add(v)) continue;
                if (g.Inputs.Any(i => i.Name == v)) return true;
                if (g.Producer(v) is { OpType: not "Shape" } p) foreach (var i in p.Inputs.Where(i => i.Length > 0)) stack.Push(i);
            }
            return false;
        }

        // ---- LayerNorm: the fused op or its decomposition ----

        string LayerNorm(string x, string weightName, string biasName)
        {
            var first = Next(x, "a LayerNorm", "LayerNormalization", "ReduceMean");
            string weight, bias, output;
            double epsilon;
            if (first.OpType == "LayerNormalization")
            {
                if (first.Int("axis", -1) is not (-1 or 2)) throw At(first, $"normalises axis {first.Int("axis", -1)}, not the last");
                if (first.Inputs.Count < 3 || first.Inputs[2].Length == 0) throw At(first, "expected a bias input");
                (weight, bias, epsilon, output) = (first.Inputs[1], first.Inputs[2], first.Float("epsilon", 1e-5f), first.Outputs[0]);
            }
            else
            {
                CheckLastAxis(first);
                var sub = Next(first.Outputs[0], "x − mean", "Sub");
                if (sub.Inputs[0] != x) throw At(sub, "expected x − mean");
                string centred = sub.Outputs[0];
                var pow = Next(centred, "the square", "Pow");
                if (Scalar(pow.Inputs[1]) != 2f) throw At(pow, "expected the power 2");
                var variance = Next(pow.Outputs[0], "the variance", "ReduceMean");
                CheckLastAxis(variance);
                var addEps = Next(variance.Outputs[0], "variance + eps", "Add");
                epsilon = ScalarOf(addEps, variance.Outputs[0], "eps");
                var sqrt = Next(addEps.Outputs[0], "the square root", "Sqrt");
                var div = Next(sqrt.Outputs[0], "the division", "Div");
                if (div.Inputs[0] != centred) throw At(div, "expected (x − mean) / sqrt(variance + eps)");
                var mul = Next(div.Outputs[0], "the LayerNorm weight", "Mul");
                weight = Other(mul, div.Outputs[0]);
                var add = Next(mul.Outputs[0], "the LayerNorm bias", "Add");
                bias = Other(add, mul.Outputs[0]);
                output = add.Outputs[0];
                first = add;
            }
            foreach (var v in new[] { weight, bias })
                if (Shape(first, v, 1, "a LayerNorm parameter")[0] != hidden) throw At(first, $"LayerNorm parameter '{v}' is not {hidden} wide");
            if (eps < 0) eps = epsilon;
            else if (!Near(epsilon, eps)) throw At(first, $"eps {epsilon} differs from the first LayerNorm's {eps}");
            table[weightName] = new(weight);
            table[biasName] = new(bias);
            return output;
        }

        void CheckLastAxis(OnnxNode reduce)
        {
            long[] axes = reduce.Ints("axes");
            if (axes.Length == 0 && reduce.Inputs.Count > 1 && g.IsConstant(reduce.Inputs[1])) axes = g.Longs(reduce.Inputs[1]);
            if (axes is not ([-1] or [2])) throw At(reduce, $"reduces axes [{string.Join(", ", axes)}], not the last");
        }

        // ---- an encoder block ----

        /// <summary>MatMul(x, W [in, out]) + bias: the Add's output; W read transposed into Linear's [out, in].</summary>
        string Dense(OnnxNode matmul, string x, string name, long inWidth, long outWidth)
        {
            if (matmul.Inputs[0] != x) throw At(matmul, $"expected '{x}' as the MatMul's first input");
            var shape = Shape(matmul, matmul.Inputs[1], 2, "a dense weight");
            if (shape[0] != inWidth || shape[1] != outWidth)
                throw At(matmul, $"weight '{matmul.Inputs[1]}' is [{string.Join(", ", shape)}], expected [{inWidth}, {outWidth}]");
            var add = Next(matmul.Outputs[0], "the bias", "Add");
            string bias = Other(add, matmul.Outputs[0]);
            if (Shape(add, bias, 1, "a bias")[0] != outWidth) throw At(add, $"bias '{bias}' is not {outWidth} wide");
            table[$"{name}.weight"] = new(matmul.Inputs[1], Transpose: true);
            table[$"{name}.bias"] = new(bias);
            return add.Outputs[0];
        }

        /// <summary>Reshape to [B, T, heads, d] then Transpose: the transposed value and its perm; reads heads and d.</summary>
        (string Value, long[] Perm, OnnxNode Node) SplitHeads(string projected)
        {
            var reshape = Next(projected, "the split into heads", "Reshape");
            long[] target;
            if (g.IsConstant(reshape.Inputs[1])) target = g.Longs(reshape.Inputs[1]);
            else if (g.Producer(reshape.Inputs[1]) is { OpType: "Concat" } concat && concat.Inputs.Count == 4
                && concat.Inputs.Skip(2).All(g.IsConstant))
                target = [0, 0, g.Longs(concat.Inputs[2]).Single(), g.Longs(concat.Inputs[3]).Single()];
            else throw At(reshape, "expected a target shape [batch, seq, heads, head size] with constant heads and head size");
            if (target.Length != 4 || target[2] * target[3] != hidden)
                throw At(reshape, $"target shape [{string.Join(", ", target)}] does not split {hidden} into heads");
            if (heads < 0) heads = (int)target[2];
            else if (heads != target[2]) throw At(reshape, $"{target[2]} heads, the first block has {heads}");
            var transpose = Next(reshape.Outputs[0], "the heads' transpose", "Transpose");
            return (transpose.Outputs[0], transpose.Ints("perm"), transpose);
        }

        string Block(int i, string x)
        {
            string N(string tensor) => BertNames.Block(i, tensor);
            var projections = g.Consumers(x).Where(n => n.OpType == "MatMul").ToArray();
            var split = projections.Select(p => SplitHeads(Dense(p, x, $"proj{p.Index}", hidden, hidden))).ToArray();
            // the scores MatMul takes Q [0, 2, 1, 3] and Kᵀ [0, 2, 3, 1]; the context MatMul takes the softmax and V [0, 2, 1, 3]
            var scores = split.SelectMany(s => g.Consumers(s.Value)).FirstOrDefault(n => n.OpType == "MatMul"
                && split.Any(s => s.Value == n.Inputs[0]) && split.Any(s => s.Value == n.Inputs[1]))
                ?? throw At(split[0].Node, "expected a MatMul of Q and Kᵀ among the heads");
            int q = Array.FindIndex(split, s => s.Value == scores.Inputs[0]), k = Array.FindIndex(split, s => s.Value == scores.Inputs[1]);
            int v = 3 - q - k;
            if (q == k || v is < 0 or > 2) throw At(scores, "expected Q and K from two different projections");
            if (split[q].Perm is not [0, 2, 1, 3]) throw At(split[q].Node, "expected Q transposed to [batch, heads, seq, head size]");
            if (split[k].Perm is not [0, 2, 3, 1]) throw At(split[k].Node, "expected K transposed to [batch, heads, head size, seq]");
            if (split[v].Perm is not [0, 2, 1, 3]) throw At(split[v].Node, "expected V transposed to [batch, heads, seq, head size]");
            foreach (var (index, role) in new[] { (q, "query"), (k, "key"), (v, "value") })
            {
                string temp = $"proj{projections[index].Index}";
                table[N($"attention.self.{role}.weight")] = table[$"{temp}.weight"];
                table[N($"attention.self.{role}.bias")] = table[$"{temp}.bias"];
            }
            foreach (var p in projections) { table.Remove($"proj{p.Index}.weight"); table.Remove($"proj{p.Index}.bias"); }

            var scale = Next(scores.Outputs[0], "the 1/√d scaling", "Div", "Mul");
            double factor = ScalarOf(scale, scores.Outputs[0], "the scale");
            double d = hidden / heads;
            if (!(scale.OpType == "Div" ? Near(factor, Math.Sqrt(d)) && scale.Inputs[0] == scores.Outputs[0] : Near(factor, 1 / Math.Sqrt(d))))
                throw At(scale, $"scales the scores by {factor}, not 1/√{d}");
            var masked = Next(scale.Outputs[0], "the attention mask", "Add");
            MaskValue(masked, Other(masked, scale.Outputs[0]));
            var softmax = Next(masked.Outputs[0], "the softmax", "Softmax");
            if (softmax.Int("axis", -1) is not (-1 or 3)) throw At(softmax, $"softmax over axis {softmax.Int("axis", -1)}, not the keys");
            var context = Next(softmax.Outputs[0], "the context MatMul", "MatMul");
            if (context.Inputs[0] != softmax.Outputs[0] || context.Inputs[1] != split[v].Value) throw At(context, "expected softmax · V");
            var merge = Next(context.Outputs[0], "the merge of heads", "Transpose");
            if (merge.Ints("perm") is not [0, 2, 1, 3]) throw At(merge, "expected the heads transposed back to [batch, seq, heads, head size]");
            var flat = Next(merge.Outputs[0], "the merge of heads", "Reshape");
            var output = Dense(Next(flat.Outputs[0], "the attention output dense", "MatMul"), flat.Outputs[0], N("attention.output.dense"), hidden, hidden);
            var residual = Next(output, "the residual", "Add");
            if (Other(residual, output) != x) throw At(residual, "expected the block's input as the residual");
            string h = LayerNorm(residual.Outputs[0], N("attention.output.LayerNorm.weight"), N("attention.output.LayerNorm.bias"));

            var up = Next(h, "the intermediate dense", "MatMul");
            var upShape = Shape(up, up.Inputs[1], 2, "the intermediate weight");
            if (intermediate < 0) intermediate = (int)upShape[1];
            string inner = Gelu(Dense(up, h, N("intermediate.dense"), hidden, intermediate));
            var down = Dense(Next(inner, "the output dense", "MatMul"), inner, N("output.dense"), intermediate, hidden);
            var residual2 = Next(down, "the residual", "Add");
            if (Other(residual2, down) != h) throw At(residual2, "expected the attention's LayerNorm as the residual");
            return LayerNorm(residual2.Outputs[0], N("output.LayerNorm.weight"), N("output.LayerNorm.bias"));
        }

        /// <summary>The additive mask: (1 − mask) · value, mask traced back to attention_mask; reads the value (the same for every block).</summary>
        void MaskValue(OnnxNode add, string value)
        {
            var mul = g.Producer(value);
            if (mul is null || mul.OpType != "Mul") throw At(mul ?? add, "expected the additive mask (1 − attention_mask) · value");
            float? c = Scalar(mul.Inputs[0]) ?? Scalar(mul.Inputs[1]);
            var sub = g.Producer(Scalar(mul.Inputs[0]) is null ? mul.Inputs[0] : mul.Inputs[1]);
            if (c is null || sub is null || sub.OpType != "Sub" || Scalar(sub.Inputs[0]) != 1f)
                throw At(mul, "expected the additive mask (1 − attention_mask) · value");
            string m = sub.Inputs[1];
            while (g.Producer(m) is { OpType: "Unsqueeze" or "Cast" or "Reshape" or "Expand" } p) m = p.Inputs[0];
            if (m != mask) throw At(sub, $"expected the mask to come from attention_mask, not '{m}'");
            if (maskValue is { } known && known != c) throw At(mul, $"mask value {c}, an earlier block's is {known}");
            maskValue = c;
        }

        /// <summary>Exact gelu: a Gelu op (approximate "none"), or x · (erf(x / √2) + 1) · 0.5 in either order of its Muls.</summary>
        string Gelu(string x)
        {
            var consumers = g.Consumers(x).Where(n => n.OpType != "Shape").ToArray();
            if (consumers is [{ OpType: "Gelu" } gelu])
            {
                if (gelu.String("approximate") is { } a && a != "none") throw At(gelu, $"gelu approximation '{a}'; only the exact (erf) gelu");
                return gelu.Outputs[0];
            }
            var first = consumers.FirstOrDefault(n => n.Inputs.Count == 2 && n.Inputs[0] == x && Scalar(n.Inputs[1]) is { } f
                && (n.OpType == "Div" ? Near(f, Math.Sqrt(2)) : n.OpType == "Mul" && Near(f, Math.Sqrt(0.5))))
                ?? throw At(consumers.FirstOrDefault() ?? FirstConsumer(x), "expected the exact gelu: a Gelu op, or x / √2 (or x · 1/√2) into Erf");
            var erf = Next(first.Outputs[0], "erf", "Erf");
            var plus = Next(erf.Outputs[0], "erf + 1", "Add");
            if (ScalarOf(plus, erf.Outputs[0], "1") != 1f) throw At(plus, "expected erf + 1");
            var mul = Next(plus.Outputs[0], "the product", "Mul");
            string other = Other(mul, plus.Outputs[0]);
            if (other == x)
            {
                var half = Next(mul.Outputs[0], "the halving", "Mul");
                if (ScalarOf(half, mul.Outputs[0], "0.5") != 0.5f) throw At(half, "expected · 0.5");
                return half.Outputs[0];
            }
            var halved = g.Producer(other);
            if (halved is null || halved.OpType != "Mul" || Other(halved, x) is var h && Scalar(h) != 0.5f) throw At(mul, "expected x · (erf + 1) · 0.5");
            return mul.Outputs[0];
        }

        // ---- outputs ----

        /// <summary>The last hidden state must be a graph output; BertPooler (Gather position 0 on axis 1, Gemm or MatMul + Add, Tanh) is
        /// read when the graph has it.</summary>
        void Head(string x)
        {
            if (!g.Outputs.Any(o => o.Name == x) && !g.Consumers(x).Any(n => n.OpType == "Gather"))
                throw At(FirstConsumer(x), "expected the last block's LayerNorm to be the last hidden state (a graph output) or to feed the pooler");
            foreach (var gather in g.Consumers(x))
            {
                if (gather.OpType != "Gather" || gather.Int("axis", 0) != 1 || g.IsConstant(gather.Inputs[1]) is false
                    || g.Longs(gather.Inputs[1]) is not [0])
                    throw At(gather, "expected the pooler's Gather of position 0 on the sequence axis");
                var dense = Next(gather.Outputs[0], "the pooler dense", "Gemm", "MatMul");
                string output;
                if (dense.OpType == "Gemm")
                {
                    if (dense.Float("alpha", 1) != 1 || dense.Float("beta", 1) != 1 || dense.Int("transA", 0) != 0 || dense.Inputs.Count < 3)
                        throw At(dense, "expected Gemm(x, W, b) with alpha = beta = 1 and x not transposed");
                    bool transB = dense.Int("transB", 0) == 1; // transB: W is already Linear's [out, in]
                    var shape = Shape(dense, dense.Inputs[1], 2, "the pooler weight");
                    if (shape[0] != hidden || shape[1] != hidden) throw At(dense, $"pooler weight is not [{hidden}, {hidden}]");
                    table[BertNames.PoolerWeight] = new(dense.Inputs[1], Transpose: !transB);
                    table[BertNames.PoolerBias] = new(dense.Inputs[2]);
                    output = dense.Outputs[0];
                }
                else
                {
                    output = Dense(dense, gather.Outputs[0], "pooler.dense", hidden, hidden);
                }
                Next(output, "the pooler's tanh", "Tanh");
                pooler = true;
            }
        }
    }
}
