using Superpipeline.Contracts;
using Superpipeline.Engine.Simulation;

namespace Superpipeline.Engine.Models;

/// <summary>The one catalog of models: runnable families by name (<see cref="Create"/>, seeded weights), and the
/// published shapes the simulator costs without weights (<see cref="Shapes"/>, from the models' published configurations:
/// Hugging Face config.json of meta-llama/Llama-2-{7b,13b,70b}-hf and facebook/opt-30b; OPT-175B from the OPT paper, table 1).
/// Unknown names are refused with the list of known ones.</summary>
public static class ModelCatalog
{
    public static IReadOnlyList<string> Names { get; } = ["demo", "gpt"];

    public static LayeredModel Create(ModelSpec spec) => spec.Name switch
    {
        "demo" or "gpt" => GptDecoder.Create(spec.Name, GptConfig.From(spec)),
        _ => throw new ArgumentException($"unknown model '{spec.Name}' (known: {string.Join(", ", Names)})"),
    };

    public static IWeightSource Weights(ModelSpec spec) => new SeededWeights(spec.Seed);

    public static IReadOnlyList<TransformerShape> Shapes { get; } =
    [
        new("llama2-7b", DecoderFamily.Llama, Layers: 32, Hidden: 4096, Heads: 32, KvHeads: 32, Ffn: 11008, Vocab: 32000, MaxPositions: 4096),
        new("llama2-13b", DecoderFamily.Llama, Layers: 40, Hidden: 5120, Heads: 40, KvHeads: 40, Ffn: 13824, Vocab: 32000, MaxPositions: 4096),
        new("llama2-70b", DecoderFamily.Llama, Layers: 80, Hidden: 8192, Heads: 64, KvHeads: 8, Ffn: 28672, Vocab: 32000, MaxPositions: 4096),
        new("opt-30b", DecoderFamily.Opt, Layers: 48, Hidden: 7168, Heads: 56, KvHeads: 56, Ffn: 28672, Vocab: 50272, MaxPositions: 2048),
        new("opt-175b", DecoderFamily.Opt, Layers: 96, Hidden: 12288, Heads: 96, KvHeads: 96, Ffn: 49152, Vocab: 50272, MaxPositions: 2048),
    ];

    /// <summary>Published parameter counts the shapes should reproduce (model cards / papers).</summary>
    public static IReadOnlyDictionary<string, double> PublishedParameters { get; } = new Dictionary<string, double>
    {
        ["llama2-7b"] = 6.74e9, ["llama2-13b"] = 13.0e9, ["llama2-70b"] = 69.0e9, ["opt-30b"] = 30.0e9, ["opt-175b"] = 175.0e9,
    };

    public static TransformerShape? FindShape(string name) =>
        Shapes.FirstOrDefault(s => string.Equals(s.Name, name.Trim(), StringComparison.OrdinalIgnoreCase));
}
