using System.CommandLine;
using Superpipeline.Contracts;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Engine.Devices;

namespace Superpipeline.Coordinator.Commands;

/// <summary><c>superpipeline host</c>: a cluster member (<see cref="ClusterHost"/>) until Ctrl+C or until its actor system stops.</summary>
public static class HostCommand
{
    public static Command Build()
    {
        var role = new Option<string>("--role") { Description = "coordinator, worker or both", DefaultValueFactory = _ => "both" };
        var hostname = new Option<string>("--hostname")
        {
            Description = "the interface to bind to and to be reached at", DefaultValueFactory = _ => "127.0.0.1",
        };
        var port = new Option<int>("--port") { Description = "TCP port (0 picks a free one)", DefaultValueFactory = _ => 4053 };
        var seed = new Option<string[]>("--seed")
        {
            Description = "host:port of a member to join (repeatable); none founds a new cluster", AllowMultipleArgumentsPerToken = false,
        };
        var devices = new Option<string>("--devices")
        {
            Description = "devices this worker brings: sim:2x4GiB, sim:1GiB@16 (GB/s link), cuda:all", DefaultValueFactory = _ => "sim:1x1GiB",
        };
        var config = new Option<string>("--config") { Description = "a HOCON file whose settings override hocon/ (e.g. TLS)" };
        var host = new Command("host", "Run a cluster member: the coordinator (job manager singleton, client receptionist), a worker (its devices), " +
            "or both. Stops on Ctrl+C.");
        foreach (var o in new Option[] { role, hostname, port, seed, devices, config }) host.Options.Add(o);
        host.SetAction(async (r, cancel) =>
        {
            var roles = r.GetValue(role) switch
            {
                "both" => new[] { "coordinator", "worker" },
                "coordinator" => ["coordinator"],
                "worker" => ["worker"],
                var other => throw new ArgumentException($"--role must be coordinator, worker or both; got '{other}'"),
            };
            int p = r.GetValue(port);
            if (p is < 0 or > 65535) throw new ArgumentException($"--port must be from 0 to 65535; got {p}");
            var deviceSpecs = roles.Contains("worker") ? DeviceSpecs.ParseList(r.GetValue(devices)!) : [];
            var options = new HostOptions(roles, r.GetValue(hostname)!, p, r.GetValue(seed) ?? [], deviceSpecs, ConfigFile.Read(r.GetValue(config)));
            await using var member = ClusterHost.Start(options);
            var brought = deviceSpecs.Count > 0 ? $" with {string.Join(", ", member.Devices.Zip(deviceSpecs, Describe))}" : "";
            Console.WriteLine($"superpipeline host: {string.Join("+", roles)} at {member.Address}{brought}");
            Console.WriteLine($"superpipeline host: listening on {member.Address.Host}:{member.Address.Port}"); // the bound port, also with --port 0
            // Until the member's actor system stops (e.g. it was downed) or Ctrl+C cancels the command.
            await Task.WhenAny(member.System.WhenTerminated, Task.Delay(Timeout.Infinite, cancel));
            return 0;
        });
        return host;
    }

    /// <summary>A device in the start-up line: its name and bytes, and why the bytes are assumed when they are.</summary>
    static string Describe(Accelerator device, DeviceSpec spec) =>
        $"{device.Name} ({device.Memory.Capacity:N0} bytes{(spec.CapacityAssumed ? $", {DeviceSpecs.AssumedCapacityReason}" : "")})";
}

/// <summary>The --config flag of host and submit.</summary>
public static class ConfigFile
{
    /// <summary>The text of a --config file, or null when none was given.</summary>
    public static string? Read(string? file) => file is null ? null
        : File.Exists(file) ? File.ReadAllText(file) : throw new ArgumentException($"--config {file} does not exist");
}
