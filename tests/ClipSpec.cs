using System.Text.Json;
using System.Text.Json.Nodes;
using Akka.TestKit.Xunit2;
using SkiaSharp;
using Superpipeline.Coordinator.Commands;
using Superpipeline.Engine;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Images;
using Superpipeline.Engine.IO;
using Superpipeline.Engine.Text;
using Superpipeline.Workers;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Tests;

/// <summary>The CLIP family (CLIPModel) from an exported seeded checkpoint: image and text embeddings and logits against an
/// independent port of transformers' modeling_clip.py written here with plain TorchSharp ops; each tower bit-identical to
/// resident under several (k, k') through the real engine; texts of different lengths in one padded batch equal each text alone;
/// the pooling rules; honest workspaces; the similarity command on PNGs and its one-line refusals.</summary>
public sealed class ClipSpec() : TestKit(WorkerConfig.Load()), IDisposable
{
    readonly string root = Directory.CreateTempSubdirectory("clip-spec-").FullName;

    public new void Dispose()
    {
        base.Dispose();
        try { Directory.Delete(root, recursive: true); } catch (IOException) { }
    }

    const int Vocab = 300, Positions = 40, ImageSize = 16, Patch = 4;

    /// <summary>A small CLIP, both towers 3 blocks of 32 (4 heads, ffn 64), text 300 ids and 40 positions, 16-pixel images in
    /// 4-pixel patches (17 tokens), projection 24 (unlike the hidden width, so a swapped projection fails).</summary>
    static ClipConfig Small(string act = "quick_gelu") => new(
        new ClipTextConfig(Hidden: 32, Ffn: 64, Layers: 3, Heads: 4, Vocab: Vocab, MaxPositions: Positions, HiddenAct: act, ProjectionDim: 24,
            EosTokenId: Vocab - 1, BosTokenId: Vocab - 2),
        new ClipVisionConfig(Hidden: 32, Ffn: 64, Layers: 3, Heads: 4, ImageSize: ImageSize, PatchSize: Patch, HiddenAct: act, ProjectionDim: 24),
        ProjectionDim: 24, LogitScaleInit: 2.6592);

    string Export(string name = "ckpt", long seed = 3, string act = "quick_gelu")
    {
        string dir = Path.Combine(root, name);
        ExportDemoCommand.Export("clip", "f32", dir, seed, 1, () => throw new InvalidOperationException(), clip: () => Small(act));
        return dir;
    }

    string WriteNpy(string name, TensorPayload payload)
    {
        string path = Path.Combine(root, name);
        Npy.Write(path, payload);
        return path;
    }

    static TensorPayload Ids(long[,] ids, long[,]? mask = null)
    {
        int b = ids.GetLength(0), t = ids.GetLength(1);
        var values = new long[b * t * 2];
        for (int i = 0; i < b; i++)
            for (int j = 0; j < t; j++) { values[(i * t + j) * 2] = ids[i, j]; values[(i * t + j) * 2 + 1] = mask?[i, j] ?? 1; }
        var bytes = new byte[values.Length * sizeof(long)];
        Buffer.BlockCopy(values, 0, bytes, 0, bytes.Length);
        return new TensorPayload("Int64", [b, t, 2], [.. bytes]);
    }

    static TensorPayload Pixels(int batch, long seed)
    {
        using var g = new Generator((ulong)seed);
        using var t = randn([batch, 3, ImageSize, ImageSize], generator: g);
        return TensorPayloads.From(t);
    }

    // ---- the independent reference: modeling_clip.py's CLIPModel over the whole state dict, plain TorchSharp ops ----

    static Dictionary<string, Tensor> StateDict(string dir)
    {
        using var ckpt = SafetensorsCheckpoint.Open(dir);
        return ckpt.Names.ToDictionary(n => n, ckpt.Read);
    }

    /// <summary>The keys the port reads, straight from config.json (not through the engine's reader).</summary>
    sealed record RefConfig(JsonElement Text, JsonElement Vision)
    {
        public static RefConfig Read(string dir)
        {
            var root = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "config.json"))).RootElement;
            return new(root.GetProperty("text_config"), root.GetProperty("vision_config"));
        }
    }

    /// <summary>nn.LayerNorm: (x - mean) / sqrt(var(unbiased=False) + eps) * weight + bias over the last dimension.</summary>
    static Tensor RefLayerNorm(Tensor x, Tensor w, Tensor b, double eps)
    {
        var mean = x.mean([-1], keepdim: true);
        var centred = x - mean;
        var variance = centred.pow(2).mean([-1], keepdim: true);
        return centred / (variance + eps).sqrt() * w + b;
    }

    /// <summary>ACT2FN: QuickGELUActivation is input * sigmoid(1.702 * input); GELUActivation is 0.5 x (1 + erf(x / √2)).</summary>
    static Tensor RefAct(Tensor x, string act) => act == "quick_gelu" ? x * (1.702 * x).sigmoid() : 0.5 * x * (1.0 + (x / Math.Sqrt(2.0)).erf());

    /// <summary>nn.Linear: x @ W.T + b.</summary>
    static Tensor RefLinear(Tensor x, Tensor w, Tensor? b = null) => b is null ? matmul(x, w.t()) : matmul(x, w.t()) + b;

    /// <summary>CLIPEncoderLayer with CLIPAttention's eager path: attn_weights = q @ kᵀ · head_dim^-0.5, plus the causal mask, plus the
    /// attention mask (each an additive float mask, as CLIPTextTransformer passes them), softmax in float32, @ v, out_proj; then
    /// the MLP.</summary>
    static Tensor RefLayer(Dictionary<string, Tensor> sd, string p, JsonElement c, Tensor h, Tensor? causal, Tensor? padding)
    {
        long b = h.shape[0], t = h.shape[1];
        int hidden = c.GetProperty("hidden_size").GetInt32(), heads = c.GetProperty("num_attention_heads").GetInt32(), d = hidden / heads;
        double eps = c.GetProperty("layer_norm_eps").GetDouble();
        string act = c.GetProperty("hidden_act").GetString()!;
        Tensor W(string n) => sd[p + n];
        var residual = h;
        h = RefLayerNorm(h, W("layer_norm1.weight"), W("layer_norm1.bias"), eps);
        Tensor Shape(Tensor x) => x.view(b, t, heads, d).transpose(1, 2);
        var q = Shape(RefLinear(h, W("self_attn.q_proj.weight"), W("self_attn.q_proj.bias")));
        var k = Shape(RefLinear(h, W("self_attn.k_proj.weight"), W("self_attn.k_proj.bias")));
        var v = Shape(RefLinear(h, W("self_attn.v_proj.weight"), W("self_attn.v_proj.bias")));
        var weights = matmul(q, k.transpose(2, 3)) * Math.Pow(d, -0.5);
        if (causal is not null) weights = weights + causal;
        if (padding is not null) weights = weights + padding;
        weights = weights.softmax(-1, ScalarType.Float32);
        var attn = matmul(weights, v).transpose(1, 2).reshape(b, t, hidden);
        h = residual + RefLinear(attn, W("self_attn.out_proj.weight"), W("self_attn.out_proj.bias"));
        residual = h;
        h = RefLayerNorm(h, W("layer_norm2.weight"), W("layer_norm2.bias"), eps);
        h = RefLinear(RefAct(RefLinear(h, W("mlp.fc1.weight"), W("mlp.fc1.bias")), act), W("mlp.fc2.weight"), W("mlp.fc2.bias"));
        return residual + h;
    }

    /// <summary>CLIPModel.get_image_features: CLIPVisionEmbeddings (patch conv, class token, positions), pre_layrnorm, the encoder,
    /// post_layernorm of position 0, visual_projection.</summary>
    static Tensor RefImageEmbeds(string dir, Tensor pixels)
    {
        using var scope = NewDisposeScope();
        var sd = StateDict(dir);
        var c = RefConfig.Read(dir).Vision;
        int patch = c.GetProperty("patch_size").GetInt32(), hidden = c.GetProperty("hidden_size").GetInt32();
        double eps = c.GetProperty("layer_norm_eps").GetDouble();
        long b = pixels.shape[0];
        var patches = F.conv2d(pixels, sd["vision_model.embeddings.patch_embedding.weight"], strides: [patch, patch]).flatten(2).transpose(1, 2);
        var cls = sd["vision_model.embeddings.class_embedding"].expand(b, 1, -1);
        var embeddings = cat([cls, patches], 1);
        var positions = arange(embeddings.shape[1], dtype: ScalarType.Int64);
        embeddings = embeddings + sd["vision_model.embeddings.position_embedding.weight"].index_select(0, positions);
        var h = RefLayerNorm(embeddings, sd["vision_model.pre_layrnorm.weight"], sd["vision_model.pre_layrnorm.bias"], eps);
        for (int i = 0; i < c.GetProperty("num_hidden_layers").GetInt32(); i++)
            h = RefLayer(sd, $"vision_model.encoder.layers.{i}.", c, h, null, null);
        var pooled = RefLayerNorm(h.select(1, 0), sd["vision_model.post_layernorm.weight"], sd["vision_model.post_layernorm.bias"], eps);
        Assert.Equal(hidden, pooled.shape[1]);
        return RefLinear(pooled, sd["visual_projection.weight"]).MoveToOuterDisposeScope();
    }

    /// <summary>CLIPTextTransformer up to the encoder's last hidden state (before final_layer_norm), and CLIPModel.get_text_features:
    /// token + position embeddings, the causal mask (finfo.min above the diagonal) and the expanded attention mask ((1 - mask) ·
    /// finfo.min), the encoder, final_layer_norm, the pooled position (eos_token_id == 2: argmax of the ids; else the first position
    /// of eos_token_id), text_projection.</summary>
    static (Tensor Hidden, Tensor Embeds) RefText(string dir, Tensor ids, Tensor mask)
    {
        using var scope = NewDisposeScope();
        var sd = StateDict(dir);
        var c = RefConfig.Read(dir).Text;
        double eps = c.GetProperty("layer_norm_eps").GetDouble();
        int eos = c.GetProperty("eos_token_id").GetInt32();
        long b = ids.shape[0], t = ids.shape[1];
        var positions = arange(t, dtype: ScalarType.Int64);
        var h = sd["text_model.embeddings.token_embedding.weight"].index_select(0, ids.reshape(-1)).view(b, t, -1)
            + sd["text_model.embeddings.position_embedding.weight"].index_select(0, positions);
        float min = float.MinValue;
        var causal = full([t, t], min).triu(1).view(1, 1, t, t);
        var inverted = 1.0f - mask.to_type(ScalarType.Float32).view(b, 1, 1, t).expand(b, 1, t, t);
        var padding = inverted.masked_fill(inverted.to_type(ScalarType.Bool), min);
        for (int i = 0; i < c.GetProperty("num_hidden_layers").GetInt32(); i++)
            h = RefLayer(sd, $"text_model.encoder.layers.{i}.", c, h, causal, padding);
        var last = RefLayerNorm(h, sd["text_model.final_layer_norm.weight"], sd["text_model.final_layer_norm.bias"], eps);
        var at = eos == 2 ? ids.to_type(ScalarType.Int32).argmax(-1) : ids.to_type(ScalarType.Int32).eq(eos).to_type(ScalarType.Int32).argmax(-1);
        var pooled = last[arange(b, dtype: ScalarType.Int64), at];
        return (h.MoveToOuterDisposeScope(), RefLinear(pooled, sd["text_projection.weight"]).MoveToOuterDisposeScope());
    }

    /// <summary>CLIPModel.forward's logits: embeds / ‖embeds‖₂, logits_per_text = text @ imageᵀ · exp(logit_scale), logits_per_image its
    /// transpose.</summary>
    static Tensor RefLogitsPerImage(string dir, Tensor imageEmbeds, Tensor textEmbeds)
    {
        var sd = StateDict(dir);
        var image = imageEmbeds / imageEmbeds.norm(-1, true, 2);
        var text = textEmbeds / textEmbeds.norm(-1, true, 2);
        return (matmul(text, image.t()) * sd["logit_scale"].exp()).t();
    }

    static float MaxDiff(Tensor a, Tensor b) => (a - b).abs().max().item<float>();

    static Tensor ToTensor(byte[] raw, params long[] shape)
    {
        var floats = new float[raw.Length / sizeof(float)];
        Buffer.BlockCopy(raw, 0, floats, 0, raw.Length);
        return tensor(floats).reshape(shape);
    }

    async Task<Tensor> Pass(ModelSpec spec, int? window, int? swap = null)
    {
        using var h = new EngineHarness(Sys, spec, 256L << 20);
        var (output, _) = await h.Pass(h.Policy(window, swap));
        var shape = h.Model.ActivationShapes()[^1].Shape;
        return ToTensor(output, shape);
    }

    // ---- the tests ----

    [Fact]
    public async Task Image_and_text_embeddings_and_logits_equal_an_independent_port_of_modeling_clip()
    {
        foreach (var act in new[] { "quick_gelu", "gelu" })
        {
            string dir = Export($"ckpt-{act}", act: act);
            using var pixels = TensorPayloads.ToTensor(Pixels(3, 11));
            var ids = Ids(new long[,] { { Vocab - 2, 17, 250, 3, Vocab - 1, Vocab - 1 }, { Vocab - 2, 40, Vocab - 1, Vocab - 1, Vocab - 1, Vocab - 1 } },
                new long[,] { { 1, 1, 1, 1, 1, 0 }, { 1, 1, 1, 0, 0, 0 } });
            var vision = ModelCatalog.CheckpointSpec(dir, 1, 1, 1, WriteNpy($"pixels-{act}.npy", Pixels(3, 11)));
            var text = ModelCatalog.CheckpointSpec(dir, 1, 1, 1, WriteNpy($"ids-{act}.npy", ids));
            Assert.Equal((Clip.VisionTower, Clip.TextTower), (vision.Name, text.Name));

            using var image = await Pass(vision, 2, 1);
            using var words = await Pass(text, 2, 1);
            using var idsT = TensorPayloads.ToTensor(ids);
            using var refImage = RefImageEmbeds(dir, pixels);
            var (refHidden, refText) = RefText(dir, idsT.select(-1, 0), idsT.select(-1, 1));
            using (refHidden)
            using (refText)
            {
                Assert.Equal(new long[] { 3, 24 }, image.shape);
                Assert.Equal(new long[] { 2, 24 }, words.shape);
                Assert.True(MaxDiff(image, refImage) <= 1e-5, $"{act}: image embeds differ by {MaxDiff(image, refImage)}");
                Assert.True(MaxDiff(words, refText) <= 1e-5, $"{act}: text embeds differ by {MaxDiff(words, refText)}");
                Assert.True(refImage.abs().max().item<float>() > 1, "the reference's embeddings are too small to tell");
                var (logits, probs) = Clip.Similarity(image, words, Clip.ReadLogitScale(dir));
                using var refLogits = RefLogitsPerImage(dir, refImage, refText);
                Assert.True(MaxDiff(logits, refLogits) <= 1e-5, $"{act}: logits differ by {MaxDiff(logits, refLogits)}");
                Assert.True(MaxDiff(probs, refLogits.softmax(1)) <= 1e-6);
                logits.Dispose();
                probs.Dispose();

                // The hidden state at every position, padding included, before final_layer_norm: the padding mask bites there.
                var model = ModelCatalog.Create(text);
                var body = model.Slice(0, model.Layers.Count - 1);
                using var source = new CheckpointWeights(dir);
                using var scope = NewDisposeScope();
                var x = idsT.alias();
                foreach (var layer in body.Layers) x = layer.Forward(source.Load(layer), x);
                Assert.True(MaxDiff(x.narrow(-1, 0, 32), refHidden) <= 1e-5, $"{act}: hidden states differ by {MaxDiff(x.narrow(-1, 0, 32), refHidden)}");
                Assert.Equal(idsT.select(-1, 1).to_type(ScalarType.Float32), x.select(-1, 32)); // the mask travels unchanged
            }
        }
    }

    [Fact]
    public async Task Each_tower_is_bit_identical_to_resident_under_several_windows_and_swaps()
    {
        string dir = Export();
        var ids = Ids(new long[,] { { Vocab - 2, 5, 6, 7, Vocab - 1 }, { Vocab - 2, 9, Vocab - 1, Vocab - 1, Vocab - 1 } },
            new long[,] { { 1, 1, 1, 1, 1 }, { 1, 1, 1, 0, 0 } });
        foreach (var spec in new[]
        {
            ModelCatalog.CheckpointSpec(dir, 1, 1, 1, WriteNpy("pixels.npy", Pixels(2, 5))),
            ModelCatalog.CheckpointSpec(dir, 1, 1, 1, WriteNpy("ids.npy", ids)),
        })
        {
            var model = ModelCatalog.Create(spec);
            Assert.Equal(5, model.Layers.Count);
            using var input = model.MakeInput(spec.Seed);
            await OffloadEquality.AssertBitIdenticalToResident(Sys, model, ModelCatalog.Weights(spec), input,
                [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (4, 3)], label: $"{spec.Name}: ");
        }
    }

    [Fact]
    public async Task Texts_of_different_lengths_in_one_padded_batch_equal_each_text_alone()
    {
        string dir = Export();
        var tokenizer = CheckpointTokenizer.Load(dir);
        var config = ClipConfig.Read(dir);
        string[] texts = ["a cat", "the quick brown fox jumps over", "dog"];
        var batch = Clip.Tokenize(tokenizer, texts, config.Text);
        Assert.Equal(3, batch.Shape.Length);
        using var batched = await Pass(ModelCatalog.CheckpointSpec(dir, 1, 1, 1, WriteNpy("batch.npy", batch)), 2, 1);
        for (int i = 0; i < texts.Length; i++)
        {
            var alone = Clip.Tokenize(tokenizer, [texts[i]], config.Text);
            Assert.True(alone.Shape[1] < batch.Shape[1] || i == 1, "the other texts are padded in the batch");
            using var single = await Pass(ModelCatalog.CheckpointSpec(dir, 1, 1, 1, WriteNpy($"alone-{i}.npy", alone)), 2, 1);
            float diff = MaxDiff(batched[i], single[0]);
            Assert.True(diff <= 1e-5, $"text {i}: batched differs from alone by {diff}");
        }
    }

    [Fact]
    public void Tokenize_wraps_each_text_in_start_and_end_tokens_and_pads_with_the_pad_token_and_mask_zero()
    {
        string dir = Export();
        var tokenizer = CheckpointTokenizer.Load(dir);
        Assert.Equal((Vocab - 2, Vocab - 1, Vocab - 1), (tokenizer.BosId, tokenizer.EosId, tokenizer.PadId));
        var c = ClipConfig.Read(dir).Text;
        var batch = Clip.Tokenize(tokenizer, ["a cat sat", "dog"], c);
        using var t = TensorPayloads.ToTensor(batch);
        var catIds = tokenizer.Encode("a cat sat");
        var dogIds = tokenizer.Encode("dog");
        long[] row0 = [Vocab - 2, .. catIds.Select(i => (long)i), Vocab - 1];
        long[] row1 = [Vocab - 2, .. dogIds.Select(i => (long)i), Vocab - 1, .. Enumerable.Repeat((long)Vocab - 1, row0.Length - dogIds.Count - 2)];
        Assert.Equal(row0, t[0].select(-1, 0).data<long>().ToArray());
        Assert.Equal(row1, t[1].select(-1, 0).data<long>().ToArray());
        Assert.Equal(row0.Select(_ => 1L), t[0].select(-1, 1).data<long>().ToArray());
        Assert.Equal(row1.Select((_, j) => j < dogIds.Count + 2 ? 1L : 0L), t[1].select(-1, 1).data<long>().ToArray());
        var longText = string.Join(" ", Enumerable.Repeat("word", Positions));
        var e = Assert.Throws<ArgumentException>(() => Clip.Tokenize(tokenizer, ["ok", longText], c));
        Assert.Contains("text 2 is", e.Message);
        Assert.Contains($"more than the {Positions} positions", e.Message);
        Assert.Contains("text_config.max_position_embeddings", e.Message);
    }

    /// <summary>eos_token_id picks the pooled position: the first position holding it, or with the legacy 2 the largest id. With
    /// eos_token_id 5 and ids where the two rules disagree (a larger id before the first 5) the rules pool at different positions;
    /// the reference follows each config too.</summary>
    [Fact]
    public async Task The_pooled_position_follows_the_rule_eos_token_id_implies()
    {
        string dir = Export();
        string Variant(string name, int eos)
        {
            string copy = Path.Combine(root, name);
            Directory.CreateDirectory(copy);
            foreach (var f in Directory.GetFiles(dir)) File.Copy(f, Path.Combine(copy, Path.GetFileName(f)));
            var json = JsonNode.Parse(File.ReadAllText(Path.Combine(copy, "config.json")))!;
            json["text_config"]!["eos_token_id"] = eos;
            File.WriteAllText(Path.Combine(copy, "config.json"), json.ToJsonString());
            return copy;
        }
        string first = Variant("first", 5), legacy = Variant("legacy", ClipTextConfig.LegacyEos);
        Assert.False(ClipConfig.Read(first).Text.PoolsAtLargestId);
        Assert.True(ClipConfig.Read(legacy).Text.PoolsAtLargestId);

        // row 0: the largest id (290) at 2, the first 5 at 3; row 1: the first 5 at 1, the largest (280) at 4
        var ids = Ids(new long[,] { { 10, 7, 290, 5, 9, 5 }, { 3, 5, 2, 4, 280, 6 } });
        using var idsT = TensorPayloads.ToTensor(ids);
        var outputs = new List<Tensor>();
        foreach (var d in new[] { first, legacy })
        {
            var engine = await Pass(ModelCatalog.CheckpointSpec(d, 1, 1, 1, WriteNpy($"pool-{Path.GetFileName(d)}.npy", ids)), 2, 1);
            outputs.Add(engine);
            var (h, reference) = RefText(d, idsT.select(-1, 0), idsT.select(-1, 1));
            using (h)
            using (reference)
                Assert.True(MaxDiff(engine, reference) <= 1e-5, $"{d}: pooled embeds differ by {MaxDiff(engine, reference)}");
        }
        for (int row = 0; row < 2; row++)
            Assert.True(MaxDiff(outputs[0][row], outputs[1][row]) > 1e-3, $"row {row}: the two rules pool at different positions");
        foreach (var t in outputs) t.Dispose();
    }

    /// <summary>As WorkspaceAccountingSpec does for GPT-2: the storages each layer's forward leaves in its dispose scope (not the input's,
    /// a weight's or the output's), plus the attention call's scores and softmax, are what the layer declares.</summary>
    [Fact]
    public void Each_layer_declares_the_temporaries_its_forward_holds()
    {
        string dir = Export();
        var ids = Ids(new long[,] { { 298, 5, 6, 299 }, { 298, 9, 299, 299 } }, new long[,] { { 1, 1, 1, 1 }, { 1, 1, 1, 0 } });
        foreach (var spec in new[]
        {
            ModelCatalog.CheckpointSpec(dir, 1, 1, 1, WriteNpy("ws-pixels.npy", Pixels(2, 1))),
            ModelCatalog.CheckpointSpec(dir, 1, 1, 1, WriteNpy("ws-ids.npy", ids)),
        })
        {
            var model = ModelCatalog.Create(spec);
            var acts = model.ActivationShapes();
            using var source = new CheckpointWeights(dir);
            using var input0 = model.MakeInput(1);
            using var scope = NewDisposeScope();
            var x = input0.alias();
            for (int i = 0; i < model.Layers.Count; i++)
            {
                var layer = model.Layers[i];
                var weights = source.Load(layer);
                long held = HeldBytes(layer, weights, x);
                long[] shape = acts[i].Shape;
                long attention = layer is ClipEncoderLayer ? 2L * shape[0] * 4 * shape[1] * shape[1] * sizeof(float) : 0;
                Assert.True(held + attention == layer.WorkspaceBytes(shape),
                    $"{layer.Name}: holds {held} + {attention}, declares {layer.WorkspaceBytes(shape)}");
                using (no_grad()) x = layer.Forward(weights, x);
                foreach (var w in weights.Values) w.Dispose();
            }
        }
    }

    /// <summary>TensorProbe.HeldBytes with every storage read at its own dtype (the text layers hold bool and int32 tensors: the
    /// attention mask's steps, the ids compared with eos).</summary>
    static long HeldBytes(Layer layer, IReadOnlyDictionary<string, Tensor> weights, Tensor input)
    {
        using var scope = NewDisposeScope();
        using var _ = inference_mode();
        var output = layer.Forward(weights, input);
        var outside = weights.Values.Append(input).Append(output).Select(t => Storage(t).Pointer).ToHashSet();
        return scope.DisposablesView.OfType<Tensor>().Select(Storage).Distinct().Where(s => !outside.Contains(s.Pointer)).Sum(s => s.Bytes);
    }

    static (long Pointer, long Bytes) Storage(Tensor t) => t.dtype switch
    {
        ScalarType.Int64 => ((long)t.storage<long>().data_ptr(), (long)t.storage<long>().nbytes()),
        ScalarType.Int32 => ((long)t.storage<int>().data_ptr(), (long)t.storage<int>().nbytes()),
        ScalarType.Bool => ((long)t.storage<bool>().data_ptr(), (long)t.storage<bool>().nbytes()),
        ScalarType.Float32 => ((long)t.storage<float>().data_ptr(), (long)t.storage<float>().nbytes()),
        _ => throw new InvalidOperationException($"no storage reader for {t.dtype}"),
    };

    [Fact]
    public void The_catalog_reads_clip_checkpoints_and_picks_the_tower_by_name_or_input()
    {
        string dir = Export();
        Assert.Contains(ClipConfig.ModelType, ModelCatalog.CheckpointFamilies);
        var seeded = ModelCatalog.CheckpointSpec(dir, 2, 8, 1);
        Assert.Equal(Clip.VisionTower, seeded.Name);
        var vision = ModelCatalog.Create(seeded);
        Assert.Equal(new long[] { 2, 3, ImageSize, ImageSize }, vision.InputShape);
        Assert.Equal(new long[] { 2, 24 }, vision.ActivationShapes()[^1].Shape);
        var text = ModelCatalog.Create(seeded with { Name = Clip.TextTower, Sequence = 8 });
        Assert.Equal(new long[] { 2, 8, 2 }, text.InputShape);
        Assert.Equal(new long[] { 2, 8, 34 }, text.ActivationShapes()[1].Shape);
        var byInput = ModelCatalog.Create(seeded with { Name = ClipConfig.ModelType, Input = WriteNpy("pick.npy", Ids(new long[,] { { 298, 299 } })) });
        Assert.Equal("text.embed", byInput.Layers[0].Name);
        Assert.Contains("<|startoftext|>", Assert.Throws<ArgumentException>(() => ModelCatalog.TokenLimits(dir)).Message); // run --prompt

        var tooLong = Ids(new long[1, Positions + 1]);
        var e = Assert.Throws<ArgumentException>(() => ModelCatalog.CheckpointSpec(dir, 1, 1, 1, WriteNpy("long.npy", tooLong)));
        Assert.Contains($"sequence length {Positions + 1} exceeds text_config.max_position_embeddings ({Positions})", e.Message);
        using var wrong = zeros(1, 3, ImageSize + 1, ImageSize);
        var bad = Assert.Throws<ArgumentException>(() => ModelCatalog.CheckpointSpec(dir, 1, 1, 1, WriteNpy("wrong.npy", TensorPayloads.From(wrong))));
        Assert.Contains("vision_config.num_channels, image_size", bad.Message);

        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!;
        json["vision_config"]!["hidden_act"] = "relu";
        File.WriteAllText(Path.Combine(dir, "config.json"), json.ToJsonString());
        var act = Assert.Throws<CheckpointConfigException>(() => ClipConfig.Read(dir));
        Assert.Contains("\"vision_config.hidden_act\" is \"relu\"", act.Message);
    }

    [Fact]
    public void The_vision_encoder_without_head_gives_an_inner_blocks_hidden_state_under_any_prefix()
    {
        var c = Small().Vision;
        var names = new ClipVisionNames("model.vision_tower.vision_model.", "unused");
        var layers = ClipVision.Encoder(c, names, blocks: 2);
        Assert.Equal(3, layers.Count);
        Assert.All(layers.SelectMany(l => l.Parameters), p => Assert.StartsWith("model.vision_tower.vision_model.", p.Name));
        var model = ClipVision.Model("llava-vision", c, 2, layers);
        Assert.Equal(new long[] { 2, c.Positions, c.Hidden }, model.ActivationShapes()[^1].Shape);
        Assert.Throws<ArgumentOutOfRangeException>(() => ClipVision.Encoder(c, names, blocks: 4));
    }

    // ---- the similarity command, a real process ----


    string Png(string name, int height, int width, Func<int, int, SKColor> colour) => TestImages.Write(Path.Combine(root, name), height, width, colour);

    [Fact]
    public void Similarity_prints_logits_per_image_and_writes_them_as_the_reference_computes_them()
    {
        string dir = Export();
        string a = Png("a.png", 20, 24, (y, x) => new SKColor((byte)(x * 10), (byte)(y * 12), 90));
        string b = Png("b.png", 30, 18, (y, x) => new SKColor((byte)(200 - x * 7), (byte)(x * y % 256), (byte)(y * 8)));
        string npy = Path.Combine(root, "logits.npy");
        string[] texts = ["a cat", "the brown dog sleeps in the sun"];
        var (code, stdout, stderr) = CliProcess.Run(["similarity", "--model", dir, "--image", a, "--image", b, "--text", texts[0], "--text", texts[1],
            "--window", "2", "--swap", "1", "--device-memory", "1MiB", "--output", npy]);
        Assert.True(code == 0, stderr);
        Assert.Contains("logits_per_image", stdout);
        Assert.Contains("a.png", stdout);
        Assert.Contains("the brown dog sleeps in the sun", stdout);

        var (descr, shape, data) = Npy.Read(npy);
        Assert.Equal("<f4", descr);
        Assert.Equal(new long[] { 2, 2 }, shape);
        using var logits = ToTensor(data, 2, 2);
        using var pixels = ImageInput.Load([a, b], ImagePreprocess.ForCheckpoint(dir, ImageSize));
        using var ids = TensorPayloads.ToTensor(Clip.Tokenize(CheckpointTokenizer.Load(dir), texts, ClipConfig.Read(dir).Text));
        using var image = RefImageEmbeds(dir, pixels);
        var (h, text) = RefText(dir, ids.select(-1, 0), ids.select(-1, 1));
        h.Dispose();
        using (text)
        using (var reference = RefLogitsPerImage(dir, image, text))
            Assert.True(MaxDiff(logits, reference) <= 1e-5, $"logits differ from the reference by {MaxDiff(logits, reference)}");

        // run --image streams the vision tower alone: image_embeds, as the reference computes them
        string embeds = Path.Combine(root, "embeds.npy");
        (code, _, stderr) = CliProcess.Run(["run", "--model", dir, "--image", a, "--image", b, "--window", "2", "--output", embeds]);
        Assert.True(code == 0, stderr);
        var (_, embedShape, embedData) = Npy.Read(embeds);
        Assert.Equal(new long[] { 2, 24 }, embedShape);
        using var runEmbeds = ToTensor(embedData, 2, 24);
        Assert.True(MaxDiff(runEmbeds, image) <= 1e-5, $"run --image differs from the reference by {MaxDiff(runEmbeds, image)}");
    }

    [Fact]
    public void Similarity_refuses_an_image_that_does_not_decode_and_a_text_longer_than_the_positions_in_one_line()
    {
        string dir = Export();
        string good = Png("good.png", 16, 16, (y, x) => new SKColor((byte)x, (byte)y, 3));
        string bad = Path.Combine(root, "bad.png");
        File.WriteAllText(bad, "not an image");
        var (code, _, err) = CliProcess.Run(["similarity", "--model", dir, "--image", bad, "--text", "a cat"]);
        Assert.NotEqual(0, code);
        Assert.Single(err.Trim().Split('\n'));
        Assert.Contains("bad.png", err);

        (code, _, err) = CliProcess.Run(["similarity", "--model", dir, "--image", good, "--text", string.Join(" ", Enumerable.Repeat("word", Positions))]);
        Assert.NotEqual(0, code);
        Assert.Single(err.Trim().Split('\n'));
        Assert.Contains("text_config.max_position_embeddings", err);
    }
}
