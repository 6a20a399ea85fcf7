using System.Globalization;
using System.Reflection;
using Akka.Configuration;
using Superpipeline.Engine.Policy;

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
    /// <summary>Where training jobs' checkpoints go (superpipeline.training-checkpoints; a directory every node sees).</summary>
    public string TrainingCheckpoints { get; init; } = DefaultTrainingCheckpoints;
    public static string DefaultTrainingCheckpoints => Path.Combine(Path.GetTempPath(), "superpipeline-training");
    /// <summary>The node agent's settings (superpipeline.worker { }).</summary>
    public WorkerSettings Worker { get; init; } = WorkerSettings.Default;

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
        string checkpoints = s.GetString("training-checkpoints", "");
        return new SuperpipelineSettings(ask, pass, capacity)
        {
            TrainingCheckpoints = string.IsNullOrWhiteSpace(checkpoints) ? DefaultTrainingCheckpoints : Path.GetFullPath(checkpoints),
            Heartbeat = heartbeat, MaxQueuedJobs = queued, MaxRunningJobs = running, ResubmitAfter = resubmit,
            MaxMicroBatches = micro, MaxJobRecords = records, Worker = WorkerSettings.Create(config),
        };
    }
}

/// <summary>Typed view of superpipeline.worker { }: how much host memory a node agent's deployments (the
/// LayerActors holding one model's weights for one layer range) may take, and how long idle state is kept.</summary>
/// <param name="HostWeightBudget">Most bytes of host weights held at once; null: no limit (<c>off</c>).</param>
/// <param name="DeploymentIdleTimeout">A deployment no stage has used for this long is stopped (its weights freed).</param>
/// <param name="AttemptRetention">How long an attempt the coordinator cancelled is remembered after its passes here
/// ended (a late input for it is dropped, not run), and how long an input waits for its stage's assignment.</param>
public sealed record WorkerSettings(long? HostWeightBudget, TimeSpan DeploymentIdleTimeout, TimeSpan AttemptRetention)
{
    /// <summary>The disk tier's host memory for weights (superpipeline.worker.host-memory); null: off. A checkpoint stage whose
    /// stored weights exceed it keeps them in the safetensors files and reads each layer when a pass needs it, all reads of
    /// the node sharing this many bytes.</summary>
    public long? HostMemory { get; init; }

    /// <summary>The share of the host's available memory that <c>host-weight-budget = auto</c> gives to weights.</summary>
    public const double AutoBudgetShare = 0.75;

    /// <summary>No budget, 5 minutes idle, 1 minute retention: what a settings record built without a config has.</summary>
    public static WorkerSettings Default { get; } = new(null, TimeSpan.FromMinutes(5), TimeSpan.FromMinutes(1));

    public static WorkerSettings Create(Config config) => Create(config, Workers.HostMemory.AvailableBytes);

    /// <param name="availableBytes">The host's available memory (null if unknown), read when the budget is <c>auto</c>.</param>
    public static WorkerSettings Create(Config config, Func<long?> availableBytes)
    {
        const string section = "superpipeline.worker";
        var text = config.GetString($"{section}.host-weight-budget", "auto")?.Trim() ?? "auto";
        long? budget = text.ToLowerInvariant() switch
        {
            "off" => null,
            "auto" => availableBytes() is { } available ? (long)(available * AutoBudgetShare) : null,
            _ => ParseSize(text, $"{section}.host-weight-budget", "'auto', 'off' or a positive size in bytes (e.g. 8GiB)"),
        };
        var idle = config.GetTimeSpan($"{section}.deployment-idle-timeout", TimeSpan.FromMinutes(5));
        if (idle <= TimeSpan.Zero) throw new ArgumentException($"{section}.deployment-idle-timeout must be positive");
        var retention = config.GetTimeSpan($"{section}.attempt-retention", TimeSpan.FromMinutes(1));
        if (retention <= TimeSpan.Zero) throw new ArgumentException($"{section}.attempt-retention must be positive");
        var hostMemoryText = config.GetString($"{section}.host-memory", "off")?.Trim() ?? "off";
        long? hostMemory = hostMemoryText.Equals("off", StringComparison.OrdinalIgnoreCase) ? null
            : ParseSize(hostMemoryText, $"{section}.host-memory", "'off' or a positive size in bytes (e.g. 2GiB)");
        return new WorkerSettings(budget, idle, retention) { HostMemory = hostMemory };
    }

    static long ParseSize(string text, string key, string expected)
    {
        try
        {
            return ByteSize.Parse(text, key);
        }
        catch (ArgumentException)
        {
            throw new ArgumentException($"{key} must be {expected}; got '{text}'");
        }
    }
}

/// <summary>The host's memory as the kernel reports it.</summary>
public static class HostMemory
{
    /// <summary>MemAvailable from /proc/meminfo in bytes, or null where it cannot be read (not Linux).</summary>
    public static long? AvailableBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
            {
                if (!line.StartsWith("MemAvailable:", StringComparison.Ordinal)) continue;
                var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return long.Parse(parts[1], CultureInfo.InvariantCulture) * 1024; // the kernel writes kB, meaning KiB
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }
}
