using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Engine;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Devices;
using Superpipeline.Workers;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>The GPT-2 family from a Hugging Face checkpoint directory: its arithmetic against an independent reference written
/// here from transformers' modeling_gpt2.py, every (k, k') bit-identical to resident through the real engine, the tied head,
/// names with and without the "transformer." prefix, and one-line errors for a bad config.json or a missing tensor. In the
/// collection that never runs beside another test: one test compares the process-wide tensor count.</summary>
[Collection(TensorCountCollection.Name)]
public sealed class Gpt2Spec() : TestKit(WorkerConfig.Load()), IDisposable
{
    readonly string root = Directory.CreateTempSubdirectory("gpt2-spec-").FullName;

    static Gpt2Config Small(int layers = 2, bool tied = true, int? inner = 40, double eps = 1e-5) => new(Hidden: 32, Layers: layers,
        Heads: 4, MaxPositions: 16, Vocab: 61, LayerNormEps: eps, Inner: inner, TieWordEmbeddings: tied);

    string Export(Gpt2Config config, long seed, int shards = 1, string name = "ckpt", string prefix = Gpt2Names.Transformer)
    {
        string dir = Path.Combine(root, name);
        Gpt2Export.Write(dir, config, seed, shards, prefix);
        return dir;
    }

    // ---- the independent reference: modeling_gpt2.py's semantics over the whole state dict, plain TorchSharp ops ----

    static Dictionary<string, Tensor> StateDict(string dir)
    {
        using var ckpt = SafetensorsCheckpoint.Open(dir);
        return ckpt.Names.ToDictionary(n => n, ckpt.Read);
    }

    /// <summary>nn.LayerNorm: (x - mean) / sqrt(var(unbiased=False) + eps) * weight + bias over the last dimension.</summary>
    static Tensor RefLayerNorm(Tensor x, Tensor w, Tensor b, double eps)
    {
        var mean = x.mean([-1], keepdim: true);
        var centred = x - mean;
        var variance = centred.pow(2).mean([-1], keepdim: true);
        return centred / (variance + eps).sqrt() * w + b;
    }

    /// <summary>Conv1D.forward: size_out = x.size()[:-1] + (nf,); x = addmm(bias, x.view(-1, x.size(-1)), weight) (weight [nx, nf]).</summary>
    static Tensor RefConv1D(Tensor x, Tensor w, Tensor b) => (matmul(x, w) + b);

    /// <summary>NewGELUActivation: 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))).</summary>
    static Tensor RefGeluNew(Tensor x) => 0.5 * x * (1.0 + tanh(Math.Sqrt(2.0 / Math.PI) * (x + 0.044715 * x.pow(3.0))));

    static Tensor Reference(string dir, Tensor ids)
    {
        var sd = StateDict(dir);
        try { return Reference(Gpt2Config.Read(dir), sd, ids); }
        finally { foreach (var w in sd.Values) w.Dispose(); }
    }

    static Tensor Reference(Gpt2Config c, IReadOnlyDictionary<string, Tensor> sd, Tensor ids)
    {
        using var scope = NewDisposeScope();
        using var noGrad = inference_mode();
        // GPT2LMHeadModel saves "transformer.wte.weight"; GPT2Model (the hub's gpt2 files) "wte.weight"
        string p = sd.ContainsKey("transformer.wte.weight") ? "transformer." : "";
        long b = ids.shape[0], t = ids.shape[1];
        int nh = c.Heads, d = c.Hidden / c.Heads;
        // GPT2Model.forward: position_ids = arange(0, T); hidden = wte(input_ids) + wpe(position_ids); dropout is off in eval
        var positionIds = arange(t).unsqueeze(0);
        var hidden = sd[p + "wte.weight"][ids] + sd[p + "wpe.weight"][positionIds];
        // causal mask: keep j <= i, else finfo(float32).min (torch.where on the bias buffer)
        var keep = ones(t, t, dtype: ScalarType.Bool).tril();
        for (int i = 0; i < c.Layers; i++)
        {
            string l = $"{p}h.{i}.";
            var residual = hidden;
            var h = RefLayerNorm(hidden, sd[l + "ln_1.weight"], sd[l + "ln_1.bias"], c.LayerNormEps);
            // GPT2Attention: query, key, value = c_attn(h).split(embed_dim, dim=2); _split_heads -> [b, heads, t, d]
            var qkv = RefConv1D(h, sd[l + "attn.c_attn.weight"], sd[l + "attn.c_attn.bias"]);
            var parts = qkv.split(c.Hidden, 2);
            Tensor Heads(Tensor x) => x.reshape(b, t, nh, d).permute(0, 2, 1, 3);
            var (q, k, v) = (Heads(parts[0]), Heads(parts[1]), Heads(parts[2]));
            // eager_attention_forward: q @ k^T / full([], v.size(-1) ** 0.5); where(causal, w, finfo.min); softmax(-1); @ v
            var weights = matmul(q, k.transpose(-1, -2)) / full(1, (float)Math.Pow(d, 0.5));
            weights = where(keep, weights, full(1, float.MinValue));
            weights = softmax(weights, -1);
            var attn = matmul(weights, v).permute(0, 2, 1, 3).contiguous().reshape(b, t, c.Hidden);  // _merge_heads
            hidden = residual + RefConv1D(attn, sd[l + "attn.c_proj.weight"], sd[l + "attn.c_proj.bias"]);
            residual = hidden;
            h = RefLayerNorm(hidden, sd[l + "ln_2.weight"], sd[l + "ln_2.bias"], c.LayerNormEps);
            // GPT2MLP: c_proj(act(c_fc(h))), inner = n_inner or 4 * n_embd
            var mlp = RefConv1D(RefGeluNew(RefConv1D(h, sd[l + "mlp.c_fc.weight"], sd[l + "mlp.c_fc.bias"])),
                sd[l + "mlp.c_proj.weight"], sd[l + "mlp.c_proj.bias"]);
            hidden = residual + mlp;
        }
        hidden = RefLayerNorm(hidden, sd[p + "ln_f.weight"], sd[p + "ln_f.bias"], c.LayerNormEps);
        // lm_head: Linear(n_embd, vocab, bias=False), its weight tied to wte unless tie_word_embeddings is false
        var head = c.TieWordEmbeddings ? sd[p + "wte.weight"] : sd["lm_head.weight"];
        return matmul(hidden, head.t()).MoveToOuterDisposeScope();
    }

    static void AssertClose(Tensor expected, Tensor actual, double tolerance)
    {
        Assert.Equal(expected.shape, actual.shape);
        double worst = (expected - actual).abs().max().item<float>();
        Assert.True(worst <= tolerance, $"max |difference| {worst:G3} exceeds {tolerance:G3}");
    }

    [Theory]
    [InlineData(true, 1, "transformer.", 40, 1e-5)]
    [InlineData(false, 1, "transformer.", 40, 1e-5)]
    [InlineData(true, 3, "", null, 1e-5)]
    [InlineData(false, 2, "", 40, 0.05)]
    public void Logits_match_an_independent_reference_of_modeling_gpt2(bool tied, int shards, string prefix, int? inner, double eps)
    {
        var config = Small(layers: 3, tied: tied, inner: inner, eps: eps);
        string dir = Export(config, seed: 11, shards, prefix: prefix);
        var read = Gpt2Config.Read(dir);
        Assert.Equal(config, read);
        Assert.Equal(prefix, Gpt2.PrefixIn(dir));
        var model = Gpt2.Create("gpt2", read, batch: 2, sequence: 9, Gpt2.PrefixIn(dir));
        using var ids = model.MakeInput(5);
        using var source = new CheckpointWeights(dir);
        using var logits = OffloadEquality.HostForward(model, source, ids);
        using var expected = Reference(dir, ids);
        Assert.Equal(new long[] { 2, 9, config.Vocab }, logits.shape);
        double spread = expected.std().item<float>();
        Assert.True(spread > 0.5, $"logits' std {spread:G3}: too small for mistakes to show");
        AssertClose(expected, logits, 1e-4);
    }

    // ---- the built-in demo is a seeded GPT-2: the same reference checks its arithmetic, through the catalog's own path ----

    /// <summary>A small demo spec through <see cref="ModelCatalog.Create"/> and <see cref="ModelCatalog.Weights"/>, its state dict
    /// collected from the layers' seeded weights (each name once), against the reference with the GPT-2 config the spec means:
    /// Blocks = n_layer, Hidden = n_embd, Heads = n_head, Vocab = vocab_size, Sequence = n_positions, n_inner 4 · n_embd, tied head.</summary>
    [Theory]
    [InlineData("demo")]
    [InlineData("gpt")]
    public void The_demo_from_the_catalog_matches_the_independent_reference(string name)
    {
        var spec = new ModelSpec(name, Blocks: 3, Hidden: 32, Heads: 4, Vocab: 61, Sequence: 9, Batch: 2, Seed: 11);
        var model = ModelCatalog.Create(spec);
        var source = ModelCatalog.Weights(spec);
        using (var scope = NewDisposeScope()) // the tie draws the embedding's weights and frees all but wte
        {
            var head = source.Load(model.Layers[^1]);
            Assert.Equal(head.Values.ToHashSet(), scope.DisposablesView.OfType<Tensor>().Where(t => !t.IsInvalid).ToHashSet());
        }
        var sd = new Dictionary<string, Tensor>();
        foreach (var layer in model.Layers)
            foreach (var (tensor, value) in source.Load(layer))
            {
                if (sd.TryGetValue(tensor, out var first))
                {
                    Assert.Equal(TensorBytes.Raw(first), TensorBytes.Raw(value)); // the head's wte is the embedding's: tied, as GPT-2
                    value.Dispose();
                }
                else sd[tensor] = value;
            }
        Assert.Equal(2 + 12 * 3 + 2, sd.Count); // wte and wpe, 12 per block, ln_f: no lm_head
        var config = new Gpt2Config(Hidden: 32, Layers: 3, Heads: 4, MaxPositions: 9, Vocab: 61);
        using var ids = model.MakeInput(spec.Seed);
        using var logits = OffloadEquality.HostForward(model, source, ids);
        using var expected = Reference(config, sd, ids);
        foreach (var w in sd.Values) w.Dispose();
        double spread = expected.std().item<float>();
        Assert.True(spread > 0.5, $"logits' std {spread:G3}: too small for mistakes to show");
        AssertClose(expected, logits, 1e-4);
    }

    /// <summary>The demo's layers are the GPT-2 family's, under the checkpoint's tensor names (GPT2LMHeadModel's state dict), with
    /// Conv1D weights [in, out]; its bytes are the sum the test counts from GPT-2's shapes, the tied head reading wte again.</summary>
    [Fact]
    public void The_demos_layers_are_gpt2_layers_with_checkpoint_tensor_names()
    {
        var spec = ModelSpec.Demo;
        var model = ModelCatalog.Create(spec);
        long h = spec.Hidden, v = spec.Vocab, s = spec.Sequence;
        Assert.Equal(spec.Blocks + 2, model.Layers.Count);
        Assert.IsType<Gpt2Embedding>(model.Layers[0]);
        Assert.IsType<Gpt2Head>(model.Layers[^1]);
        Assert.Equal([("transformer.wte.weight", new[] { v, h }), ("transformer.wpe.weight", new[] { s, h })], Shapes(model.Layers[0]));
        for (int b = 0; b < spec.Blocks; b++)
        {
            Assert.Equal(b, Assert.IsType<Gpt2Block>(model.Layers[b + 1]).Block);
            string p = $"transformer.h.{b}.";
            Assert.Equal(
            [
                (p + "ln_1.weight", [h]), (p + "ln_1.bias", [h]), (p + "attn.c_attn.weight", [h, 3 * h]), (p + "attn.c_attn.bias", [3 * h]),
                (p + "attn.c_proj.weight", [h, h]), (p + "attn.c_proj.bias", [h]), (p + "ln_2.weight", [h]), (p + "ln_2.bias", [h]),
                (p + "mlp.c_fc.weight", [h, 4 * h]), (p + "mlp.c_fc.bias", [4 * h]), (p + "mlp.c_proj.weight", [4 * h, h]),
                (p + "mlp.c_proj.bias", new[] { h }),
            ], Shapes(model.Layers[b + 1]));
        }
        Assert.Equal([("transformer.ln_f.weight", new[] { h }), ("transformer.ln_f.bias", [h]), ("transformer.wte.weight", [v, h])],
            Shapes(model.Layers[^1]));
        long floats = (v + s) * h + spec.Blocks * (12 * h * h + 13 * h) + 2 * h + v * h;
        Assert.Equal(floats * sizeof(float), model.Bytes);
        Assert.Equal(319_672_320, model.Bytes); // 304.86 MiB, the README's figure
        Assert.Equal(new long[] { spec.Batch, spec.Sequence }, model.InputShape);
    }

    /// <summary>The family's seeded scale (<see cref="Gpt2.InitStd"/>) stays sensible at the demo's depth and width: 24 blocks of
    /// hidden 512 give finite logits of a moderate spread (one short row, so that it runs in about a second).</summary>
    [Fact]
    public void The_demo_at_its_default_depth_and_width_gives_finite_logits_of_moderate_spread()
    {
        var spec = ModelSpec.Demo with { Sequence = 8, Batch = 1 };
        var model = ModelCatalog.Create(spec);
        using var ids = model.MakeInput(spec.Seed);
        using var logits = OffloadEquality.HostForward(model, ModelCatalog.Weights(spec), ids);
        Assert.Equal(new long[] { 1, 8, spec.Vocab }, logits.shape);
        Assert.True(logits.isfinite().all().item<bool>(), "the demo's logits are not all finite");
        double spread = logits.std().item<float>();
        Assert.InRange(spread, 0.5, 50.0);
    }

    static (string, long[])[] Shapes(Layer layer) => [.. layer.Parameters.Select(p => (p.Name, p.Shape.ToArray()))];

    /// <summary>The seeded demo is exactly the checkpoint <c>export-demo --family gpt2</c> writes for its sizes and seed: read back
    /// through the catalog's checkpoint path, the same ids give the same logits bit for bit.</summary>
    [Fact]
    public void The_seeded_demo_equals_its_exported_gpt2_checkpoint_bit_for_bit()
    {
        var spec = new ModelSpec("demo", Blocks: 2, Hidden: 32, Heads: 4, Vocab: 61, Sequence: 9, Batch: 2, Seed: 7);
        string dir = Export(ModelCatalog.DemoConfig(spec), spec.Seed);
        var checkpoint = ModelCatalog.CheckpointSpec(dir, spec.Batch, spec.Sequence, spec.Seed);
        var demo = ModelCatalog.Create(spec);
        var read = ModelCatalog.Create(checkpoint);
        using var ids = demo.MakeInput(spec.Seed);
        using var readIds = read.MakeInput(checkpoint.Seed);
        Assert.Equal(TensorBytes.Raw(ids), TensorBytes.Raw(readIds));
        using var source = (CheckpointWeights)ModelCatalog.Weights(checkpoint);
        using var seeded = OffloadEquality.HostForward(demo, ModelCatalog.Weights(spec), ids);
        using var fromCheckpoint = OffloadEquality.HostForward(read, source, ids);
        Assert.Equal(TensorBytes.Raw(seeded), TensorBytes.Raw(fromCheckpoint));
    }

    [Fact]
    public void Each_position_sees_only_its_past_and_rows_are_independent()
    {
        string dir = Export(Small(), seed: 3);
        var config = Gpt2Config.Read(dir);
        using var source = new CheckpointWeights(dir);
        var model = Gpt2.Create("gpt2", config, batch: 2, sequence: 8);
        using var ids = model.MakeInput(9);
        using var full = OffloadEquality.HostForward(model, source, ids);
        var prefix = Gpt2.Create("gpt2", config, batch: 1, sequence: 5);
        using var firstRow = ids.narrow(0, 1, 1).narrow(1, 0, 5).contiguous();
        using var part = OffloadEquality.HostForward(prefix, source, firstRow);
        using var expected = full.narrow(0, 1, 1).narrow(1, 0, 5);
        AssertClose(expected, part, 1e-5);
    }

    [Theory]
    [InlineData("transformer.")]
    [InlineData("")]
    public void The_tied_head_reads_wte_and_the_checkpoint_has_no_lm_head(string prefix)
    {
        string dir = Export(Small(tied: true), seed: 4, prefix: prefix);
        var names = new Gpt2Names(prefix);
        using (var ckpt = SafetensorsCheckpoint.Open(dir))
        {
            Assert.DoesNotContain(Gpt2Names.LmHead, ckpt.Names);
            Assert.Contains(prefix + "wte.weight", ckpt.Names);
            Assert.Equal(2 + 12 * 2 + 2, ckpt.Names.Count());
        }
        var model = Gpt2.Create("gpt2", Gpt2Config.Read(dir), 1, 4, prefix);
        var head = model.Layers[^1];
        Assert.Equal([prefix + "ln_f.weight", prefix + "ln_f.bias", names.Wte], head.Parameters.Select(p => p.Name));
        using var source = new CheckpointWeights(dir);
        var embedding = source.Load(model.Layers[0])[names.Wte];
        var headMatrix = source.Load(head)[names.Wte];
        Assert.Equal(TensorBytes.Raw(embedding), TensorBytes.Raw(headMatrix));
    }

    [Fact]
    public void An_untied_head_reads_lm_head_without_the_prefix()
    {
        string dir = Export(Small(tied: false), seed: 4);
        Assert.Contains("\"tie_word_embeddings\": false", File.ReadAllText(Path.Combine(dir, "config.json")));
        var head = Gpt2.Create("gpt2", Gpt2Config.Read(dir), 1, 4).Layers[^1];
        Assert.Equal(["transformer.ln_f.weight", "transformer.ln_f.bias", "lm_head.weight"], head.Parameters.Select(p => p.Name));
        using var ckpt = SafetensorsCheckpoint.Open(dir);
        Assert.Contains(Gpt2Names.LmHead, ckpt.Names);
    }

    [Fact]
    public async Task Every_window_and_swap_of_a_four_block_checkpoint_is_bit_identical_to_resident()
    {
        string dir = Export(Small(layers: 4), seed: 21, shards: 2);
        var model = Gpt2.Create("gpt2", Gpt2Config.Read(dir), batch: 2, sequence: 7, Gpt2.PrefixIn(dir));
        using var source = new CheckpointWeights(dir);
        using var ids = model.MakeInput(2);
        var cases = OffloadEquality.EveryWindowAndSwap(model.Layers.Count);
        Assert.Equal(21, cases.Length); // 6 layers: embeddings, 4 blocks, head
        await OffloadEquality.AssertBitIdenticalToResident(Sys, model, source, ids, cases);
    }


    /// <summary>As WorkspaceAccountingSpec does for the demo: what each forward leaves in its dispose scope, beyond its input,
    /// weights and output, plus the attention call's scores and softmax, is what the layer declares.</summary>
    [Theory]
    [InlineData(4, 2, 7, 40)]
    [InlineData(2, 1, 5, null)]
    public void Each_layer_declares_the_temporaries_its_forward_holds(int heads, int batch, int seq, int? inner)
    {
        var config = Small(inner: inner) with { Heads = heads };
        var model = Gpt2.Create("gpt2", config, batch, seq);
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
            long attention = layer is Gpt2Block ? 2L * batch * heads * seq * seq * sizeof(float) : 0;
            Assert.True(held > 0, $"{layer.Name} holds no temporaries: the reference is broken");
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
    [InlineData("n_embd")]
    [InlineData("n_layer")]
    [InlineData("n_head")]
    [InlineData("n_positions")]
    [InlineData("vocab_size")]
    [InlineData("model_type")]
    public void A_missing_key_is_one_line_naming_the_file_and_the_key(string key)
    {
        string dir = Config(Without(Small().ToJson(), key));
        var e = Assert.Throws<CheckpointConfigException>(() => Gpt2Config.Read(dir));
        Assert.Equal($"{Path.Combine(dir, "config.json")}: \"{key}\" is missing", e.Message);
    }

    [Fact]
    public void Optional_keys_take_transformers_defaults()
    {
        string json = Small().ToJson();
        foreach (var key in new[] { "n_inner", "layer_norm_epsilon", "tie_word_embeddings", "activation_function", "scale_attn_weights",
                     "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn" })
            json = Without(json, key);
        var c = Gpt2Config.Read(Config(json));
        Assert.Equal((null, 128, 1e-5, true), (c.Inner, c.Ffn, c.LayerNormEps, c.TieWordEmbeddings));
        Assert.Equal(128, Gpt2.Create("gpt2", c, 1, 1).Layers[1].Parameters.Single(p => p.Name.EndsWith("c_fc.bias", StringComparison.Ordinal)).Shape[0]);
    }

    [Theory]
    [InlineData("\"model_type\": \"gpt2\"", "\"model_type\": \"gpt_neo\"",
        "\"model_type\" is \"gpt_neo\", not a family this reader knows (known: gpt2)")]
    [InlineData("\"activation_function\": \"gelu_new\"", "\"activation_function\": \"gelu\"",
        "\"activation_function\" is \"gelu\"; only \"gelu_new\" is supported")]
    [InlineData("\"scale_attn_by_inverse_layer_idx\": false", "\"scale_attn_by_inverse_layer_idx\": true",
        "\"scale_attn_by_inverse_layer_idx\" is true; only false is supported")]
    [InlineData("\"reorder_and_upcast_attn\": false", "\"reorder_and_upcast_attn\": true", "\"reorder_and_upcast_attn\" is true; only false is supported")]
    [InlineData("\"scale_attn_weights\": true", "\"scale_attn_weights\": false", "\"scale_attn_weights\" is false; only scaled attention is supported")]
    [InlineData("\"n_head\": 4", "\"n_head\": 5", "\"n_embd\" (32) must be a multiple of n_head (5)")]
    [InlineData("\"n_embd\": 32", "\"n_embd\": \"32\"", "\"n_embd\" is \"32\", not an integer")]
    [InlineData("\"layer_norm_epsilon\": 1E-05", "\"layer_norm_epsilon\": 0", "\"layer_norm_epsilon\" must be positive (got 0)")]
    [InlineData("\"n_inner\": 40", "\"n_inner\": 0", "\"n_inner\" must be at least 1 (got 0)")]
    public void A_bad_or_unsupported_value_is_one_line_naming_the_file_and_the_key(string from, string to, string message)
    {
        string json = Small().ToJson();
        Assert.Contains(from, json);
        string dir = Config(json.Replace(from, to, StringComparison.Ordinal));
        var e = Assert.Throws<CheckpointConfigException>(() => Gpt2Config.Read(dir));
        Assert.Equal($"{Path.Combine(dir, "config.json")}: {message}", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void A_missing_or_mis_shaped_tensor_is_one_line_naming_the_file_and_the_tensor()
    {
        var config = Small();
        string dir = Export(config, seed: 6);
        string file = Path.Combine(dir, SafetensorsCheckpoint.SingleFile);
        var sd = StateDict(dir);
        var names = new Gpt2Names(Gpt2Names.Transformer);
        string gone = names.Block(1, "mlp.c_fc.bias"), transposed = names.Block(0, "attn.c_attn.weight");
        sd.Remove(gone, out var removed);
        removed!.Dispose();
        sd[transposed] = sd[transposed].t().contiguous();
        SafetensorsWriter.WriteCheckpoint(dir, sd);
        foreach (var t in sd.Values) t.Dispose();
        var model = Gpt2.Create("gpt2", config, 1, 3);
        using var source = new CheckpointWeights(dir);
        var e = Assert.Throws<SafetensorsException>(() => source.Load(model.Layers[2]));
        Assert.Equal($"{file}: tensor '{gone}': no such tensor in the file", e.Message);
        e = Assert.Throws<SafetensorsException>(() => source.Load(model.Layers[1]));
        Assert.Equal($"{file}: tensor '{transposed}': has shape [96,32], layer block.0 expects [32,96]", e.Message);
    }

    [Fact]
    public void A_checkpoint_without_wte_is_not_taken_for_gpt2_and_a_wrong_prefix_names_the_tensor()
    {
        string dir = Export(Small(), seed: 6, prefix: "");
        using (var source = new CheckpointWeights(dir))
        {
            var e = Assert.Throws<SafetensorsException>(() => source.Load(Gpt2.Create("gpt2", Small(), 1, 1).Layers[0]));
            Assert.Equal($"{Path.Combine(dir, SafetensorsCheckpoint.SingleFile)}: tensor 'transformer.wte.weight': no such tensor in the file", e.Message);
        }
        var sd = StateDict(dir);
        sd.Remove("wte.weight", out var wte);
        wte!.Dispose();
        SafetensorsWriter.WriteCheckpoint(dir, sd);
        foreach (var t in sd.Values) t.Dispose();
        var error = Assert.Throws<ArgumentException>(() => Gpt2.PrefixIn(dir));
        Assert.Equal($"{dir}: neither transformer.wte.weight nor wte.weight is in the checkpoint; not a GPT-2 checkpoint", error.Message);
        Assert.Throws<ArgumentException>(() => new Gpt2Names("model."));
    }

    [Fact]
    public void Batch_and_sequence_refusals_name_their_fields()
    {
        var e = Assert.Throws<FieldException>(() => Gpt2.Create("gpt2", Small(), 1, 17));
        Assert.Contains("(17) must be in [1, 16] (n_positions)", e.Message);
        Assert.Throws<FieldException>(() => Gpt2.Create("gpt2", Small(), 0, 1));
    }

    public new void Dispose()
    {
        base.Dispose();
        try { Directory.Delete(root, recursive: true); } catch (IOException) { }
    }
}
