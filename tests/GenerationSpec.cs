using Superpipeline.Engine.Generation;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>The engine side of generation, without actors: a step forward over a KV cache gives the logits a full recompute of
/// the whole sequence gives (Llama with grouped heads, GPT-2), a left-padded row gives the logits of its prompt alone, a fully
/// padded query row makes no NaN, and the sampler follows transformers' warpers with one generator per row.</summary>
public sealed class GenerationSpec
{
    static LlamaConfig Grouped() => new(Hidden: 32, Ffn: 48, Layers: 2, Heads: 4, KvHeads: 2, RmsNormEps: 1e-5, RopeTheta: 10000.0,
        Vocab: 61, MaxPositions: 64, TieWordEmbeddings: false);

    static Gpt2Config Small() => new(Hidden: 32, Layers: 2, Heads: 4, MaxPositions: 24, Vocab: 61, Inner: 40);

    /// <summary>The plain forward of every layer over <paramref name="ids"/> (the reference: no cache, no mask, positions 0..T-1).</summary>
    static Tensor Plain(LayeredModel model, IReadOnlyList<IReadOnlyDictionary<string, Tensor>> weights, Tensor ids)
    {
        using var scope = NewDisposeScope();
        using var noGrad = inference_mode();
        var x = ids.alias();
        for (int i = 0; i < model.Layers.Count; i++) x = model.Layers[i].Forward(weights[i], x);
        return x.MoveToOuterDisposeScope();
    }

    /// <summary>Every layer's step forward over its cache (a host buffer of <paramref name="caches"/>, made on first use).</summary>
    static Tensor Step(LayeredModel model, IReadOnlyList<IReadOnlyDictionary<string, Tensor>> weights, Tensor ids, StepContext step,
        KvBuffer?[] caches, long capacity)
    {
        using var scope = NewDisposeScope();
        using var noGrad = inference_mode();
        var x = ids.alias();
        for (int i = 0; i < model.Layers.Count; i++)
        {
            var layer = model.Layers[i];
            if (layer.Kv is { } kv) caches[i] ??= KvBuffer.Allocate(kv, step.Batch, capacity, ScalarType.Float32, CPU);
            x = layer.Forward(weights[i], x, step, caches[i]);
        }
        return x.MoveToOuterDisposeScope();
    }

    static IReadOnlyList<IReadOnlyDictionary<string, Tensor>> Weights(LayeredModel model, long seed)
    {
        var source = new SeededWeights(seed);
        return [.. model.Layers.Select(source.Load)];
    }

    public static TheoryData<string> Families => new() { "llama", "gpt2" };

    static LayeredModel Create(string family, int batch, int sequence) => family == "llama"
        ? Llama.Create("llama", Grouped(), batch, sequence)
        : Gpt2.Create("gpt2", Small(), batch, sequence);

    [Theory]
    [MemberData(nameof(Families))]
    public void Decoding_with_the_kv_cache_gives_the_logits_of_a_full_recompute_of_the_whole_sequence(string family)
    {
        const int batch = 2, prompt = 5, steps = 6;
        var model = Create(family, batch, prompt + steps);
        var weights = Weights(model, seed: 3);
        using var all = model.MakeInput(11); // [2, 11] ids: a prompt of 5, then 6 tokens fed one by one
        var caches = new KvBuffer?[model.Layers.Count];
        var mask = new long[batch, prompt + steps];
        for (int b = 0; b < batch; b++) for (int t = 0; t < prompt + steps; t++) mask[b, t] = 1;
        try
        {
            for (int s = 0; s <= steps; s++)
            {
                long past = s == 0 ? 0 : prompt + s - 1, length = prompt + s;
                using var ids = all.narrow(1, past, length - past);
                using var prefix = all.narrow(1, 0, length);
                using var context = GenerationLoop.Context(Columns(mask, length), past);
                using var cached = Step(model, weights, ids, context, caches, prompt + steps);
                using var full = Plain(model, weights, prefix);
                using var expected = full.narrow(1, length - 1, 1);
                Assert.Equal([batch, 1L, 61], cached.shape);
                double error = (cached - expected).abs().max().item<float>();
                Assert.True(error <= 1e-5, $"{family}, step {s}: the cached logits differ from a full recompute by {error}");
                Assert.True(expected.abs().max().item<float>() > 1, "the logits are too small to show a wrong position or cache");
            }
        }
        finally
        {
            foreach (var c in caches) c?.Dispose();
        }
    }

    [Theory]
    [MemberData(nameof(Families))]
    public void A_left_padded_row_gives_the_logits_of_its_prompt_run_alone_and_a_fully_padded_query_makes_no_nan(string family)
    {
        const int prompt = 6;
        var model = Create(family, 2, prompt);
        var weights = Weights(model, seed: 4);
        using var ids = model.MakeInput(5);
        var mask = new long[2, prompt];
        for (int t = 0; t < prompt; t++) { mask[0, t] = 1; mask[1, t] = t < 3 ? 0 : 1; } // row 1: 3 pads, then 3 tokens
        var caches = new KvBuffer?[model.Layers.Count];
        try
        {
            using var context = GenerationLoop.Context(mask, 0);
            Assert.Equal([1L, 1, 1, 0, 1, 2], context.Positions[1].data<long>().ToArray()); // cumsum(mask) − 1, pads at 1
            using var all = new StepContext(context.Positions.alias(), context.AttentionMask.alias(), 0, lastPositionOnly: false);
            using var logits = Step(model, weights, ids, all, caches, prompt);
            Assert.False(logits.isnan().any().item<bool>(), "a padded query row made NaN");
            using var alone = ids[1].narrow(0, 3, 3).unsqueeze(0);
            using var reference = Plain(model, weights, alone);
            double error = (logits[1].narrow(0, 3, 3) - reference[0]).abs().max().item<float>();
            Assert.True(error <= 1e-5, $"{family}: the padded row differs from its prompt alone by {error}");
        }
        finally
        {
            foreach (var c in caches) c?.Dispose();
        }
    }

    static long[,] Columns(long[,] mask, long length)
    {
        var m = new long[mask.GetLength(0), length];
        for (int b = 0; b < m.GetLength(0); b++) for (int t = 0; t < length; t++) m[b, t] = mask[b, t];
        return m;
    }

    /// <summary>The bytes of every distinct storage a step forward's scope holds at its end that is not the input's, a weight's,
    /// the output's, the step's or the cache's (as TensorProbe.HeldBytes, with boolean masks counted too).</summary>
    static long HeldBytes(Layer layer, IReadOnlyDictionary<string, Tensor> weights, Tensor input, StepContext step, KvBuffer? cache)
    {
        using var scope = NewDisposeScope();
        using var noGrad = inference_mode();
        var output = layer.Forward(weights, input, step, cache);
        var (keys, values) = cache?.Prefix(1) ?? (input, input);
        var outside = weights.Values.Concat([input, output, step.Positions, step.AttentionMask, keys, values]).Select(Storage).ToHashSet();
        return scope.DisposablesView.OfType<Tensor>().Select(t => (Storage(t), StorageBytes(t))).Distinct()
            .Where(s => !outside.Contains(s.Item1)).Sum(s => s.Item2);
    }

    static long Storage(Tensor t) => t.dtype switch
    {
        ScalarType.Int64 => (long)t.storage<long>().data_ptr(),
        ScalarType.Bool => (long)t.storage<bool>().data_ptr(),
        _ => (long)t.storage<float>().data_ptr(),
    };

    static long StorageBytes(Tensor t) => t.dtype switch
    {
        ScalarType.Int64 => (long)t.storage<long>().nbytes(),
        ScalarType.Bool => (long)t.storage<bool>().nbytes(),
        _ => (long)t.storage<float>().nbytes(),
    };

    [Theory]
    [MemberData(nameof(Families))]
    public void A_step_forward_holds_no_more_than_its_workspace_figure_in_the_prefill_and_in_a_decode_step(string family)
    {
        const int batch = 2, prompt = 6;
        var model = Create(family, batch, prompt);
        var weights = Weights(model, seed: 5);
        var mask = new long[batch, prompt + 1];
        for (int t = 0; t <= prompt; t++) { mask[0, t] = 1; mask[1, t] = t < 2 ? 0 : 1; }
        using var ids = model.MakeInput(3);
        using var next = ids.narrow(1, 0, 1).contiguous();
        foreach (var (tokens, past) in new[] { (ids, 0L), (next, (long)prompt) })
        {
            using var step = GenerationLoop.Context(Columns(mask, past + tokens.shape[1]), past);
            using var scope = NewDisposeScope();
            using var noGrad = inference_mode();
            var x = tokens.alias();
            for (int i = 0; i < model.Layers.Count; i++)
            {
                var layer = model.Layers[i];
                KvBuffer? Cache()
                {
                    if (layer.Kv is not { } kv) return null;
                    var cache = KvBuffer.Allocate(kv, batch, prompt + 1, ScalarType.Float32, CPU);
                    using var filler = zeros(kv.Shape(batch, past));
                    if (past > 0) cache.Write(filler, filler);
                    return cache;
                }
                using (var cache = Cache())
                {
                    long held = HeldBytes(layer, weights[i], x, step, cache);
                    long figure = layer.WorkspaceBytes(x.shape, step);
                    Assert.True(held <= figure, $"{family} {layer.Name}, past {past}: holds {held} bytes, its figure is {figure}");
                }
                using var fresh = Cache();
                x = layer.Forward(weights[i], x, step, fresh); // the next layer's input
            }
        }
    }

    [Fact]
    public void Greedy_is_argmax_and_top_k_1_samples_the_argmax_whatever_the_seed()
    {
        using var logits = tensor(new float[] { 0.1f, 2.0f, -1.0f, 1.9f, 0.5f, 0.0f, 3.0f, -2.0f }).view(2, 4);
        using var greedy = new TokenSampler(SamplingSettings.Greedy, 2);
        Assert.Equal([1L, 2], greedy.Next(logits));
        for (long seed = 0; seed < 5; seed++)
        {
            using var topOne = new TokenSampler(new SamplingSettings(Temperature: 0.7, TopK: 1, Seed: seed), 2);
            Assert.Equal([1L, 2], topOne.Next(logits));
        }
    }

    [Fact]
    public void Top_k_and_top_p_only_ever_draw_the_tokens_transformers_keeps()
    {
        // Probabilities 0.5, 0.3, 0.15, 0.05: top-p 0.7 keeps the tokens whose ascending cumulative mass is above 0.3 (0 and 1);
        // top-k 3 keeps 0, 1, 2; together with the temperature first (which does not change the order).
        using var logits = log(tensor(new float[] { 0.5f, 0.3f, 0.15f, 0.05f })).view(1, 4);
        var seen = new HashSet<long>();
        using (var topP = new TokenSampler(new SamplingSettings(TopP: 0.7, Seed: 1), 1))
            for (int i = 0; i < 200; i++) seen.Add(topP.Next(logits)[0]);
        Assert.Equal([0L, 1], seen.Order());
        seen.Clear();
        using (var topK = new TokenSampler(new SamplingSettings(Temperature: 2.0, TopK: 3, Seed: 2), 1))
            for (int i = 0; i < 300; i++) seen.Add(topK.Next(logits)[0]);
        Assert.Equal([0L, 1, 2], seen.Order());
    }

    [Fact]
    public void Each_row_samples_from_its_own_generator_so_its_tokens_do_not_depend_on_the_other_rows()
    {
        using var a = rand([3, 50], generator: new Generator(5));
        using var changed = a.clone();
        changed[0].copy_(rand([50], generator: new Generator(6)));
        using var one = new TokenSampler(new SamplingSettings(Temperature: 1.5, Seed: 9), 3);
        using var two = new TokenSampler(new SamplingSettings(Temperature: 1.5, Seed: 9), 3);
        for (int i = 0; i < 20; i++)
        {
            var x = one.Next(a * 4);
            var y = two.Next(changed * 4);
            Assert.Equal(x[1..], y[1..]);
        }
    }

    [Theory]
    [InlineData(0, null, null, null, "max new tokens must be at least 1; got 0")]
    [InlineData(4, 0.0, null, null, "temperature must be a positive number when sampling; got 0")]
    [InlineData(4, null, 0, null, "top-k must be at least 1; got 0")]
    [InlineData(4, null, null, 1.5, "top-p must be in (0, 1]; got 1.5")]
    [InlineData(4, null, null, 0.0, "top-p must be in (0, 1]; got 0")]
    [InlineData(60, null, null, null, "max new tokens (60) plus the prompt's 5 tokens exceed the model's 64 positions")]
    public void Bad_settings_are_refused_naming_the_field(int maxNew, double? temperature, int? topK, double? topP, string message)
    {
        var request = new GenerationRequest(maxNew, new SamplingSettings(temperature, topK, topP));
        var e = Assert.Throws<FieldException>(() => request.Validate(5, 64, 61));
        Assert.Equal(message, e.Message);
    }
}
