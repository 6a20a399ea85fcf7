using System.Text.Json;
using Superpipeline.Engine.Simulation;

namespace Superpipeline.Tests;

/// <summary>`run --resident-layers` in its own process: the output of resident, the pinned layers in the report, and one-line
/// refusals that name the flag (and the bytes, when the pins do not fit beside the window).</summary>
public sealed class ResidentCliSpec : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("superpipeline-resident-").FullName;
    static readonly string[] Small = ["--layers", "3", "--hidden", "32", "--heads", "4", "--vocab", "64", "--seq-len", "8", "--batch", "2"];
    static readonly ModelSpec SmallSpec = new("demo", 3, 32, 4, 64, 8, 2, ModelSpec.Demo.Seed);


    static string Sha(string report)
    {
        using var json = JsonDocument.Parse(File.ReadAllText(report));
        return json.RootElement.GetProperty("outputSha256").GetString()!;
    }

    [Fact]
    public void Pinned_layers_give_the_resident_output_and_the_summary_names_them()
    {
        string resident = Path.Combine(_dir, "all.json"), pinned = Path.Combine(_dir, "pinned.json");
        var all = CliProcess.Run(["run", .. Small, "--window", "all", "--report", resident]);
        Assert.True(all.Code == 0, all.Err);
        var (code, stdout, stderr) = CliProcess.Run(["run", .. Small, "--window", "1", "--resident-layers", "2", "--report", pinned]);
        Assert.True(code == 0, stderr);
        Assert.Equal(Sha(resident), Sha(pinned));
        Assert.Contains("2 (2, 4) / 0", stdout); // 2 of 5 layers: 2 and 4; a single pass reuses none
        using var json = JsonDocument.Parse(File.ReadAllText(pinned));
        Assert.Equal([2, 4], json.RootElement.GetProperty("pinnedLayers").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal(0, json.RootElement.GetProperty("pinnedReused").GetInt32());
        // Pinned layers are never evicted: the report's per-layer eviction time says they were still resident at the end.
        Assert.All(new[] { 2, 4 }, i => Assert.Equal(-1, json.RootElement.GetProperty("perLayer")[i].GetProperty("evictAt").GetDouble()));
    }

    [Theory]
    [InlineData("-1", "--resident-layers must be a whole number from 0, or 'auto'; got '-1'")]
    [InlineData("two", "--resident-layers must be a whole number from 0, or 'auto'; got 'two'")]
    [InlineData("6", "--resident-layers must be from 0 to 5 (the model's layers) or 'auto'; got 6")]
    public void A_bad_count_is_refused_in_one_line_naming_the_flag(string count, string expected)
    {
        var (code, _, stderr) = CliProcess.Run(["run", .. Small, "--window", "2", "--resident-layers", count]);
        Assert.Equal(1, code);
        Assert.Equal($"superpipeline: {expected}", stderr.Trim());
    }

    [Fact]
    public void Pins_that_do_not_fit_beside_the_window_are_refused_with_the_bytes()
    {
        var cost = ModelCost.From(ModelCatalog.Create(SmallSpec));
        long need = Planner.PinnedNeedBytes(cost, OffloadPolicy.For(new PolicySpec(2, 1, ResidentLayers: 2), cost.Layers.Length));
        // By hand: layers 2 and 4 pinned, the two largest of 0, 1 and 3 in the window, and the activations.
        long[] bytes = [.. cost.Layers.Select(l => l.Bytes)];
        Assert.Equal(bytes[2] + bytes[4] + new[] { bytes[0], bytes[1], bytes[3] }.OrderDescending().Take(2).Sum() + cost.ActivationBoundBytes(), need);
        var (code, _, stderr) = CliProcess.Run(["run", .. Small, "--window", "2", "--resident-layers", "2", "--device-memory", $"{need - 1}"]);
        Assert.Equal(1, code);
        Assert.StartsWith($"superpipeline: --resident-layers 2 with window 2 need {need:N0} bytes on the device (", stderr.Trim());
        Assert.EndsWith($"the device has {need - 1:N0}", stderr.Trim());
        Assert.Single(stderr.Trim().Split('\n'));
        var fits = CliProcess.Run(["run", .. Small, "--window", "2", "--resident-layers", "2", "--device-memory", $"{need}"]);
        Assert.True(fits.Code == 0, fits.Err);
    }

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }
}
