using System.Reflection;
using Superpipeline.Contracts;
using Superpipeline.Engine.Models;
using Xunit;

namespace Superpipeline.Tests;

/// <summary>The engine is free of actors: neither it nor anything it references (transitively) is an Akka assembly.</summary>
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
    public void Contracts_reference_nothing_but_the_runtime()
    {
        var names = typeof(ModelSpec).Assembly.GetReferencedAssemblies().Select(n => n.Name!).ToList();
        Assert.All(names, n => Assert.True(n.StartsWith("System", StringComparison.Ordinal) || n == "netstandard", n));
    }
}
