using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Engine;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Workers;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>The Llama family from a Hugging Face checkpoint directory: its arithmetic against an independent reference written
/// here from transformers' modeling_llama.py, every (k, k') bit-identical to resident through the real engine, the tied head,
/// and one-line errors for a bad config.json or a missing tensor. In the collection that never runs beside another test: one
/// test compares the process-wide tensor count.</summary>
[Collection(TensorCountCollection.Name)]
public sealed class LlamaSpec() : TestKit(WorkerConfig.Load()), IDisposable
{
    readonly string root = Directory.CreateTempSubdirectory("llama-spec-").FullName;

    static LlamaConfig Grouped(int layers = 2, bool tied = false) => new(Hidden: 32, Ffn: 48, Layers: layers, Heads: 4, KvHeads: 2,
        RmsNormEps: 1e-5, RopeTheta: 10000.0, Vocab: 61, MaxPositions: 64, TieWordEmbeddings: tied);

    string Export(LlamaConfig config, long seed, int shards = 1, string name = "ckpt")
    {
        string dir = Path.Combine(root, name);
        LlamaExport.Write(dir, config, seed, shards);
        return dir;
    }

    // ---- the independent reference: modeling_llama.py's semantics over the whole state dict, plain TorchSharp ops ----

    static Dictionary<string, Tensor> StateDict(string dir)
    {
        using var ckpt = SafetensorsCheckpoint.Open(dir);
        return ckpt.Names.ToDictionary(n => n, ckpt.Read);
    }

    /// <summary>LlamaRMSNorm.forward: hidden.to(float32); variance = hidden.pow(2).mean(-1, keepdim=True);
    /// hidden * rsqrt(variance + eps); weight * hidden.to(input_dtype).</summary>
    static Tensor RefRmsNorm(Tensor x, Tensor w, double eps)
    {
        var h = x.to_type(ScalarType.Float32);
        var variance = h.pow(2).mean([-1], keepdim: true);
        return w * (h * rsqrt(variance + eps));
    }

    /// <summary>rotate_half: x1 = x[..., : d/2], x2 = x[..., d/2 :]; cat((-x2, x1), -1).</summary>
    static Tensor RefRotateHalf(Tensor x)
    {
        long d = x.shape[^1];
        var x1 = x[TensorIndex.Ellipsis, TensorIndex.Slice(0, d / 2)];
        var x2 = x[TensorIndex.Ellipsis, TensorIndex.Slice(d / 2, d)];
        return cat([x2.neg(), x1], -1);
    }

    static Tensor Reference(string dir, Tensor ids)
    {
        var c = LlamaConfig.Read(dir);
        var sd = StateDict(dir);
        using var scope = NewDisposeScope();
        using var noGrad = inference_mode();
        long b = ids.shape[0], t = ids.shape[1];
        int d = c.Hidden / c.Heads, rep = c.Heads / c.KvHeads;
        // LlamaRotaryEmbedding: inv_freq = 1 / base^(arange(0, dim, 2).float() / dim); freqs = inv_freq ⊗ position_ids;
        // emb = cat((freqs, freqs), -1); cos, sin (attention_scaling 1 for the default rope).
        var invFreq = 1.0 / tensor(Enumerable.Range(0, d / 2).Select(i => (float)Math.Pow(c.RopeTheta, 2.0 * i / d)).ToArray());
        var positionIds = arange(t).unsqueeze(0).expand(b, t).to_type(ScalarType.Float32);            // [b, t]
        var freqs = matmul(invFreq[TensorIndex.None, TensorIndex.Colon, TensorIndex.None].expand(b, -1, 1),
            positionIds[TensorIndex.Colon, TensorIndex.None, TensorIndex.Colon]).transpose(1, 2);         // [b, t, d/2]
        var emb = cat([freqs, freqs], -1);
        var cos = emb.cos().unsqueeze(1);                                                                 // [b, 1, t, d]
        var sin = emb.sin().unsqueeze(1);
        // causal mask: 0 on and below the diagonal, -inf above, added to the scores
        var mask = full(t, t, float.NegativeInfinity).triu(1);

        var hidden = sd["model.embed_tokens.weight"][ids];                                             // nn.Embedding
        for (int i = 0; i < c.Layers; i++)
        {
            string p = $"model.layers.{i}.";
            var residual = hidden;
            var h = RefRmsNorm(hidden, sd[p + "input_layernorm.weight"], c.RmsNormEps);
            var q = matmul(h, sd[p + "self_attn.q_proj.weight"].t()).view(b, t, -1, d).transpose(1, 2);
            var k = matmul(h, sd[p + "self_attn.k_proj.weight"].t()).view(b, t, -1, d).transpose(1, 2);
            var v = matmul(h, sd[p + "self_attn.v_proj.weight"].t()).view(b, t, -1, d).transpose(1, 2);
            q = q * cos + RefRotateHalf(q) * sin;
            k = k * cos + RefRotateHalf(k) * sin;
            // repeat_kv: [b, kv, t, d] -> [b, kv * rep, t, d], each kv head repeated rep times in place
            k = k[TensorIndex.Colon, TensorIndex.Colon, TensorIndex.None].expand(b, c.KvHeads, rep, t, d).reshape(b, c.Heads, t, d);
            v = v[TensorIndex.Colon, TensorIndex.Colon, TensorIndex.None].expand(b, c.KvHeads, rep, t, d).reshape(b, c.Heads, t, d);
            // eager_attention_forward: softmax(q k^T * d^-0.5 + mask) in float32, @ v
            var scores = matmul(q, k.transpose(2, 3)) * Math.Pow(d, -0.5) + mask;
            var probs = softmax(scores, -1, ScalarType.Float32).to_type(q.dtype);
            var attn = matmul(probs, v).transpose(1, 2).contiguous().reshape(b, t, -1);
            hidden = residual + matmul(attn, sd[p + "self_attn.o_proj.weight"].t());
            residual = hidden;
            h = RefRmsNorm(hidden, sd[p + "post_attention_layernorm.weight"], c.RmsNormEps);
            var gate = matmul(h, sd[p + "mlp.gate_proj.weight"].t());
            var mlp = matmul(gate * sigmoid(gate) * matmul(h, sd[p + "mlp.up_proj.weight"].t()), sd[p + "mlp.down_proj.weight"].t());
            hidden = residual + mlp;
        }
        hidden = RefRmsNorm(hidden, sd["model.norm.weight"], c.RmsNormEps);
        var head = c.TieWordEmbeddings ? sd["model.embed_tokens.weight"] : sd["lm_head.weight"];
        var logits = matmul(hidden, head.t()).MoveToOuterDisposeScope();
        foreach (var w in sd.Values) w.Dispose();
        return logits;
    }

    static void AssertClose(Tensor expected, Tensor actual, double tolerance)
    {
        Assert.Equal(expected.shape, actual.shape);
        double worst = (expected - actual).abs().max().item<float>();
        Assert.True(worst <= tolerance, $"max |difference| {worst:G3} exceeds {tolerance:G3}");
    }

    [Theory]
    [InlineData(false, 1)]
    [InlineData(true, 1)]
    [InlineData(false, 3)]
    public void Logits_match_an_independent_reference_of_modeling_llama(bool tied, int shards)
    {
        var config = Grouped(layers: 3, tied: tied);
        string dir = Export(config, seed: 11, shards);
        var read = LlamaConfig.Read(dir);
        Assert.Equal(config, read);
        var model = Llama.Create("llama", read, batch: 2, sequence: 9);
        using var ids = model.MakeInput(5);
        using var source = new CheckpointWeights(dir);
        using var logits = OffloadEquality.HostForward(model, source, ids);
        using var expected = Reference(dir, ids);
        Assert.Equal(new long[] { 2, 9, config.Vocab }, logits.shape);
        double spread = expected.std().item<float>();
        Assert.True(spread > 0.5, $"logits' std {spread:G3}: too small for mistakes to show");
        AssertClose(expected, logits, 1e-4);
    }

    [Fact]
    public void Each_position_sees_only_its_past_and_rows_are_independent()
    {
        string dir = Export(Grouped(), seed: 3);
        var config = LlamaConfig.Read(dir);
        using var source = new CheckpointWeights(dir);
        var model = Llama.Create("llama", config, batch: 2, sequence: 8);
        using var ids = model.MakeInput(9);
        using var full = OffloadEquality.HostForward(model, source, ids);
        var prefix = Llama.Create("llama", config, batch: 1, sequence: 5);
        using var firstRow = ids.narrow(0, 1, 1).narrow(1, 0, 5).contiguous();
        using var part = OffloadEquality.HostForward(prefix, source, firstRow);
        using var expected = full.narrow(0, 1, 1).narrow(1, 0, 5);
        AssertClose(expected, part, 1e-5);
    }

    [Fact]
    public void The_tied_head_reads_the_embedding_and_the_checkpoint_has_no_lm_head()
    {
        var config = Grouped(tied: true);
        string dir = Export(config, seed: 4);
        using (var ckpt = SafetensorsCheckpoint.Open(dir))
        {
            Assert.DoesNotContain(Llama.Names.LmHead, ckpt.Names);
            Assert.Contains(Llama.Names.Embedding, ckpt.Names);
        }
        var model = Llama.Create("llama", LlamaConfig.Read(dir), 1, 4);
        var head = model.Layers[^1];
        Assert.Equal([Llama.Names.FinalNorm, Llama.Names.Embedding], head.Parameters.Select(p => p.Name));
        using var source = new CheckpointWeights(dir);
        var embedding = source.Load(model.Layers[0])[Llama.Names.Embedding];
        var headMatrix = source.Load(head)[Llama.Names.Embedding];
        Assert.Equal(TensorBytes.Raw(embedding), TensorBytes.Raw(headMatrix));
        Assert.Contains("\"tie_word_embeddings\": true", File.ReadAllText(Path.Combine(dir, "config.json")));
        // Seeded (no checkpoint), the head's matrix is the embedding's too, not a second draw.
        var seeded = new SeededWeights(4);
        using var seededEmbedding = seeded.Load(model.Layers[0])[Llama.Names.Embedding];
        using var seededHead = seeded.Load(head)[Llama.Names.Embedding];
        Assert.Equal(TensorBytes.Raw(seededEmbedding), TensorBytes.Raw(seededHead));
    }

    [Fact]
    public async Task Every_window_and_swap_of_a_four_block_checkpoint_is_bit_identical_to_resident()
    {
        string dir = Export(Grouped(layers: 4), seed: 21, shards: 2);
        var model = Llama.Create("llama", LlamaConfig.Read(dir), batch: 2, sequence: 7);
        using var source = new CheckpointWeights(dir);
        using var ids = model.MakeInput(2);
        var cases = OffloadEquality.EveryWindowAndSwap(model.Layers.Count);
        Assert.Equal(21, cases.Length); // 6 layers: embeddings, 4 blocks, head
        await OffloadEquality.AssertBitIdenticalToResident(Sys, model, source, ids, cases);
    }


    /// <summary>As WorkspaceAccountingSpec does for the demo: what each forward leaves in its dispose scope, beyond its input,
    /// weights and output, plus the attention call's scores and softmax, is what the layer declares.</summary>
    [Theory]
    [InlineData(4, 2, 2, 7)]
    [InlineData(4, 4, 1, 5)]
    public void Each_layer_declares_the_temporaries_its_forward_holds(int heads, int kvHeads, int batch, int seq)
    {
        var config = Grouped() with { Heads = heads, KvHeads = kvHeads };
        var model = Llama.Create("llama", config, batch, seq);
        var source = new SeededWeights(8);
        var acts = model.ActivationShapes();
        using var ids = model.MakeInput(1);
        for (int i = 0; i < model.Layers.Count; i++)
        {
            var layer = model.Layers[i];
            var weights = source.Load(layer);
            using var input = i == 0 ? ids.alias() : randn(acts[i].Shape);
            long held = TensorProbe.HeldBytes(layer, weights, input);
            foreach (var w in weights.Values) w.Dispose();
            long attention = layer is LlamaBlock ? 2L * batch * heads * seq * seq * sizeof(float) : 0;
            Assert.True(held > 0 || layer is LlamaEmbedding, $"{layer.Name} holds no temporaries: the reference is broken");
            Assert.Equal(held + attention, layer.WorkspaceBytes(acts[i].Shape));
        }
    }


    // ---- errors ----

    string Config(string json)
    {
        string dir = Path.Combine(root, Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), json);
        return dir;
    }

    static string Without(string json, string key) =>
        string.Join("\n", json.Split('\n').Where(l => !l.TrimStart().StartsWith($"\"{key}\"", StringComparison.Ordinal)))
            .Replace(",\n}", "\n}", StringComparison.Ordinal);

    [Theory]
    [InlineData("hidden_size")]
    [InlineData("num_hidden_layers")]
    [InlineData("rms_norm_eps")]
    [InlineData("vocab_size")]
    [InlineData("model_type")]
    public void A_missing_key_is_one_line_naming_the_file_and_the_key(string key)
    {
        string dir = Config(Without(Grouped().ToJson(), key));
        var e = Assert.Throws<CheckpointConfigException>(() => LlamaConfig.Read(dir));
        Assert.Equal($"{Path.Combine(dir, "config.json")}: \"{key}\" is missing", e.Message);
    }

    [Fact]
    public void Optional_keys_take_transformers_defaults()
    {
        string json = Without(Without(Without(Grouped().ToJson(), "num_key_value_heads"), "rope_theta"), "tie_word_embeddings");
        var c = LlamaConfig.Read(Config(json));
        Assert.Equal((4, 10000.0, false), (c.KvHeads, c.RopeTheta, c.TieWordEmbeddings));
    }

    [Fact]
    public void An_unknown_model_type_or_a_bad_value_is_one_line_naming_the_file_and_the_key()
    {
        string dir = Config(Grouped().ToJson().Replace("\"llama\"", "\"mistral\"", StringComparison.Ordinal));
        var e = Assert.Throws<CheckpointConfigException>(() => LlamaConfig.Read(dir));
        Assert.Equal($"{Path.Combine(dir, "config.json")}: \"model_type\" is \"mistral\", not a family this reader knows (known: llama)", e.Message);
        dir = Config(Grouped().ToJson().Replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3", StringComparison.Ordinal));
        e = Assert.Throws<CheckpointConfigException>(() => LlamaConfig.Read(dir));
        Assert.StartsWith($"{Path.Combine(dir, "config.json")}: \"num_attention_heads\" (4) must be a multiple", e.Message);
        dir = Config(Grouped().ToJson().Replace("\"hidden_size\": 32", "\"hidden_size\": \"32\"", StringComparison.Ordinal));
        e = Assert.Throws<CheckpointConfigException>(() => LlamaConfig.Read(dir));
        Assert.Equal($"{Path.Combine(dir, "config.json")}: \"hidden_size\" is \"32\", not an integer", e.Message);
        foreach (var ex in new[] { e }) Assert.DoesNotContain('\n', ex.Message);
    }

    [Fact]
    public void A_missing_or_mis_shaped_tensor_is_one_line_naming_the_file_and_the_tensor()
    {
        var config = Grouped();
        string dir = Export(config, seed: 6);
        string file = Path.Combine(dir, SafetensorsCheckpoint.SingleFile);
        var sd = StateDict(dir);
        string gone = Llama.Names.Up(1), reshaped = Llama.Names.K(0);
        sd.Remove(gone, out var removed);
        removed!.Dispose();
        sd[reshaped] = sd[reshaped].reshape(config.Hidden, config.KvDim);
        SafetensorsWriter.WriteCheckpoint(dir, sd);
        foreach (var t in sd.Values) t.Dispose();
        var model = Llama.Create("llama", config, 1, 3);
        using var source = new CheckpointWeights(dir);
        var e = Assert.Throws<SafetensorsException>(() => source.Load(model.Layers[2]));
        Assert.Equal($"{file}: tensor '{gone}': no such tensor in the file", e.Message);
        e = Assert.Throws<SafetensorsException>(() => source.Load(model.Layers[1]));
        Assert.Equal($"{file}: tensor '{reshaped}': has shape [32,16], layer block.0 expects [16,32]", e.Message);
    }

    [Fact]
    public void Each_layer_reads_only_its_own_tensors_and_only_the_shards_that_hold_them()
    {
        var config = Grouped(layers: 4);
        string dir = Export(config, seed: 12, shards: 6);
        var model = Llama.Create("llama", config, 1, 2);
        var block = model.Layers[3];
        using var source = new CheckpointWeights(dir);
        foreach (var t in source.Load(block).Values) t.Dispose();
        using var ckpt = SafetensorsCheckpoint.Open(dir);
        var holding = block.Parameters.Select(p => ckpt.FileOf(p.Name)).Distinct().Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(6, Directory.GetFiles(dir, "model-*-of-00006.safetensors").Length);
        Assert.InRange(holding.Length, 1, 5);
        Assert.Equal(holding, source.OpenedFiles);
        long headers = holding.Sum(f => { using var file = SafetensorsFile.Open(Path.Combine(dir, f)); return file.DataStart; });
        Assert.Equal(block.Bytes + headers, source.BytesRead);
    }

    [Fact]
    public void A_tensor_stored_in_another_dtype_is_refused_in_one_line()
    {
        var config = Grouped();
        string dir = Export(config, seed: 6);
        var sd = StateDict(dir);
        string half = Llama.Names.FinalNorm;
        sd[half] = sd[half].to_type(ScalarType.Int64);
        SafetensorsWriter.WriteCheckpoint(dir, sd);
        foreach (var t in sd.Values) t.Dispose();
        using var source = new CheckpointWeights(dir);
        var e = Assert.Throws<SafetensorsException>(() => source.Load(Llama.Create("llama", config, 1, 1).Layers[^1]));
        Assert.Equal($"{Path.Combine(dir, SafetensorsCheckpoint.SingleFile)}: tensor '{half}': is I64; weights are read as F32, F16, BF16", e.Message);
    }

    public new void Dispose()
    {
        base.Dispose();
        try { Directory.Delete(root, recursive: true); } catch (IOException) { }
    }
}
