using System.Reflection;

namespace Superpipeline.Tests;

/// <summary>House rules the compiler does not check: the engine is free of actors (neither it nor anything it references,
/// transitively, is an Akka assembly), the contracts depend on nothing, and no source line is over 160 characters.</summary>
public sealed class LayeringTests
{
    [Fact]
    public void Engine_references_no_akka_assembly_even_transitively()
    {
        var seen = new HashSet<string>();
        var queue = new Queue<Assembly>([typeof(ModelCatalog).Assembly]);
        while (queue.Count > 0)
        {
            var assembly = queue.Dequeue();
            foreach (var name in assembly.GetReferencedAssemblies())
            {
                Assert.False(name.Name!.StartsWith("Akka", StringComparison.Ordinal),
                    $"{assembly.GetName().Name} references {name.Name}");
                if (name.Name.StartsWith("Superpipeline", StringComparison.Ordinal) && seen.Add(name.Name))
                    queue.Enqueue(Assembly.Load(name));
            }
        }
        Assert.Contains("Superpipeline.Contracts", seen);
    }

    [Fact]
    public void No_source_line_is_over_160_characters()
    {
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (root is not null && !File.Exists(Path.Combine(root.FullName, "Superpipeline.sln"))) root = root.Parent;
        Assert.NotNull(root);
        var sep = Path.DirectorySeparatorChar;
        var longLines = new[] { "src", "tests", "build" }
            .SelectMany(d => Directory.EnumerateFiles(Path.Combine(root.FullName, d), "*.cs", SearchOption.AllDirectories))
            .Where(f => !f.Contains($"{sep}bin{sep}") && !f.Contains($"{sep}obj{sep}"))
            .SelectMany(f => File.ReadLines(f).Select((line, i) => (File: Path.GetRelativePath(root.FullName, f), Line: i + 1, line.Length)))
            .Where(l => l.Length > 160)
            .Select(l => $"{l.File}:{l.Line} ({l.Length})")
            .ToList();
        Assert.True(longLines.Count == 0, string.Join("\n", longLines));
    }

    [Fact]
    public void Contracts_reference_nothing_but_the_runtime()
    {
        var names = typeof(ModelSpec).Assembly.GetReferencedAssemblies().Select(n => n.Name!).ToList();
        Assert.All(names, n => Assert.True(n.StartsWith("System", StringComparison.Ordinal) || n == "netstandard", n));
    }
}
