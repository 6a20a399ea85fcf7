namespace Superpipeline.Contracts;

/// <summary>Which model to run and at what shape. <see cref="Name"/> picks the family from the catalog
/// ("demo", or its alias "gpt", is the built-in demo: a GPT-2 (GPT2LMHeadModel: learned positions, LayerNorm, gelu_new,
/// MLP 4 · Hidden wide, head tied to the token embedding) with seeded weights); the other fields size it.</summary>
/// <param name="Blocks">Transformer blocks (GPT-2's n_layer); the model has Blocks + 2 streamed layers (embeddings, blocks, head).</param>
/// <param name="Hidden">Hidden size (n_embd), a multiple of <paramref name="Heads"/> (n_head).</param>
/// <param name="Vocab">Vocabulary size (vocab_size).</param>
/// <param name="Sequence">Tokens per row; for the demo also its positions (n_positions), so its position table is Sequence × Hidden.</param>
/// <param name="Checkpoint">A checkpoint directory (config.json + safetensors) whose weights the job runs; null for the seeded
/// families. Every member reads it from this path, so it must be the same path on each. The size fields then echo its config.</param>
/// <param name="Input">A NumPy .npy file of int64 token ids [batch, seq] to run instead of seeded ids; null for seeded ids.</param>
public sealed record ModelSpec(
    string Name,
    int Blocks,
    int Hidden,
    int Heads,
    int Vocab,
    int Sequence,
    int Batch,
    long Seed,
    string? Checkpoint = null,
    string? Input = null)
{
    public static ModelSpec Demo { get; } = new("demo", Blocks: 24, Hidden: 512, Heads: 8, Vocab: 4096, Sequence: 128, Batch: 4, Seed: 1);

    /// <summary>The one <see cref="LoadDtype"/> there is besides null: every F16/BF16 tensor upcast to float32 as it is read.</summary>
    public const string Float32 = "float32";

    /// <summary>The dtype a checkpoint's weights are loaded in, as Hugging Face's <c>from_pretrained(torch_dtype=...)</c> chooses it:
    /// null keeps each tensor as stored (inference: F16/BF16 stay narrow on the host and the link, widened on the device);
    /// <see cref="Float32"/> upcasts each F16/BF16 tensor to float32 on read (exact), so the host holds and the link carries
    /// float32 (training). Seeded and ONNX weights are float32 either way. Travels with the spec to the workers.</summary>
    public string? LoadDtype { get; init; }
}

/// <summary>The two knobs, and the layers pinned beside them. <see cref="Window"/> null means "all" (everything resident, the
/// baseline, and every layer pinned); <see cref="Swap"/> null means its default (1, or all layers when the window is all).
/// <see cref="Auto"/> asks the planner to choose both for the device's memory from the cost model.</summary>
/// <param name="ResidentLayers">Layers pinned on the device for the whole job (of a stage, when the job runs as several):
/// loaded once, never evicted, outside the window's k slots; spread over the layers as the simulator's resident count is.
/// 0: none.</param>
/// <param name="ResidentAuto">The planner chooses <paramref name="ResidentLayers"/>: the most that fit the device's memory
/// beside the window.</param>
public sealed record PolicySpec(int? Window, int? Swap, bool Auto = false, int ResidentLayers = 0, bool ResidentAuto = false)
{
    public static PolicySpec Resident { get; } = new(null, null);
    public static PolicySpec Planned { get; } = new(null, null, Auto: true);

    /// <summary>True when pins are asked for (a count or auto).</summary>
    public bool Pins => ResidentLayers > 0 || ResidentAuto;

    public override string ToString() =>
        (Auto ? "window=auto" : $"window={(Window?.ToString() ?? "all")}, swap={(Swap?.ToString() ?? "default")}")
        + (ResidentAuto ? ", resident=auto" : ResidentLayers > 0 ? $", resident={ResidentLayers}" : "");
}

/// <summary>A device to create (owned by the engine's DeviceFactory, which makes it; parsed from text by DeviceSpecs):
/// its kind, or null for "auto" (CUDA when TorchSharp sees it, else sim), capacity in bytes, optional emulated link
/// bandwidth. <see cref="CapacityAssumed"/> says the capacity is an assumption (cuda:all), not a figure anyone gave.</summary>
public sealed record DeviceSpec(DeviceKind? Kind, long CapacityBytes, double? LinkGBps, bool CapacityAssumed = false);
