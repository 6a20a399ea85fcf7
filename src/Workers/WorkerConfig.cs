using System.Reflection;
using Akka.Configuration;

namespace Superpipeline.Workers;

/// <summary>The HOCON the host loads: hocon/superpipeline.conf (defaults) under the role's file
/// (coordinator.conf, worker.conf), all embedded from the repository's hocon/ folder.</summary>
public static class WorkerConfig
{
    public static Config Load(string? role = null, string? overrides = null)
    {
        var config = Read("superpipeline.conf");
        if (role is "coordinator" or "worker") config = Read($"{role}.conf").WithFallback(config);
        if (!string.IsNullOrWhiteSpace(overrides)) config = ConfigurationFactory.ParseString(overrides).WithFallback(config);
        return config;
    }

    static Config Read(string file)
    {
        using var stream = Assembly.GetExecutingAssembly().GetManifestResourceStream($"hocon.{file}")
            ?? throw new FileNotFoundException($"embedded configuration hocon/{file} is missing");
        using var reader = new StreamReader(stream);
        return ConfigurationFactory.ParseString(reader.ReadToEnd());
    }
}

/// <summary>Typed view of the superpipeline { } section, validated once with messages that name the key.</summary>
public sealed record SuperpipelineSettings(TimeSpan AskTimeout, TimeSpan PassTimeout, int LoaderMailboxCapacity)
{
    public static SuperpipelineSettings Create(Config config)
    {
        var s = config.GetConfig("superpipeline") ?? throw new ArgumentException("configuration has no superpipeline section");
        var ask = s.GetTimeSpan("ask-timeout", TimeSpan.FromSeconds(30));
        if (ask <= TimeSpan.Zero) throw new ArgumentException("superpipeline.ask-timeout must be positive");
        var pass = s.GetTimeSpan("pass-timeout", TimeSpan.FromMinutes(30));
        if (pass <= TimeSpan.Zero) throw new ArgumentException("superpipeline.pass-timeout must be positive");
        int capacity = config.GetInt("superpipeline.loader-mailbox.mailbox-capacity", 1000);
        if (capacity < 1) throw new ArgumentException("superpipeline.loader-mailbox.mailbox-capacity must be at least 1");
        return new SuperpipelineSettings(ask, pass, capacity);
    }
}
