using Superpipeline.Engine.Policy;
using Superpipeline.Engine.Models;
using System.Collections.Immutable;
using System.Globalization;
using System.Text.Json;

namespace Superpipeline.Engine.Simulation;

/// <summary>Where the KV cache lives during generation.</summary>
public enum KvPlacement
{
    /// <summary>On the device for the whole job, preallocated at prompt + generated tokens; attention runs on the device.</summary>
    Device,
    /// <summary>In host memory; decode attention over it runs on the host CPU (FlexGen's --cpu-cache-compute).</summary>
    Host,
}

/// <summary>What to generate. A job is <see cref="Batch"/> sequences per micro-batch, <see cref="MicroBatches"/>
/// micro-batches, each with a prompt of <see cref="Prompt"/> tokens and <see cref="Generate"/> new tokens.</summary>
/// <param name="ResidentLayers">Layers kept on the device for the whole job (loaded before it starts, never
/// streamed), by index; see <see cref="ResidentSet"/>.</param>
/// <param name="ResidentCount">Alternatively a count, spread evenly over the streamed layers (FlexGen's weight
/// percentage on the GPU, at layer granularity). Ignored when <paramref name="ResidentLayers"/> is not empty.</param>
/// <param name="ActivationsOnHost">Under a batched policy, the hidden states of the micro-batches that are not
/// computing wait in host memory (FlexGen's activation placement), so the device holds one micro-batch's
/// activations instead of all of them. Their copies are not timed (2·h bytes per token per layer: negligible
/// next to weights in decode, about 4 % of compute in the calibrated prefill).</param>
public sealed record Workload(int Batch, int Prompt, int Generate, int MicroBatches = 1, KvPlacement Kv = KvPlacement.Device,
    int ResidentCount = 0, ImmutableArray<int> ResidentLayers = default, bool ActivationsOnHost = false)
{
    public static Workload Default { get; } = new(Batch: 1, Prompt: 512, Generate: 32);

    public Workload Validated(TransformerShape model)
    {
        void Positive(int v, string field)
        {
            if (v < 1) throw new ArgumentException($"workload.{field} must be at least 1; got {v}");
        }
        Positive(Batch, "batch"); Positive(Prompt, "prompt"); Positive(Generate, "generate"); Positive(MicroBatches, "microBatches");
        if ((long)Prompt + Generate > model.MaxPositions)
            throw new ArgumentException($"workload.prompt + workload.generate ({(long)Prompt + Generate}) exceeds {model.Name}'s {model.MaxPositions} "
                + "positions");
        int n = model.Layers + 2;
        if (ResidentCount < 0 || ResidentCount > n) throw new ArgumentException($"workload.residentLayers must be from 0 to {n} (the streamed layers); got "
            + $"{ResidentCount}");
        if (!ResidentLayers.IsDefault)
            foreach (var i in ResidentLayers)
                if (i < 0 || i >= n) throw new ArgumentException($"workload.residentLayers index {i} is outside 0..{n - 1}");
        return this;
    }

    /// <summary>Indices of the layers resident for the whole job, among <paramref name="layers"/> streamed layers.</summary>
    public IReadOnlySet<int> ResidentSet(int layers)
    {
        if (!ResidentLayers.IsDefaultOrEmpty) return ResidentLayers.ToHashSet();
        return PinnedLayers.Spread(ResidentCount, layers);
    }

    /// <summary>Tokens the job generates: every sequence of every micro-batch.</summary>
    public long TokensGenerated => (long)Batch * MicroBatches * Generate;
}

/// <summary>A complete simulation: model, weight format, GPU, host, workload and policy (and the policies to
/// compare). Built in (<c>MODEL@GPU</c>, or a named calibration case) or read from a JSON file; the README
/// documents the schema.</summary>
public sealed record SimulationSpec(
    string Name,
    TransformerShape Model,
    WeightFormat Format,
    GpuSpec Gpu,
    HostSpec Host,
    Workload Workload,
    OffloadPolicy Policy,
    ImmutableArray<OffloadPolicy> Compare,
    string? Notes = null)
{
    public static OffloadPolicy DefaultPolicy { get; } = OffloadPolicy.WindowOf(2, 1);

    /// <summary>Policies for <c>--compare</c>: the spec's list, or sync, the spec's window policy (else window 2/1),
    /// byte budgets of two largest layers both live and ahead (the prefetch budget counts the layer computing, so
    /// this lets one layer load while one computes), batched with the window's (k, k') and the workload's
    /// micro-batches (4 when it has one), and resident.</summary>
    public ImmutableArray<OffloadPolicy> ComparePolicies()
    {
        if (!Compare.IsDefaultOrEmpty) return Compare;
        var bytes = Streamed();
        long largest = bytes.Max();
        var window = Policy.Kind == PolicyKind.Window ? Policy : DefaultPolicy;
        var batched = Policy.Kind == PolicyKind.Batched ? Policy
            : OffloadPolicy.BatchedOf(window.Window, window.Swap, Workload.MicroBatches > 1 ? Workload.MicroBatches : 4);
        var bytePolicy = Policy.Kind == PolicyKind.ByteBudget ? Policy : OffloadPolicy.BytesOf(2 * largest, 2 * largest);
        return [OffloadPolicy.Synchronous, window, bytePolicy, batched, OffloadPolicy.Resident];
    }

    /// <summary>Streamed bytes of each layer (embedding, blocks, head).</summary>
    public long[] Streamed()
    {
        long block = Model.BlockBytes(Format);
        return [Model.EmbeddingBytes(Format), .. Enumerable.Repeat(block, Model.Layers), Model.HeadBytes(Format)];
    }

    public SimulationSpec Validated()
    {
        Model.Validated();
        Gpu.Validated();
        Host.Validated();
        Workload.Validated(Model);
        return this;
    }
}

/// <summary>Built-in specs and the JSON reader.</summary>
public static class SimulationSpecs
{
    /// <summary>Every built-in name: each MODEL@GPU, then the calibration cases.</summary>
    public static IEnumerable<string> BuiltInNames =>
        ModelCatalog.Shapes.SelectMany(m => GpuCatalog.All.Select(g => $"{m.Name}@{g.Name}"))
            .Concat(Calibration.Cases.Select(c => c.Spec.Name));

    /// <summary>A built-in MODEL@GPU spec: fp16 weights, batch 1, prompt 512, 32 new tokens, KV cache on the device,
    /// policy window 2/1.</summary>
    public static SimulationSpec Of(TransformerShape model, GpuSpec gpu) =>
        new SimulationSpec($"{model.Name}@{gpu.Name}", model, WeightFormat.Fp16, gpu, HostSpec.Default, Workload.Default, SimulationSpec.DefaultPolicy,
            []).Validated();

    /// <summary>A file path (JSON) or a built-in name; throws a one-line <see cref="ArgumentException"/> naming what is wrong
    /// (a <see cref="FieldException"/> naming <see cref="FieldException.Spec"/> when the name itself is).</summary>
    public static SimulationSpec Resolve(string fileOrName)
    {
        if (string.IsNullOrWhiteSpace(fileOrName)) throw new FieldException(FieldException.Spec, "must name a JSON file or a built-in spec");
        var text = fileOrName.Trim();
        if (File.Exists(text)) return Parse(File.ReadAllText(text), text);
        if (text.EndsWith(".json", StringComparison.OrdinalIgnoreCase) || text.Contains('/') || text.Contains('\\'))
            throw new FieldException(FieldException.Spec, $"file '{text}' does not exist");
        return BuiltIn(text);
    }

    /// <summary>A built-in spec by name: MODEL@GPU or a calibration case.</summary>
    public static SimulationSpec BuiltIn(string name)
    {
        var calibration = Calibration.Cases.FirstOrDefault(c => string.Equals(c.Spec.Name, name, StringComparison.OrdinalIgnoreCase));
        if (calibration is not null) return calibration.Spec;
        var at = name.Split('@');
        if (at.Length == 2)
        {
            var model = ModelCatalog.FindShape(at[0])
                ?? throw new FieldException(FieldException.Spec, $"'{name}': unknown model '{at[0]}' (known: {KnownModels})");
            var gpu = GpuCatalog.Find(at[1]) ?? throw new FieldException(FieldException.Spec, $"'{name}': unknown GPU '{at[1]}' (known: {KnownGpus})");
            return Of(model, gpu);
        }
        throw new FieldException(FieldException.Spec, $"'{name}' is neither a file nor a built-in spec: use MODEL@GPU (models: {KnownModels}; "
            + $"GPUs: {KnownGpus}) or a calibration case ({string.Join(", ", Calibration.Cases.Select(c => c.Spec.Name))})");
    }

    static string KnownModels => string.Join(", ", ModelCatalog.Shapes.Select(m => m.Name));
    static string KnownGpus => string.Join(", ", GpuCatalog.All.Select(g => g.Name));

    // ------------------------------------------------------------------ JSON

    static readonly string[] TopFields = ["name", "model", "dtype", "gpu", "host", "workload", "policy", "compare", "notes"];
    static readonly string[] ModelFields = ["name", "family", "layers", "hidden", "heads", "kvHeads", "ffn", "vocab", "maxPositions"];
    static readonly string[] GpuFields = ["name", "memoryGiB", "linkGBps", "tflops", "memoryGBps", "latencyUs"];
    static readonly string[] HostFields = ["name", "attentionGflops"];
    static readonly string[] WorkloadFields = ["batch", "prompt", "generate", "microBatches", "kvCache", "activations", "residentLayers"];

    /// <summary>Reads a spec from JSON text (<paramref name="source"/> names it in errors). Every error is one line
    /// naming the field.</summary>
    public static SimulationSpec Parse(string json, string source = "spec")
    {
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { CommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true });
        }
        catch (JsonException e)
        {
            throw new ArgumentException($"{source} is not valid JSON: {e.Message.Split('\n')[0]}");
        }
        using (doc)
        {
            try { return Read(doc.RootElement, source); }
            catch (ArgumentException e) { throw new ArgumentException($"{source}: {e.Message}"); }
        }
    }

    static SimulationSpec Read(JsonElement root, string source)
    {
        if (root.ValueKind != JsonValueKind.Object) throw new ArgumentException("the spec must be a JSON object");
        CheckFields(root, TopFields, "");

        var model = root.TryGetProperty("model", out var m) ? ReadModel(m) : throw new ArgumentException("'model' is missing (a built-in name such as "
            + "llama2-70b, or an object)");
        var gpu = root.TryGetProperty("gpu", out var g) ? ReadGpu(g) : throw new ArgumentException("'gpu' is missing (a built-in name such as a100-80gb, or "
            + "an object)");
        var format = root.TryGetProperty("dtype", out var d) ? WeightFormat.Parse(String(d, "dtype"), "'dtype'") : WeightFormat.Fp16;
        var host = root.TryGetProperty("host", out var h) ? ReadHost(h) : HostSpec.Default;
        var workload = root.TryGetProperty("workload", out var w) ? ReadWorkload(w) : Workload.Default;
        var policy = root.TryGetProperty("policy", out var p) ? OffloadPolicy.Parse(String(p, "policy"), "'policy'") : SimulationSpec.DefaultPolicy;
        ImmutableArray<OffloadPolicy> compare = [];
        if (root.TryGetProperty("compare", out var c))
        {
            if (c.ValueKind != JsonValueKind.Array) throw new ArgumentException("'compare' must be an array of policy strings");
            compare = [.. c.EnumerateArray().Select((e, i) => OffloadPolicy.Parse(String(e, $"compare[{i}]"), $"'compare[{i}]'"))];
        }
        string name = root.TryGetProperty("name", out var n) ? String(n, "name") : Path.GetFileNameWithoutExtension(source);
        string? notes = root.TryGetProperty("notes", out var t) ? String(t, "notes") : null;
        return new SimulationSpec(name, model, format, gpu, host, workload, policy, compare, notes).Validated();
    }

    static TransformerShape ReadModel(JsonElement e)
    {
        if (e.ValueKind == JsonValueKind.String)
        {
            var name = e.GetString()!;
            return ModelCatalog.FindShape(name) ?? throw new ArgumentException($"'model' '{name}' is not a built-in model (known: {KnownModels})");
        }
        if (e.ValueKind != JsonValueKind.Object) throw new ArgumentException("'model' must be a built-in name or an object");
        CheckFields(e, ModelFields, "model.");
        var familyText = Required(e, "family", "model.", String);
        if (!Enum.TryParse<DecoderFamily>(familyText, ignoreCase: true, out var family) || int.TryParse(familyText, out _))
            throw new ArgumentException($"'model.family' must be llama or opt; got '{familyText}'");
        int heads = Required(e, "heads", "model.", Int);
        return new TransformerShape(
            e.TryGetProperty("name", out var n) ? String(n, "model.name") : "custom",
            family,
            Required(e, "layers", "model.", Int),
            Required(e, "hidden", "model.", Int),
            heads,
            e.TryGetProperty("kvHeads", out var kv) ? Int(kv, "model.kvHeads") : heads,
            Required(e, "ffn", "model.", Int),
            Required(e, "vocab", "model.", Int),
            e.TryGetProperty("maxPositions", out var mp) ? Int(mp, "model.maxPositions") : 4096).Validated();
    }

    static GpuSpec ReadGpu(JsonElement e)
    {
        if (e.ValueKind == JsonValueKind.String)
        {
            var builtIn = e.GetString()!;
            return GpuCatalog.Find(builtIn) ?? throw new ArgumentException($"'gpu' '{builtIn}' is not a built-in GPU (known: {KnownGpus})");
        }
        if (e.ValueKind != JsonValueKind.Object) throw new ArgumentException("'gpu' must be a built-in name or an object");
        CheckFields(e, GpuFields, "gpu.");
        string name = e.TryGetProperty("name", out var n) ? String(n, "gpu.name") : "custom-gpu";
        return new GpuSpec(name, name,
            (long)(Required(e, "memoryGiB", "gpu.", Number) * (1L << 30)),
            Required(e, "linkGBps", "gpu.", Number) * 1e9,
            Required(e, "tflops", "gpu.", Number) * 1e12,
            Required(e, "memoryGBps", "gpu.", Number) * 1e9,
            (e.TryGetProperty("latencyUs", out var l) ? NonNegative(l, "gpu.latencyUs") : 10) * 1e-6,
            "from the spec file").Validated();
    }

    static HostSpec ReadHost(JsonElement e)
    {
        if (e.ValueKind != JsonValueKind.Object) throw new ArgumentException("'host' must be an object");
        CheckFields(e, HostFields, "host.");
        return new HostSpec(e.TryGetProperty("name", out var n) ? String(n, "host.name") : "custom-host",
            Required(e, "attentionGflops", "host.", Number) * 1e9, "from the spec file").Validated();
    }

    static Workload ReadWorkload(JsonElement e)
    {
        if (e.ValueKind != JsonValueKind.Object) throw new ArgumentException("'workload' must be an object");
        CheckFields(e, WorkloadFields, "workload.");
        var d = Workload.Default;
        var kv = KvPlacement.Device;
        if (e.TryGetProperty("kvCache", out var k))
        {
            var text = String(k, "workload.kvCache");
            if (!Enum.TryParse(text, ignoreCase: true, out kv) || int.TryParse(text, out _))
                throw new ArgumentException($"'workload.kvCache' must be device or host; got '{text}'");
        }
        bool activationsOnHost = false;
        if (e.TryGetProperty("activations", out var a))
        {
            var text = String(a, "workload.activations");
            if (!Enum.TryParse<KvPlacement>(text, ignoreCase: true, out var placement) || int.TryParse(text, out _))
                throw new ArgumentException($"'workload.activations' must be device or host; got '{text}'");
            activationsOnHost = placement == KvPlacement.Host;
        }
        int count = 0;
        ImmutableArray<int> indices = [];
        if (e.TryGetProperty("residentLayers", out var r))
        {
            if (r.ValueKind == JsonValueKind.Array) indices = [.. r.EnumerateArray().Select((x, i) => Int(x, $"workload.residentLayers[{i}]", min: 0))];
            else count = Int(r, "workload.residentLayers", min: 0);
        }
        return new Workload(
            e.TryGetProperty("batch", out var b) ? Int(b, "workload.batch") : d.Batch,
            e.TryGetProperty("prompt", out var p) ? Int(p, "workload.prompt") : d.Prompt,
            e.TryGetProperty("generate", out var g) ? Int(g, "workload.generate") : d.Generate,
            e.TryGetProperty("microBatches", out var mb) ? Int(mb, "workload.microBatches") : 1,
            kv, count, indices, activationsOnHost);
    }

    static void CheckFields(JsonElement e, string[] known, string prefix)
    {
        foreach (var p in e.EnumerateObject())
            if (!known.Contains(p.Name))
                throw new ArgumentException($"unknown field '{prefix}{p.Name}' (known: {string.Join(", ", known)})");
    }

    static T Required<T>(JsonElement e, string field, string prefix, Func<JsonElement, string, T> read) =>
        e.TryGetProperty(field, out var v) ? read(v, prefix + field) : throw new ArgumentException($"'{prefix}{field}' is missing");

    static string String(JsonElement e, string field) =>
        e.ValueKind == JsonValueKind.String ? e.GetString()! : throw new ArgumentException($"'{field}' must be a string; got {Show(e)}");

    static int Int(JsonElement e, string field) => Int(e, field, min: 1);

    static int Int(JsonElement e, string field, int min)
    {
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out var v))
            throw new ArgumentException($"'{field}' must be a whole number; got {Show(e)}");
        if (v < min) throw new ArgumentException($"'{field}' must be at least {min}; got {v}");
        return v;
    }

    static double Number(JsonElement e, string field)
    {
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetDouble(out var v) || !(v > 0) || double.IsInfinity(v))
            throw new ArgumentException($"'{field}' must be a positive number; got {Show(e)}");
        return v;
    }

    static double NonNegative(JsonElement e, string field)
    {
        if (e.ValueKind != JsonValueKind.Number || !e.TryGetDouble(out var v) || !(v >= 0) || double.IsInfinity(v))
            throw new ArgumentException($"'{field}' must be a number of at least 0; got {Show(e)}");
        return v;
    }

    static string Show(JsonElement e)
    {
        var raw = e.GetRawText();
        return raw.Length > 40 ? raw[..40] + "…" : raw;
    }

    /// <summary>Formats a rate for people: 12.5 GB/s, 21.24 TFLOPS.</summary>
    internal static string F(double v, string format) => v.ToString(format, CultureInfo.InvariantCulture);
}
