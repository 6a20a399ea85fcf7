using Superpipeline.Workers;

namespace Superpipeline.Tests;

/// <summary>superpipeline.worker { } as the node agent reads it: defaults from hocon/, sizes as people write them,
/// and errors that name the key.</summary>
public sealed class WorkerSettingsTests
{
    static WorkerSettings Parse(string overrides, long? available = 8L << 30) =>
        WorkerSettings.Create(WorkerConfig.Load("worker", overrides), () => available);

    [Fact]
    public void Defaults_are_auto_budget_five_minutes_idle_and_one_minute_retention()
    {
        var s = Parse("");
        Assert.Equal(6L << 30, s.HostWeightBudget); // 3/4 of the 8 GiB available
        Assert.Equal(TimeSpan.FromMinutes(5), s.DeploymentIdleTimeout);
        Assert.Equal(TimeSpan.FromMinutes(1), s.AttemptRetention);
        Assert.Null(Parse("", available: null).HostWeightBudget); // unknown memory: no limit
    }

    [Theory]
    [InlineData("superpipeline.worker.host-weight-budget = off", null)]
    [InlineData("superpipeline.worker.host-weight-budget = 12MiB", 12L << 20)]
    [InlineData("superpipeline.worker.host-weight-budget = 1000", 1000L)]
    [InlineData("superpipeline.worker.host-weight-budget = \"1.5 GiB\"", 3L << 29)]
    public void The_budget_is_a_size_auto_or_off(string overrides, long? expected) => Assert.Equal(expected, Parse(overrides).HostWeightBudget);

    [Theory]
    [InlineData("superpipeline.worker.host-weight-budget = lots",
        "superpipeline.worker.host-weight-budget must be 'auto', 'off' or a positive size in bytes (e.g. 8GiB); got 'lots'")]
    [InlineData("superpipeline.worker.host-weight-budget = 0",
        "superpipeline.worker.host-weight-budget must be 'auto', 'off' or a positive size in bytes (e.g. 8GiB); got '0'")]
    [InlineData("superpipeline.worker.deployment-idle-timeout = 0s", "superpipeline.worker.deployment-idle-timeout must be positive")]
    [InlineData("superpipeline.worker.attempt-retention = 0s", "superpipeline.worker.attempt-retention must be positive")]
    public void Bad_values_are_refused_naming_the_key(string overrides, string message) =>
        Assert.Equal(message, Assert.Throws<ArgumentException>(() => Parse(overrides)).Message);

    [Fact]
    public void The_superpipeline_settings_carry_the_worker_settings()
    {
        var config = WorkerConfig.Load(null, "superpipeline.worker.host-weight-budget = 64MiB");
        Assert.Equal(64L << 20, SuperpipelineSettings.Create(config).Worker.HostWeightBudget);
    }
}
