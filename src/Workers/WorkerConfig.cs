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
    /// <summary>How often a worker re-registers its devices with the coordinator.</summary>
    public TimeSpan Heartbeat { get; init; } = TimeSpan.FromSeconds(2);
    /// <summary>Most jobs waiting for placement; past it submissions are refused.</summary>
    public int MaxQueuedJobs { get; init; } = 100;
    /// <summary>Most jobs placed and running at once.</summary>
    public int MaxRunningJobs { get; init; } = 4;
    /// <summary>Answered jobs the coordinator remembers (to answer a resubmitted id without running it again).</summary>
    public int MaxJobRecords { get; init; } = 100_000;
    /// <summary>Most queued jobs of the same model coalesced into one pass as micro-batches.</summary>
    public int MaxMicroBatches { get; init; } = 4;
    /// <summary>How often a client resubmits a job (same id) that has had no answer.</summary>
    public TimeSpan ResubmitAfter { get; init; } = TimeSpan.FromSeconds(10);

    public static SuperpipelineSettings Create(Config config)
    {
        var s = config.GetConfig("superpipeline") ?? throw new ArgumentException("configuration has no superpipeline section");
        var ask = s.GetTimeSpan("ask-timeout", TimeSpan.FromSeconds(30));
        if (ask <= TimeSpan.Zero) throw new ArgumentException("superpipeline.ask-timeout must be positive");
        var pass = s.GetTimeSpan("pass-timeout", TimeSpan.FromMinutes(30));
        if (pass <= TimeSpan.Zero) throw new ArgumentException("superpipeline.pass-timeout must be positive");
        int capacity = config.GetInt("superpipeline.loader-mailbox.mailbox-capacity", 1000);
        if (capacity < 1) throw new ArgumentException("superpipeline.loader-mailbox.mailbox-capacity must be at least 1");
        var heartbeat = s.GetTimeSpan("heartbeat", TimeSpan.FromSeconds(2));
        if (heartbeat <= TimeSpan.Zero) throw new ArgumentException("superpipeline.heartbeat must be positive");
        int queued = s.GetInt("max-queued-jobs", 100);
        if (queued < 1) throw new ArgumentException("superpipeline.max-queued-jobs must be at least 1");
        int running = s.GetInt("max-running-jobs", 4);
        if (running < 1) throw new ArgumentException("superpipeline.max-running-jobs must be at least 1");
        var resubmit = s.GetTimeSpan("resubmit-after", TimeSpan.FromSeconds(10));
        if (resubmit <= TimeSpan.Zero) throw new ArgumentException("superpipeline.resubmit-after must be positive");
        int micro = s.GetInt("max-micro-batches", 4);
        if (micro < 1) throw new ArgumentException("superpipeline.max-micro-batches must be at least 1");
        int records = s.GetInt("max-job-records", 100_000);
        if (records < 1) throw new ArgumentException("superpipeline.max-job-records must be at least 1");
        return new SuperpipelineSettings(ask, pass, capacity) { Heartbeat = heartbeat, MaxQueuedJobs = queued, MaxRunningJobs = running, ResubmitAfter = resubmit, MaxMicroBatches = micro, MaxJobRecords = records };
    }
}
