using Superpipeline.Contracts;

namespace Superpipeline.Engine.Models;

/// <summary>Model families by name. Unknown names are refused with the list of known ones.</summary>
public static class ModelCatalog
{
    public static IReadOnlyList<string> Names { get; } = ["demo", "gpt"];

    public static LayeredModel Create(ModelSpec spec) => spec.Name switch
    {
        "demo" or "gpt" => GptDecoder.Create(spec.Name, GptConfig.From(spec)),
        _ => throw new ArgumentException($"unknown model '{spec.Name}' (known: {string.Join(", ", Names)})"),
    };

    public static IWeightSource Weights(ModelSpec spec) => new SeededWeights(spec.Seed);
}
