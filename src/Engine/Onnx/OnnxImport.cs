using System.Collections.Concurrent;
using Superpipeline.Contracts;
using Superpipeline.Engine.Models;

namespace Superpipeline.Engine.Onnx;

/// <summary>A family the importer maps ONNX graphs onto: its layers are the project's own; the graph gives their structure
/// and where every parameter comes from.</summary>
public interface IOnnxFamily
{
    /// <summary>The family's name, as <c>--family</c> takes it and <see cref="ModelSpec.Name"/> carries it.</summary>
    string Name { get; }

    /// <summary>A cheap look at the graph's inputs: true when they are this family's (picks the family when none is given).</summary>
    bool Claims(OnnxGraph graph);

    /// <summary>Follows the graph from its inputs, node by node (operators and the edges between them), to the family's structure
    /// and the table of its parameters; at the first node that does not fit, an <see cref="OnnxException.AtNode"/>.</summary>
    OnnxImported Import(OnnxGraph graph);
}

/// <summary>What an import found: the family, the table from each layer parameter to the graph's constant, and how to build
/// the model for a spec (its batch and sequence, or its input file).</summary>
public sealed record OnnxImported(string Family, IReadOnlyDictionary<string, OnnxParam> Table, Func<ModelSpec, LayeredModel> Create);

/// <summary>The ONNX families this build reads, and the one door <see cref="ModelCatalog"/> goes through for a <c>.onnx</c> model.
/// An imported graph is kept per file (path, size and time written), so the stages and layer actors of one process share one
/// parse instead of reading the file again for each.</summary>
public static class OnnxImport
{
    public static IReadOnlyList<IOnnxFamily> Families { get; } =
    [
        new BertOnnx(),
        new ResNetOnnx(),
    ];

    static readonly ConcurrentDictionary<((string Path, long Length, DateTime Written) File, string Family), Lazy<(OnnxGraph, OnnxImported)>> Cache = new();

    /// <summary>True when <paramref name="path"/> names an ONNX file (by its extension), the models this importer takes.</summary>
    public static bool IsOnnx(string? path) => path is not null && path.EndsWith(".onnx", StringComparison.OrdinalIgnoreCase);

    /// <summary>The family of the graph in <paramref name="path"/>: <paramref name="family"/> when given (checked to be one this
    /// build reads), else the first whose <see cref="IOnnxFamily.Claims"/> takes the graph; one line when none does.</summary>
    public static string FamilyOf(string path, string? family = null)
    {
        if (family is not null) return Find(family).Name;
        var graph = Graph(path);
        return Families.FirstOrDefault(f => f.Claims(graph))?.Name
            ?? throw new OnnxException($"{path}: inputs [{string.Join(", ", graph.Inputs.Select(Describe))}] "
                + $"are not those of a family this build imports ({string.Join(", ", Families.Select(f => f.Name))}); say --family to try one");
    }

    /// <summary>The import of <paramref name="path"/> as <paramref name="family"/>: parsed and followed once per file and family.</summary>
    public static (OnnxGraph Graph, OnnxImported Imported) Import(string path, string family) =>
        Cached(Cache, path, file => (file, family), () =>
        {
            var graph = Graph(path);
            return (graph, Find(family).Import(graph));
        });

    /// <summary>The model of a spec whose <see cref="ModelSpec.Checkpoint"/> is an ONNX file and whose name is its family.</summary>
    public static LayeredModel Create(ModelSpec spec) => Import(spec.Checkpoint!, spec.Name).Imported.Create(spec);

    /// <summary>The host weights of such a spec: the graph's constants by the import's table.</summary>
    public static OnnxWeights Weights(ModelSpec spec)
    {
        var (graph, imported) = Import(spec.Checkpoint!, spec.Name);
        return new OnnxWeights(graph, imported.Table);
    }

    static readonly ConcurrentDictionary<(string Path, long Length, DateTime Written), Lazy<OnnxGraph>> Graphs = new();

    static OnnxGraph Graph(string path) => Cached(Graphs, path, file => file, () => OnnxGraph.Load(path));

    /// <summary>The value <paramref name="cache"/> holds for <paramref name="path"/> as it is now (its full name, length and time
    /// written make the key, with what <paramref name="key"/> adds), made once by <paramref name="make"/>; a failure is not kept,
    /// so the next call tries again.</summary>
    static T Cached<TKey, T>(ConcurrentDictionary<TKey, Lazy<T>> cache, string path, Func<(string, long, DateTime), TKey> key, Func<T> make)
        where TKey : notnull
    {
        var info = new FileInfo(path);
        if (!info.Exists) throw new OnnxException($"{path}: not found");
        var k = key((info.FullName, info.Length, info.LastWriteTimeUtc));
        var lazy = cache.GetOrAdd(k, _ => new Lazy<T>(make));
        try
        {
            return lazy.Value;
        }
        catch
        {
            cache.TryRemove(new KeyValuePair<TKey, Lazy<T>>(k, lazy));
            throw;
        }
    }

    static string Describe(OnnxValue v) => $"{v.Name} {v.ElementType}[{string.Join(",", v.Shape)}]";

    static IOnnxFamily Find(string family) =>
        Families.FirstOrDefault(f => string.Equals(f.Name, family.Trim(), StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"ONNX family '{family}' is not one this build imports (known: {string.Join(", ", Families.Select(f => f.Name))})");
}
