namespace Superpipeline.Engine.Policy;

/// <summary>Input the engine refuses, naming the domain field it came from (<see cref="Field"/>: "window", "swap",
/// "policy") and what is wrong with it (<see cref="Problem"/>). The message reads "window must be from 1 to 5 ...";
/// a front end that took the field from one of its own inputs names that input instead (the CLI: "--window must be
/// from 1 to 5 ...") by joining its name to <see cref="Problem"/>, never by rewriting the message.</summary>
public sealed class FieldException(string field, string problem) : ArgumentException($"{field} {problem}")
{
    public const string Window = "window", Swap = "swap", Policy = "policy";

    /// <summary>Layers pinned on the device for the whole job (<c>PolicySpec.ResidentLayers</c>).</summary>
    public const string ResidentLayers = "resident layers";

    /// <summary>Device fields: a device's kind (sim, cuda, auto), a list of devices to create, a device's memory in bytes.</summary>
    public const string Device = "device", Devices = "devices", DeviceMemory = "device memory";

    /// <summary>The disk tier's host memory for weights read from a checkpoint.</summary>
    public const string HostMemory = "host memory";

    /// <summary>Model shape fields (<c>ModelSpec</c>): transformer blocks, hidden size, attention heads, vocabulary,
    /// sequence length, batch size; and a simulation spec (a file or a built-in MODEL@GPU name).</summary>
    public const string Blocks = "blocks", Hidden = "hidden", Heads = "heads", Vocab = "vocab", Sequence = "sequence length",
        Batch = "batch", Spec = "spec";

    public string Field { get; } = field;
    public string Problem { get; } = problem;

    /// <summary>The same refusal in the words of a front end that calls the field <paramref name="name"/>.</summary>
    public string MessageFor(string name) => $"{name} {Problem}";
}
