using Akka.Configuration;
using Superpipeline.Coordinator.Commands;
using Superpipeline.Workers;

namespace Superpipeline.Tests;

/// <summary>What run and submit check against the model's definition before any work: the policy against its layers,
/// the host weights against the memory available and the configured host weight budget.</summary>
public sealed class PreflightTests
{
    static readonly ModelSpec Small = new("demo", Blocks: 3, Hidden: 32, Heads: 4, Vocab: 64, Sequence: 8, Batch: 2, Seed: 1);

    [Fact]
    public void The_budget_is_the_workers_own_reading_of_the_key()
    {
        static Config parse(string hocon) => ConfigurationFactory.ParseString(hocon);
        Assert.Equal(1L << 20, HostWeightLimit.Read(parse($"{HostWeightLimit.BudgetKey} = 1MiB")).BudgetBytes);
        Assert.Null(HostWeightLimit.Read(parse($"{HostWeightLimit.BudgetKey} = off")).BudgetBytes);
        var auto = HostWeightLimit.Read(Config.Empty); // the default is auto: 3/4 of what is available
        Assert.True(auto.AvailableBytes > 0);
        Assert.Equal((long)(auto.AvailableBytes * WorkerSettings.AutoBudgetShare), auto.BudgetBytes);
        var e = Assert.Throws<ArgumentException>(() => HostWeightLimit.Read(parse($"{HostWeightLimit.BudgetKey} = lots")));
        Assert.Contains(HostWeightLimit.BudgetKey, e.Message);
    }

    [Fact]
    public void The_limit_is_the_smaller_of_available_memory_and_budget()
    {
        Assert.Equal(100, new HostWeightLimit(100, "test", null).LimitBytes);
        Assert.Equal(40, new HostWeightLimit(100, "test", 40).LimitBytes);
        Assert.Equal(100, new HostWeightLimit(100, "test", 400).LimitBytes);
    }

    [Fact]
    public void Weights_above_the_budget_are_refused_naming_the_key_and_both_figures()
    {
        var model = ModelCatalog.Create(Small);
        Preflight.HostWeightsFit(model, new HostWeightLimit(model.Bytes, "test", null)); // exactly enough: accepted
        var e = Assert.Throws<ArgumentException>(() => Preflight.HostWeightsFit(model, new HostWeightLimit(1L << 40, "test", model.Bytes - 1)));
        Assert.Contains($"need {model.Bytes:N0} bytes", e.Message);
        Assert.Contains($"the host weight budget of {model.Bytes - 1:N0} bytes", e.Message);
        Assert.Contains(HostWeightLimit.BudgetKey, e.Message);
        Assert.Contains($"with {1L << 40:N0} bytes of memory available (test)", e.Message);
        var a = Assert.Throws<ArgumentException>(() => Preflight.HostWeightsFit(model, new HostWeightLimit(model.Bytes - 1, "MemAvailable", null)));
        Assert.Contains($"the {model.Bytes - 1:N0} bytes", a.Message);
        Assert.Contains("(MemAvailable)", a.Message);
    }

    [Fact]
    public void A_window_the_model_cannot_take_is_refused_naming_the_field_and_auto_is_left_to_the_planner()
    {
        var e = Assert.Throws<FieldException>(() => Preflight.Model(Small, new PolicySpec(9, 1)));
        Assert.Equal(FieldException.Window, e.Field);
        Assert.Equal(5, Preflight.Model(Small, PolicySpec.Planned).Layers.Count);
    }
}
