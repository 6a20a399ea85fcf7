using Akka.Actor;
using Akka.TestKit.Xunit2;
using SkiaSharp;
using Superpipeline.Coordinator.Commands;
using Superpipeline.Engine.Checkpoints;
using Superpipeline.Engine.Generation;
using Superpipeline.Engine.Images;
using Superpipeline.Engine.IO;
using Superpipeline.Workers;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Superpipeline.Tests;

/// <summary>The LLaVA family (issue 9, points 4 and 6): the engine's prefill logits against an independent port of
/// transformers' modeling_llava.py (CLIP's vision encoder to the feature layer, the projector, the masked scatter into Llama's
/// embeddings, Llama's forward) written here from plain TorchSharp ops, in both tensor layouts and both select strategies;
/// greedy tokens offloaded under several (k, k') equal resident ones; config.json as the hub's llava-hf files write it;
/// <c>generate --image</c> on a PNG written here; and one line with a non-zero exit for a missing &lt;image&gt; token, a
/// missing --image, or counts that disagree.</summary>
public sealed class LlavaSpec() : TestKit(WorkerConfig.Load()), IDisposable
{
    readonly string root = Directory.CreateTempSubdirectory("llava-spec-").FullName;

    const int Vocab = 61, ImageToken = 60;

    /// <summary>A decoder of 2 blocks with grouped heads and a 3-block tower over 16-pixel images in patches of 4 (16 patches).</summary>
    static LlavaConfig Small(string strategy = "default", int featureLayer = -2)
    {
        var text = new LlamaConfig(Hidden: 32, Ffn: 48, Layers: 2, Heads: 4, KvHeads: 2, RmsNormEps: 1e-5, RopeTheta: 10000.0, Vocab: Vocab,
            MaxPositions: 64, TieWordEmbeddings: false);
        var vision = new ClipVisionConfig(Hidden: 24, Ffn: 40, Layers: 3, Heads: 4, ImageSize: 16, PatchSize: 4, ProjectionDim: 24);
        var config = new LlavaConfig(text, vision, ImageTokenIndex: ImageToken, VisionFeatureLayer: featureLayer, SelectStrategy: strategy);
        return config with { ImageSeqLength = config.ImageTokens };
    }

    string Export(LlavaConfig config, long seed, LlavaNames? names = null, string? name = null)
    {
        string dir = Path.Combine(root, name ?? Guid.NewGuid().ToString("N")[..8]);
        LlavaExport.Write(dir, config, seed, shards: 2, names);
        return dir;
    }

    string Png(string name, int height, int width, Func<int, int, SKColor> colour) => TestImages.Write(Path.Combine(root, name), height, width, colour);

    string Picture(string name = "picture.png", int seed = 0) =>
        Png(name, 20, 24, (y, x) => new SKColor((byte)(x * 11 + y * 3 + seed), (byte)(x * y + 40 * seed), (byte)(255 - y * 9)));

    // ---- the independent reference: modeling_clip.py, modeling_llava.py and modeling_llama.py over the state dict ----

    static Dictionary<string, Tensor> StateDict(string dir)
    {
        using var ckpt = SafetensorsCheckpoint.Open(dir);
        return ckpt.Names.ToDictionary(n => n, ckpt.Read);
    }

    static Tensor Linear(Tensor x, Tensor w, Tensor? b = null) => b is null ? matmul(x, w.t()) : matmul(x, w.t()) + b;

    /// <summary>LlavaForConditionalGeneration's logits [B, T, V] for token ids [B, T] (image tokens already expanded) and pixel
    /// values [N, 3, S, S]. <paramref name="vision"/>, <paramref name="projector"/>, <paramref name="language"/> and
    /// <paramref name="head"/> are the layout's prefixes, spelled out here rather than taken from the engine's table.</summary>
    static Tensor Reference(string dir, Tensor ids, Tensor pixels, string vision, string projector, string language, string head)
    {
        var c = LlavaConfig.Read(dir);
        var v = c.Vision;
        var t = c.Text;
        var sd = StateDict(dir);
        using var scope = NewDisposeScope();
        using var noGrad = inference_mode();

        // CLIPVisionEmbeddings: patch_embeds = conv(pixels).flatten(2).transpose(1, 2); cat(class_embeds, patch_embeds) +
        // position_embedding(position_ids); then CLIPVisionTransformer's pre_layrnorm.
        long n = pixels.shape[0];
        string e = vision + "embeddings.";
        var patches = F.conv2d(pixels, sd[e + "patch_embedding.weight"], null, [v.PatchSize, v.PatchSize]).flatten(2).transpose(1, 2);
        var cls = sd[e + "class_embedding"].expand(n, 1, -1);
        var hidden = cat([cls, patches], 1) + sd[e + "position_embedding.weight"][arange(v.Positions)];
        hidden = F.layer_norm(hidden, [v.Hidden], sd[vision + "pre_layrnorm.weight"], sd[vision + "pre_layrnorm.bias"], v.LayerNormEps);
        var states = new List<Tensor> { hidden }; // output_hidden_states: the embeddings, then each layer's output
        int d = v.Hidden / v.Heads;
        // hidden_states[vision_feature_layer] depends on the layers before it only (the export writes no others)
        int needed = c.VisionFeatureLayer < 0 ? v.Layers + 1 + c.VisionFeatureLayer : c.VisionFeatureLayer;
        for (int i = 0; i < needed; i++)
        {
            string p = $"{vision}encoder.layers.{i}.";
            long tokens = hidden.shape[1];
            var residual = hidden;
            var h = F.layer_norm(hidden, [v.Hidden], sd[p + "layer_norm1.weight"], sd[p + "layer_norm1.bias"], v.LayerNormEps);
            // CLIPAttention (eager): softmax(q k^T · d^-0.5) v, no mask in the vision tower
            var q = Linear(h, sd[p + "self_attn.q_proj.weight"], sd[p + "self_attn.q_proj.bias"]).view(n, tokens, -1, d).transpose(1, 2);
            var k = Linear(h, sd[p + "self_attn.k_proj.weight"], sd[p + "self_attn.k_proj.bias"]).view(n, tokens, -1, d).transpose(1, 2);
            var val = Linear(h, sd[p + "self_attn.v_proj.weight"], sd[p + "self_attn.v_proj.bias"]).view(n, tokens, -1, d).transpose(1, 2);
            var probs = softmax(matmul(q, k.transpose(2, 3)) * Math.Pow(d, -0.5), -1, ScalarType.Float32);
            var attn = matmul(probs, val).transpose(1, 2).reshape(n, tokens, -1);
            hidden = residual + Linear(attn, sd[p + "self_attn.out_proj.weight"], sd[p + "self_attn.out_proj.bias"]);
            residual = hidden;
            h = F.layer_norm(hidden, [v.Hidden], sd[p + "layer_norm2.weight"], sd[p + "layer_norm2.bias"], v.LayerNormEps);
            h = Linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]);
            h = h * sigmoid(1.702 * h); // QuickGELUActivation
            hidden = residual + Linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"]);
            states.Add(hidden);
        }
        // get_image_features: hidden_states[vision_feature_layer]; "default" drops the class token; the projector.
        var selected = states[needed];
        if (c.SelectStrategy == "default") selected = selected[TensorIndex.Colon, TensorIndex.Slice(1, null)];
        var features = Linear(F.gelu(Linear(selected, sd[projector + "linear_1.weight"], sd[projector + "linear_1.bias"])),
            sd[projector + "linear_2.weight"], sd[projector + "linear_2.bias"]);

        // inputs_embeds.masked_scatter(special_image_mask, image_features): the feature rows, in order, at the image tokens.
        long b = ids.shape[0], len = ids.shape[1];
        var embeds = sd[language + "embed_tokens.weight"][ids].clone();
        var rows = features.reshape(-1, t.Hidden);
        var flatIds = ids.reshape(-1).data<long>().ToArray();
        var flat = embeds.view(-1, t.Hidden);
        long next = 0;
        for (int j = 0; j < flatIds.Length; j++)
            if (flatIds[j] == c.ImageTokenIndex) flat[j].copy_(rows[next++]);
        Assert.Equal(rows.shape[0], next);

        // LlamaModel over inputs_embeds, positions 0..T-1, causal mask; then norm and lm_head.
        int hd = t.Hidden / t.Heads, rep = t.Heads / t.KvHeads;
        var invFreq = 1.0 / tensor(Enumerable.Range(0, hd / 2).Select(i => (float)Math.Pow(t.RopeTheta, 2.0 * i / hd)).ToArray());
        var freqs = outer(arange(len).to_type(ScalarType.Float32), invFreq);
        var emb = cat([freqs, freqs], -1);
        var cos = emb.cos();
        var sin = emb.sin();
        Tensor Rotate(Tensor x) =>
            cat([x[TensorIndex.Ellipsis, TensorIndex.Slice(hd / 2, hd)].neg(), x[TensorIndex.Ellipsis, TensorIndex.Slice(0, hd / 2)]], -1);
        Tensor Rms(Tensor x, Tensor w) => w * (x * rsqrt(x.pow(2).mean([-1], keepdim: true) + t.RmsNormEps));
        var mask = full(len, len, float.NegativeInfinity).triu(1);
        hidden = embeds;
        for (int i = 0; i < t.Layers; i++)
        {
            string p = $"{language}layers.{i}.";
            var residual = hidden;
            var h = Rms(hidden, sd[p + "input_layernorm.weight"]);
            var q = Linear(h, sd[p + "self_attn.q_proj.weight"]).view(b, len, -1, hd).transpose(1, 2);
            var k = Linear(h, sd[p + "self_attn.k_proj.weight"]).view(b, len, -1, hd).transpose(1, 2);
            var val = Linear(h, sd[p + "self_attn.v_proj.weight"]).view(b, len, -1, hd).transpose(1, 2);
            q = q * cos + Rotate(q) * sin;
            k = k * cos + Rotate(k) * sin;
            k = k[TensorIndex.Colon, TensorIndex.Colon, TensorIndex.None].expand(b, t.KvHeads, rep, len, hd).reshape(b, t.Heads, len, hd);
            val = val[TensorIndex.Colon, TensorIndex.Colon, TensorIndex.None].expand(b, t.KvHeads, rep, len, hd).reshape(b, t.Heads, len, hd);
            var probs = softmax(matmul(q, k.transpose(2, 3)) * Math.Pow(hd, -0.5) + mask, -1, ScalarType.Float32);
            var attn = matmul(probs, val).transpose(1, 2).reshape(b, len, -1);
            hidden = residual + Linear(attn, sd[p + "self_attn.o_proj.weight"]);
            residual = hidden;
            h = Rms(hidden, sd[p + "post_attention_layernorm.weight"]);
            var gate = Linear(h, sd[p + "mlp.gate_proj.weight"]);
            hidden = residual + Linear(gate * sigmoid(gate) * Linear(h, sd[p + "mlp.up_proj.weight"]), sd[p + "mlp.down_proj.weight"]);
        }
        var logits = Linear(Rms(hidden, sd[language + "norm.weight"]), sd[head]).MoveToOuterDisposeScope();
        foreach (var w in sd.Values) w.Dispose();
        return logits;
    }

    /// <summary>The engine's prefill on the host: the vision side's layers in order, <see cref="Llava.PrefillInput"/>, then each
    /// decoder layer's generation forward over a fresh KV cache (every position's logits).</summary>
    static Tensor EnginePrefill(string dir, Tensor ids, Tensor pixels)
    {
        var config = LlavaConfig.Read(dir);
        var names = LlavaNames.In(dir);
        var vision = Llava.CreateVision("v", config, (int)pixels.shape[0], names);
        var decoder = Llava.Create("d", config, (int)ids.shape[0], (int)ids.shape[1], names);
        using var source = new CheckpointWeights(dir);
        using var scope = NewDisposeScope();
        using var noGrad = inference_mode();
        var x = pixels.alias();
        foreach (var layer in vision.Layers) x = layer.Forward(source.Load(layer), x);
        x = Llava.PrefillInput(ids, x, config.ImageTokenIndex);
        long b = ids.shape[0], len = ids.shape[1];
        using var step = new StepContext(arange(len).unsqueeze(0).expand(b, len).contiguous(), ones(b, len, ScalarType.Int64), 0, lastPositionOnly: false);
        foreach (var layer in decoder.Layers)
        {
            using var cache = layer.Kv is { } layout ? KvBuffer.Allocate(layout, b, len, ScalarType.Float32, CPU) : null;
            x = layer.Forward(source.Load(layer), x, step, cache);
        }
        return x.MoveToOuterDisposeScope();
    }

    /// <summary>Two prompts of different image placements, each with its image token expanded to the features one image gives.</summary>
    static Tensor Ids(LlavaConfig c)
    {
        long[] a = Llava.ExpandImageTokens([1, 5, ImageToken, 7, 8], ImageToken, c.ImageTokens);
        long[] b = Llava.ExpandImageTokens([ImageToken, 3, 9, 11, 2], ImageToken, c.ImageTokens);
        Assert.Equal(a.Length, b.Length);
        var grid = new long[2, a.Length];
        for (int i = 0; i < a.Length; i++) (grid[0, i], grid[1, i]) = (a[i], b[i]);
        return from_array(grid);
    }

    static void AssertClose(Tensor expected, Tensor actual, double tolerance)
    {
        Assert.Equal(expected.shape, actual.shape);
        double worst = (expected - actual).abs().max().item<float>();
        Assert.True(worst <= tolerance, $"max |difference| {worst:G3} exceeds {tolerance:G3}");
    }

    [Theory]
    [InlineData("current", "default", -2)]
    [InlineData("hub", "default", -2)]
    [InlineData("current", "full", 1)]
    [InlineData("hub", "full", -1)]
    public void Prefill_logits_match_an_independent_reference_of_modeling_llava(string layout, string strategy, int featureLayer)
    {
        var config = Small(strategy, featureLayer);
        var names = layout == "hub" ? LlavaNames.Hub : LlavaNames.Current;
        string dir = Export(config, seed: 5, names);
        Assert.Same(names, LlavaNames.In(dir));
        using var ids = Ids(config);
        using var pixels = randn([2, 3, 16, 16], generator: new Generator(11));
        using var engine = EnginePrefill(dir, ids, pixels);
        using var reference = layout == "hub"
            ? Reference(dir, ids, pixels, "vision_tower.vision_model.", "multi_modal_projector.", "language_model.model.", "language_model.lm_head.weight")
            : Reference(dir, ids, pixels, "model.vision_tower.vision_model.", "model.multi_modal_projector.", "model.language_model.", "lm_head.weight");
        Assert.True(reference.abs().max().item<float>() > 1, "the logits are too small to tell a wrong layer apart");
        AssertClose(reference, engine, 1e-5);

        // The features reach the logits: the same prompts with other pixels give other logits at and after the image tokens.
        using var otherPixels = randn([2, 3, 16, 16], generator: new Generator(12));
        using var other = EnginePrefill(dir, ids, otherPixels);
        Assert.True((other - engine).abs().max().item<float>() > 1e-2, "the image does not change the logits");
    }

    [Fact]
    public void The_prefill_input_carries_ids_and_the_feature_rows_in_order_and_refuses_a_count_that_disagrees()
    {
        using var ids = from_array(new long[,] { { 4, 9, 9, 5 }, { 9, 1, 2, 9 } });
        using var features = arange(2 * 2 * 3, ScalarType.Float32).view(2, 2, 3);
        using var input = Llava.PrefillInput(ids, features, 9);
        Assert.Equal([2L, 4, 4], input.shape);
        float[] expected =
        [
            4, 0, 0, 0, 9, 0, 1, 2, 9, 3, 4, 5, 5, 0, 0, 0,
            9, 6, 7, 8, 1, 0, 0, 0, 2, 0, 0, 0, 9, 9, 10, 11,
        ];
        Assert.Equal(expected, input.data<float>().ToArray());
        using var three = arange(3 * 3, ScalarType.Float32).view(1, 3, 3);
        var e = Assert.Throws<ArgumentException>(() => Llava.PrefillInput(ids, three, 9));
        Assert.Contains("4 image tokens", e.Message);
        Assert.Equal([1L, 5, 5, 5, 2], Llava.ExpandImageTokens([1, 5, 2], 5, 3));
    }

    [Fact]
    public async Task Greedy_tokens_offloaded_equal_resident_and_the_first_is_the_references_argmax()
    {
        var config = Small();
        string dir = Export(config, seed: 9);
        string image = Picture();
        long[] prompt = Llava.ExpandImageTokens([1, 4, ImageToken, 6, 7, 2], ImageToken, config.ImageTokens);
        var request = new GenerationRequest(5, new SamplingSettings(null, null, null, 0));
        var device = new DeviceSpec(DeviceKind.Sim, 64L << 20, null);
        async Task<long[,]> Generate(int? k, int? s, KvPlacement placement = KvPlacement.Device)
        {
            var run = await LlavaGenerate.RunAsync(dir, [image], [prompt], request, new PolicySpec(k, s), placement, device, null, CancellationToken.None);
            Assert.Equal(k ?? 4, run.Result.Report.Window);
            Assert.Equal(Math.Min(k ?? 4, 4), run.Vision.Window);
            return run.Result.Tokens;
        }
        var resident = await Generate(null, null);
        foreach (var (k, s) in new[] { (1, 1), (2, 1), (3, 2), (4, 4) })
            Assert.True(Same(resident, await Generate(k, s)), $"k={k}, k'={s} differs from resident");
        Assert.True(Same(resident, await Generate(2, 2, KvPlacement.Host)), "the KV cache on the host differs");

        using var pixels = ImageInput.Load([image], ImagePreprocess.FromFile(Path.Combine(dir, ImagePreprocess.FileName)));
        using var ids = from_array(prompt).view(1, -1);
        using var reference = Reference(dir, ids, pixels, "model.vision_tower.vision_model.", "model.multi_modal_projector.", "model.language_model.",
            "lm_head.weight");
        long first = reference[0, -1].argmax().item<long>();
        Assert.Equal(first, resident[0, prompt.Length]);
    }

    [Fact]
    public async Task The_vision_side_gives_bit_identical_features_under_every_window_and_swap()
    {
        var config = Small();
        string dir = Export(config, seed: 13);
        var vision = Llava.CreateVision("llava-vision", config, 2, LlavaNames.In(dir));
        using var source = new CheckpointWeights(dir);
        using var pixels = vision.MakeInput(4);
        await OffloadEquality.AssertBitIdenticalToResident(Sys, vision, source, pixels, OffloadEquality.EveryWindowAndSwap(vision.Layers.Count),
            deviceBytes: 64L << 20, eachOutput: output => Assert.Equal([2L, config.ImageTokens, config.Text.Hidden], output.shape));
    }

    static bool Same(long[,] a, long[,] b) =>
        a.GetLength(0) == b.GetLength(0) && a.GetLength(1) == b.GetLength(1) && a.Cast<long>().SequenceEqual(b.Cast<long>());

    /// <summary>Each layer's declared workspace is what its forward leaves in its dispose scope beyond input, weights and output.</summary>
    [Theory]
    [InlineData("default", 2)]
    [InlineData("full", 1)]
    public void The_embedding_and_the_projector_declare_the_temporaries_their_forwards_hold(string strategy, int images)
    {
        var config = Small(strategy);
        var source = new SeededWeights(3);
        var projector = Llava.CreateVision("v", config, images).Layers[^1];
        var embedding = Llava.Create("d", config, 2, 7).Layers[0];
        using var hidden = randn(images, config.Vision.Positions, config.Vision.Hidden);
        using var ids = from_array(new long[,] { { 1, 2, 3, 4, 5, 6, 7 }, { 7, 6, 5, 4, 3, 2, 1 } });
        using var prefill = cat([ids.unsqueeze(-1).to_type(ScalarType.Float32), randn(2, 7, config.Text.Hidden)], -1);
        foreach (var (layer, input) in new[] { (projector, hidden), (embedding, prefill), (embedding, ids) })
        {
            var weights = source.Load(layer);
            long held = HeldBytes(layer, weights, input);
            foreach (var w in weights.Values) w.Dispose();
            Assert.Equal(layer.WorkspaceBytes(input.shape), held);
        }
    }

    static long HeldBytes(Layer layer, IReadOnlyDictionary<string, Tensor> weights, Tensor input)
    {
        static (long, long) Storage(Tensor t) => t.dtype switch
        {
            ScalarType.Int64 => ((long)t.storage<long>().data_ptr(), (long)t.storage<long>().nbytes()),
            ScalarType.Bool => ((long)t.storage<bool>().data_ptr(), (long)t.storage<bool>().nbytes()),
            _ => ((long)t.storage<float>().data_ptr(), (long)t.storage<float>().nbytes()),
        };
        using var scope = NewDisposeScope();
        using var _ = inference_mode();
        var output = layer.Forward(weights, input);
        var outside = weights.Values.Append(input).Append(output).Select(t => Storage(t).Item1).ToHashSet();
        return scope.DisposablesView.OfType<Tensor>().Select(Storage).Distinct().Where(s => !outside.Contains(s.Item1)).Sum(s => s.Item2);
    }

    // ---- config.json ----

    string Config(string json)
    {
        string dir = Path.Combine(root, Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "config.json"), json);
        return dir;
    }

    /// <summary>llava-hf/llava-1.5-7b-hf's config.json as the hub holds it: sub-configs written as their differences from the defaults.</summary>
    const string HubConfig = """
        {
          "architectures": ["LlavaForConditionalGeneration"], "ignore_index": -100, "image_token_index": 32000, "model_type": "llava",
          "pad_token_id": 32001, "projector_hidden_act": "gelu",
          "text_config": {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 4096,
            "model_type": "llama", "rms_norm_eps": 1e-05, "torch_dtype": "float16", "vocab_size": 32064},
          "tie_word_embeddings": false, "torch_dtype": "float16", "transformers_version": "4.36.0.dev0",
          "vision_config": {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
            "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768, "vocab_size": 32000},
          "vision_feature_layer": -2, "vision_feature_select_strategy": "default", "vocab_size": 32064
        }
        """;

    [Fact]
    public void The_hubs_config_reads_with_transformers_defaults_for_the_keys_it_leaves_out()
    {
        var c = LlavaConfig.Read(Config(HubConfig));
        Assert.Equal((4096, 11008, 32, 32, 32, 32064, 4096), (c.Text.Hidden, c.Text.Ffn, c.Text.Layers, c.Text.Heads, c.Text.KvHeads, c.Text.Vocab,
            c.Text.MaxPositions));
        Assert.Equal((1024, 24, 336, 14, "quick_gelu"), (c.Vision.Hidden, c.Vision.Layers, c.Vision.ImageSize, c.Vision.PatchSize, c.Vision.HiddenAct));
        Assert.Equal((32000, 23, 576, "float16"), (c.ImageTokenIndex, c.VisionBlocks, c.ImageTokens, c.TorchDtype));
        var newer = LlavaConfig.Read(Config(HubConfig.Replace("\"image_token_index\"", "\"image_token_id\"").Replace("32000,", "31999,")));
        Assert.Equal(31999, newer.ImageTokenIndex);
        var back = LlavaConfig.Read(Config(Small().ToJson()));
        Assert.Equal(Small(), back);
    }

    [Theory]
    [InlineData("\"vision_feature_layer\": -2", "\"vision_feature_layer\": [-2, -5]", "vision_feature_layer")]
    [InlineData("\"vision_feature_layer\": -2", "\"vision_feature_layer\": -26", "vision_feature_layer")]
    [InlineData("\"vision_feature_select_strategy\": \"default\"", "\"vision_feature_select_strategy\": \"cls\"", "vision_feature_select_strategy")]
    [InlineData("\"projector_hidden_act\": \"gelu\"", "\"projector_hidden_act\": \"relu\"", "projector_hidden_act")]
    [InlineData("\"image_token_index\": 32000", "\"image_token_index\": 40000", "image_token_index")]
    [InlineData("\"model_type\": \"llama\"", "\"model_type\": \"mistral\"", "text_config.model_type")]
    [InlineData("\"model_type\": \"clip_vision_model\"", "\"model_type\": \"siglip_vision_model\"", "vision_config.model_type")]
    [InlineData("\"ignore_index\": -100", "\"image_seq_length\": 577", "image_seq_length")]
    [InlineData("\"patch_size\": 14", "\"patch_size\": 15", "vision_config.image_size")]
    public void A_bad_key_is_one_line_naming_the_file_and_the_key(string from, string to, string key)
    {
        string json = HubConfig.Replace(from, to);
        Assert.NotEqual(HubConfig, json);
        var e = Assert.Throws<CheckpointConfigException>(() => LlavaConfig.Read(Config(json)));
        Assert.Contains($"\"{key}\"", e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void A_checkpoint_of_neither_layout_is_refused_naming_the_directory()
    {
        string dir = Export(Small(), seed: 2);
        foreach (var f in Directory.GetFiles(dir, "*.safetensors*")) File.Delete(f);
        Gpt2Export.Write(Path.Combine(root, "gpt"), new Gpt2Config(Hidden: 8, Layers: 1, Heads: 2, MaxPositions: 8, Vocab: 16), 1);
        foreach (var f in Directory.GetFiles(Path.Combine(root, "gpt"), "*.safetensors*")) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var e = Assert.Throws<ArgumentException>(() => LlavaNames.In(dir));
        Assert.Contains(dir, e.Message);
        Assert.Contains("model.language_model.embed_tokens.weight", e.Message);
    }

    // ---- the CLI, in its own process ----


    string CliCheckpoint()
    {
        string dir = Path.Combine(root, "cli");
        var (code, _, err) = CliProcess.Run("export-demo", "--family", "llava", "--out", dir, "--layers", "2", "--hidden", "32", "--heads", "4", "--ffn", "48",
            "--vocab", "300", "--max-positions", "128", "--image-size", "16", "--patch-size", "4", "--vision-layers", "2", "--seed", "4");
        Assert.True(code == 0, err);
        foreach (var f in new[] { "config.json", "preprocessor_config.json", "tokenizer.model", "tokenizer_config.json" })
            Assert.True(File.Exists(Path.Combine(dir, f)), f);
        Assert.Equal(299, LlavaConfig.Read(dir).ImageTokenIndex);
        Assert.Contains(299, Superpipeline.Engine.Text.CheckpointTokenizer.Load(dir).Encode("a <image> b"));
        return dir;
    }

    const string Prompt = "USER: <image>\nWhat is this? ASSISTANT:";

    [Fact]
    public void Generate_with_an_image_places_its_tokens_and_gives_the_same_tokens_for_every_window()
    {
        string dir = CliCheckpoint();
        string image = Picture("cli.png", seed: 3);
        long[]? first = null;
        foreach (var window in new[] { "all", "1", "3" })
        {
            string output = Path.Combine(root, $"tokens-{window}.npy");
            var (code, stdout, err) = CliProcess.Run("generate", "--model", dir, "--image", image, "--prompt", Prompt, "--max-new-tokens", "4",
                "--window", window, "--output", output);
            Assert.True(code == 0, err + stdout);
            Assert.Contains("vision pass: 1 image(s)", stdout);
            var (descr, shape, data) = Npy.Read(output);
            Assert.Equal("<i8", descr);
            var tokens = Enumerable.Range(0, data.Length / 8).Select(i => BitConverter.ToInt64(data, i * 8)).ToArray();
            Assert.Equal(16, tokens.Count(t => t == 299)); // 16 patches: the <image> expanded in place
            if (first is null) first = tokens;
            else Assert.Equal(first, tokens);
        }

        // Without an image the checkpoint's decoder runs text alone (through the job system, as for llama).
        var (code2, _, err2) = CliProcess.Run("generate", "--model", dir, "--prompt", "USER: hello ASSISTANT:", "--max-new-tokens", "2");
        Assert.True(code2 == 0, err2);
    }

    [Theory]
    [InlineData("no-image-token")]
    [InlineData("no-image-file")]
    [InlineData("counts")]
    public void A_missing_image_token_a_missing_image_or_counts_that_disagree_are_one_line_naming_the_flag(string problem)
    {
        string dir = CliCheckpoint();
        string image = Picture();
        string[] args = problem switch
        {
            "no-image-token" => ["--prompt", "USER: What is this? ASSISTANT:", "--image", image],
            "no-image-file" => ["--prompt", Prompt],
            _ => ["--prompt", "USER: <image> and <image>? ASSISTANT:", "--image", image],
        };
        var (code, _, err) = CliProcess.Run(["generate", "--model", dir, "--max-new-tokens", "2", .. args]);
        Assert.NotEqual(0, code);
        var lines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Single(lines);
        Assert.Contains(problem == "no-image-file" ? "no --image" : "--image", lines[0]);
        Assert.Contains("--prompt", lines[0]);
        Assert.Contains(problem switch { "no-image-token" => "has no image token", "no-image-file" => "holds 1 image token", _ => "holds 2 image token" },
            lines[0]);
    }

    public new void Dispose()
    {
        base.Dispose();
        try { Directory.Delete(root, recursive: true); } catch (IOException) { }
    }
}
