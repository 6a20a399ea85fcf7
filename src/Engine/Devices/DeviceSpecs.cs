using System.Globalization;
using System.Text.RegularExpressions;
using Superpipeline.Contracts;
using Superpipeline.Engine.Policy;
using TorchSharp;

namespace Superpipeline.Engine.Devices;

/// <summary>Devices as people write them, parsed into <see cref="DeviceSpec"/>s in one place: a kind ("sim", "cuda",
/// "auto") and lists of devices ("sim:2x4GiB", "sim:1GiB@16", "cuda:all", "cuda:2x24GiB"). Refusals are
/// <see cref="FieldException"/>s naming the domain field (<see cref="FieldException.Device"/>, <see cref="FieldException.Devices"/>).</summary>
public static partial class DeviceSpecs
{
    /// <summary>The memory assumed for each GPU of <c>cuda:all</c>: 16 GiB. TorchSharp can count CUDA devices but has
    /// no query for their memory, so the capacity is not measured; write <c>cuda:NxSIZE</c> to give the real figure.</summary>
    public const long AssumedCudaCapacityBytes = 16L << 30;

    /// <summary>Why <see cref="AssumedCudaCapacityBytes"/> is assumed, in a few words for start-up lines.</summary>
    public const string AssumedCapacityReason = "assumed: TorchSharp reports no device memory";

    /// <summary>A kind's text: "sim", "cuda", or "auto" (null: resolved by <see cref="DeviceFactory"/>).</summary>
    public static DeviceKind? ParseKind(string text) => text.Trim().ToLowerInvariant() switch
    {
        "sim" => DeviceKind.Sim,
        "cuda" => DeviceKind.Cuda,
        "auto" => null,
        _ => throw new FieldException(FieldException.Device, $"must be sim, cuda or auto; got '{text}'"),
    };

    /// <summary>Parses a list of devices: "sim:2x4GiB" (two simulated accelerators of 4 GiB), "sim:512MiB@8" (8 GB/s link),
    /// "cuda:all" (every GPU TorchSharp sees, each assumed to hold <see cref="AssumedCudaCapacityBytes"/>) or "cuda:2x24GiB";
    /// several entries may be separated by commas.</summary>
    public static IReadOnlyList<DeviceSpec> ParseList(string text)
    {
        var list = new List<DeviceSpec>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var m = Entry().Match(part);
            if (!m.Success) throw new FieldException(FieldException.Devices, $"entries look like sim:2x4GiB, sim:1GiB@16 or cuda:all; got '{part}'");
            var kind = ParseKind(m.Groups[1].Value);
            double? link = null;
            if (m.Groups[4].Success)
            {
                bool number = double.TryParse(m.Groups[4].Value, NumberStyles.Float, CultureInfo.InvariantCulture, out var gbps);
                if (!number || !(gbps > 0) || double.IsInfinity(gbps))
                    throw new FieldException(FieldException.Devices, $"link must be a positive number of GB/s; got '{part}'");
                link = gbps;
            }
            if (m.Groups[3].Value.Equals("all", StringComparison.OrdinalIgnoreCase))
            {
                if (kind != DeviceKind.Cuda) throw new FieldException(FieldException.Devices, $"only cuda devices can be 'all'; got '{part}'");
                int count = torch.cuda.is_available() ? torch.cuda.device_count() : 0;
                if (count == 0)
                    throw new FieldException(FieldException.Devices, "cuda:all: TorchSharp sees no CUDA device here (the CPU build cannot use CUDA)");
                for (int i = 0; i < count; i++) list.Add(new DeviceSpec(DeviceKind.Cuda, AssumedCudaCapacityBytes, link, CapacityAssumed: true));
                continue;
            }
            int n = m.Groups[2].Success && int.TryParse(m.Groups[2].Value, NumberStyles.None, CultureInfo.InvariantCulture, out var c) ? c
                : m.Groups[2].Success ? 0 : 1;
            if (n < 1) throw new FieldException(FieldException.Devices, $"count must be at least 1; got '{part}'");
            long bytes = ByteSize.Parse(m.Groups[3].Value, FieldException.Devices);
            for (int i = 0; i < n; i++) list.Add(new DeviceSpec(kind, bytes, link));
        }
        return list.Count > 0 ? list : throw new FieldException(FieldException.Devices, "is empty");
    }

    [GeneratedRegex(@"^(sim|cuda):(?:(\d+)x)?([^@]+)(?:@([\d.]+))?$", RegexOptions.IgnoreCase)]
    private static partial Regex Entry();
}
