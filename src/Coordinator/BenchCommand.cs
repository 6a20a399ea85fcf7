using System.CommandLine;

namespace Superpipeline.Coordinator;

public static class BenchCommand
{
    public static Command Build()
    {
        var bench = new Command("bench", "Measure the engine: overhead against a hand-written loop, overlap under link emulation, peak memory.");
        bench.SetAction(_ => { Console.Error.WriteLine("superpipeline: bench is not built yet"); return 1; });
        return bench;
    }
}
