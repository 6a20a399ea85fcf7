using System.Buffers.Binary;
using System.Collections.Immutable;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Checkpoints;

// Why the header is parsed here rather than through a package:
// TorchSharp.PyBridge offers Safetensors.LoadStateDict(path, keysToKeep), which can skip unwanted keys, but every call reopens
// the file and re-parses the header, it validates nothing beyond each kept tensor's byte count (no bounds, overlap or coverage
// checks, errors that do not name the file), knows nothing of sharded checkpoints (model.safetensors.index.json), and its
// writer does not promise Hugging Face's byte layout. The format itself is small (an 8-byte length, a JSON header, one data
// region), so parsing it here with System.Text.Json costs about as much code as adapting the package, adds no dependency, and
// lets each error name the file and the tensor.
//
// Tensors are read with RandomAccess (one positioned read per tensor, straight into the storage of a fresh CPU tensor) rather
// than memory-mapped: a read costs exactly the tensor's bytes, the tensor owns its memory (no view whose lifetime is tied to a
// mapping), and the open handle is the only resource to release.

/// <summary>A safetensors file or checkpoint is malformed or lacks what was asked for. The message is one line naming the
/// file and, when one is concerned, the tensor.</summary>
public sealed class SafetensorsException(string file, string? tensor, string problem)
    : Exception(tensor is null ? $"{file}: {problem}" : $"{file}: tensor '{tensor}': {problem}")
{
    public string File { get; } = file;
    public string? Tensor { get; } = tensor;
}

/// <summary>One tensor's header entry: its dtype as stored ("F32", "BF16", ...), shape, and byte range
/// [<see cref="Begin"/>, <see cref="End"/>) relative to the start of the data region.</summary>
public sealed record SafetensorsEntry(string Name, string Dtype, ImmutableArray<long> Shape, long Begin, long End)
{
    public long ByteLength => End - Begin;
}

/// <summary>The dtypes of the format: element sizes, the TorchSharp types they read into, and the writer's ordering.</summary>
public static class SafetensorsDtypes
{
    // Element size in bytes of every dtype the format defines, so a file holding dtypes we do not read still validates.
    private static readonly ImmutableDictionary<string, int> Sizes = new Dictionary<string, int>
    {
        ["BOOL"] = 1, ["U8"] = 1, ["I8"] = 1, ["F8_E5M2"] = 1, ["F8_E4M3"] = 1, ["I16"] = 2, ["U16"] = 2, ["F16"] = 2,
        ["BF16"] = 2, ["I32"] = 4, ["U32"] = 4, ["F32"] = 4, ["F64"] = 8, ["I64"] = 8, ["U64"] = 8,
    }.ToImmutableDictionary();

    private static readonly ImmutableDictionary<string, ScalarType> Readable = new Dictionary<string, ScalarType>
    {
        ["F32"] = ScalarType.Float32, ["F16"] = ScalarType.Float16, ["BF16"] = ScalarType.BFloat16,
        ["I64"] = ScalarType.Int64, ["I32"] = ScalarType.Int32, ["F64"] = ScalarType.Float64, ["I16"] = ScalarType.Int16,
        ["I8"] = ScalarType.Int8, ["U8"] = ScalarType.Byte, ["BOOL"] = ScalarType.Bool,
    }.ToImmutableDictionary();

    // The reference writer sorts tensors by its Dtype enum in descending order (the enum is declared in increasing
    // alignment), then by name. Ranks follow that declaration order: BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16,
    // I32, U32, F32, F64, I64, U64.
    private static readonly ImmutableArray<string> Order =
        ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64"];

    public static bool IsKnown(string dtype) => Sizes.ContainsKey(dtype);

    public static int SizeOf(string dtype) => Sizes[dtype];

    public static bool TryScalarType(string dtype, out ScalarType type) => Readable.TryGetValue(dtype, out type);

    public static string Of(ScalarType type) =>
        Readable.FirstOrDefault(kv => kv.Value == type).Key ?? throw new ArgumentException($"tensor dtype {type} has no safetensors dtype");

    internal static int Rank(string dtype) => Order.IndexOf(dtype);

    internal static string ReadableList => string.Join(", ", Readable.Keys.OrderBy(k => k, StringComparer.Ordinal));
}

/// <summary>One open safetensors file: the header is read and validated on open; tensors are read one at a time by name.
/// Validation follows the reference implementation: the header starts with '{', tensors sorted by offset cover the data
/// region contiguously from 0 to its end with no gap or overlap, and each range holds exactly dtype size x elements.</summary>
public sealed class SafetensorsFile : IDisposable
{
    /// <summary>The reference implementation refuses headers above 100 MB.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    /// <summary>The largest single read into a tensor's storage (a Span is int-sized).</summary>
    public const int DefaultChunkBytes = 1 << 30;

    private readonly SafeFileHandle handle;
    private readonly int chunkBytes;
    private readonly ImmutableDictionary<string, SafetensorsEntry> entries;
    private long bytesRead;

    private SafetensorsFile(string path, SafeFileHandle handle, long dataStart, long dataLength,
        ImmutableDictionary<string, SafetensorsEntry> entries, ImmutableDictionary<string, string> metadata, long headerBytes, int chunkBytes)
    {
        Path = path;
        this.chunkBytes = chunkBytes;
        this.handle = handle;
        DataStart = dataStart;
        DataLength = dataLength;
        this.entries = entries;
        Metadata = metadata;
        bytesRead = headerBytes;
    }

    public string Path { get; }

    /// <summary>Offset of the data region in the file: 8 + the header's length.</summary>
    public long DataStart { get; }

    public long DataLength { get; }

    /// <summary>The optional "__metadata__" map (empty when absent).</summary>
    public ImmutableDictionary<string, string> Metadata { get; }

    /// <summary>Tensor names in data order.</summary>
    public IEnumerable<string> Names => entries.Values.OrderBy(e => e.Begin).ThenBy(e => e.End).Select(e => e.Name);

    /// <summary>Bytes read from the file so far: the length prefix and header, then each tensor read.</summary>
    public long BytesRead => Interlocked.Read(ref bytesRead);

    public bool Contains(string name) => entries.ContainsKey(name);

    public SafetensorsEntry Entry(string name) =>
        entries.TryGetValue(name, out var e) ? e : throw new SafetensorsException(Path, name, "no such tensor in the file");

    /// <summary>Opens and validates a file. <paramref name="chunkBytes"/> caps each positioned read (tests lower it).</summary>
    public static SafetensorsFile Open(string path, int chunkBytes = DefaultChunkBytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(chunkBytes, 1);
        SafeFileHandle handle;
        try { handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess); }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            throw new SafetensorsException(path, null, "file not found");
        }
        try
        {
            return Parse(path, handle, chunkBytes);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private static SafetensorsFile Parse(string path, SafeFileHandle handle, int chunkBytes)
    {
        long fileLength = RandomAccess.GetLength(handle);
        if (fileLength < 8) throw new SafetensorsException(path, null, $"file is {fileLength} bytes, shorter than the 8-byte header length");
        Span<byte> prefix = stackalloc byte[8];
        ReadExactly(path, null, handle, prefix, 0);
        ulong n = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
        if (n > MaxHeaderBytes) throw new SafetensorsException(path, null, $"header length {n} exceeds the format's limit of {MaxHeaderBytes} bytes");
        if (8 + (long)n > fileLength)
            throw new SafetensorsException(path, null, $"header length {n} runs past the end of the file ({fileLength} bytes)");
        var header = new byte[n];
        ReadExactly(path, null, handle, header, 8);
        long dataStart = 8 + (long)n;
        long dataLength = fileLength - dataStart;
        var (entries, metadata) = ParseHeader(path, header);
        Validate(path, entries.Values, dataLength);
        return new SafetensorsFile(path, handle, dataStart, dataLength, entries, metadata, dataStart, chunkBytes);
    }

    private static (ImmutableDictionary<string, SafetensorsEntry>, ImmutableDictionary<string, string>) ParseHeader(string path, byte[] header)
    {
        if (header.Length == 0 || header[0] != (byte)'{') throw new SafetensorsException(path, null, "header does not start with '{'");
        JsonDocument doc;
        try { doc = JsonDocument.Parse(header); }
        catch (JsonException e) { throw new SafetensorsException(path, null, $"header is not valid JSON: {OneLine(e.Message)}"); }
        using (doc)
        {
            var entries = ImmutableDictionary.CreateBuilder<string, SafetensorsEntry>(StringComparer.Ordinal);
            var metadata = ImmutableDictionary.CreateBuilder<string, string>(StringComparer.Ordinal);
            bool sawMetadata = false;
            foreach (var property in doc.RootElement.EnumerateObject())
            {
                string name = property.Name;
                if (name == "__metadata__")
                {
                    if (sawMetadata) throw new SafetensorsException(path, null, "header has \"__metadata__\" twice");
                    sawMetadata = true;
                    ParseMetadata(path, property.Value, metadata);
                    continue;
                }
                if (entries.ContainsKey(name)) throw new SafetensorsException(path, name, "appears twice in the header");
                entries[name] = ParseEntry(path, name, property.Value);
            }
            return (entries.ToImmutable(), metadata.ToImmutable());
        }
    }

    private static void ParseMetadata(string path, JsonElement value, ImmutableDictionary<string, string>.Builder metadata)
    {
        if (value.ValueKind != JsonValueKind.Object) throw new SafetensorsException(path, null, "\"__metadata__\" is not an object of strings");
        foreach (var kv in value.EnumerateObject())
        {
            if (kv.Value.ValueKind != JsonValueKind.String)
                throw new SafetensorsException(path, null, $"\"__metadata__\" key '{kv.Name}' is not a string");
            metadata[kv.Name] = kv.Value.GetString()!;
        }
    }

    private static SafetensorsEntry ParseEntry(string path, string name, JsonElement value)
    {
        if (value.ValueKind != JsonValueKind.Object) throw new SafetensorsException(path, name, "header entry is not an object");
        if (!value.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
            throw new SafetensorsException(path, name, "header entry has no \"dtype\" string");
        string dtype = dtypeElement.GetString()!;
        if (!SafetensorsDtypes.IsKnown(dtype)) throw new SafetensorsException(path, name, $"unknown dtype '{dtype}'");
        var shape = Integers(path, name, value, "shape", -1);
        var offsets = Integers(path, name, value, "data_offsets", 2);
        return new SafetensorsEntry(name, dtype, shape, offsets[0], offsets[1]);
    }

    private static ImmutableArray<long> Integers(string path, string name, JsonElement entry, string key, int count)
    {
        if (!entry.TryGetProperty(key, out var array) || array.ValueKind != JsonValueKind.Array)
            throw new SafetensorsException(path, name, $"header entry has no \"{key}\" array");
        var values = ImmutableArray.CreateBuilder<long>();
        foreach (var item in array.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !item.TryGetInt64(out long v) || v < 0)
                throw new SafetensorsException(path, name, $"\"{key}\" holds {OneLine(item.GetRawText())}, not a non-negative integer");
            values.Add(v);
        }
        if (count >= 0 && values.Count != count)
            throw new SafetensorsException(path, name, $"\"{key}\" has {values.Count} values, not {count}");
        return values.ToImmutable();
    }

    private static void Validate(string path, IEnumerable<SafetensorsEntry> entries, long dataLength)
    {
        long expectedBegin = 0;
        SafetensorsEntry? previous = null;
        foreach (var e in entries.OrderBy(e => e.Begin).ThenBy(e => e.End))
        {
            if (e.End < e.Begin) throw new SafetensorsException(path, e.Name, $"data_offsets [{e.Begin}, {e.End}) end before they begin");
            if (e.End > dataLength)
                throw new SafetensorsException(path, e.Name, $"data_offsets [{e.Begin}, {e.End}) run past the end of the {dataLength}-byte data region");
            if (e.Begin < expectedBegin)
                throw new SafetensorsException(path, e.Name, $"data_offsets [{e.Begin}, {e.End}) overlap tensor '{previous!.Name}' ending at {expectedBegin}");
            if (e.Begin > expectedBegin)
                throw new SafetensorsException(path, e.Name, $"data_offsets [{e.Begin}, {e.End}) leave a gap after byte {expectedBegin}"
                    + " (tensors must cover the data region contiguously)");
            long needed = ByteLength(path, e);
            if (needed != e.ByteLength)
                throw new SafetensorsException(path, e.Name, $"holds {e.ByteLength} bytes but {e.Dtype}[{string.Join(",", e.Shape)}] needs {needed}");
            expectedBegin = e.End;
            previous = e;
        }
        if (expectedBegin != dataLength)
        {
            string last = previous is null ? "no tensor" : $"tensor '{previous.Name}'";
            throw new SafetensorsException(path, previous?.Name,
                $"data region is {dataLength} bytes but the tensors cover {expectedBegin} (after {last}); the format requires them to cover it all");
        }
    }

    private static long ByteLength(string path, SafetensorsEntry e)
    {
        try
        {
            long elements = 1;
            foreach (long d in e.Shape) elements = checked(elements * d);
            return checked(elements * SafetensorsDtypes.SizeOf(e.Dtype));
        }
        catch (OverflowException) { throw new SafetensorsException(path, e.Name, $"shape [{string.Join(",", e.Shape)}] overflows"); }
    }

    /// <summary>Reads one tensor into a new contiguous CPU tensor of its stored dtype; only that tensor's bytes are read.</summary>
    public Tensor Read(string name)
    {
        var e = Entry(name);
        if (!SafetensorsDtypes.TryScalarType(e.Dtype, out var type))
            throw new SafetensorsException(Path, name, $"dtype {e.Dtype} is not read (readable: {SafetensorsDtypes.ReadableList})");
        var tensor = empty([.. e.Shape], type, device: CPU);
        try
        {
            ReadInto(tensor, e);
            return tensor;
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    private void ReadInto(Tensor tensor, SafetensorsEntry e)
    {
        // TorchSharp exposes a CPU tensor's storage as a Span (int-sized), so large tensors are read in slices of a flat view.
        using var flat = tensor.flatten();
        long elements = flat.NumberOfElements, elementSize = flat.ElementSize;
        long perChunk = Math.Max(1, chunkBytes / elementSize);
        for (long done = 0; done < elements; done += perChunk)
        {
            long count = Math.Min(perChunk, elements - done);
            using var slice = flat.narrow(0, done, count);
            ReadExactly(Path, e.Name, handle, slice.bytes, DataStart + e.Begin + done * elementSize);
        }
        Interlocked.Add(ref bytesRead, e.ByteLength);
    }

    private static void ReadExactly(string path, string? tensor, SafeFileHandle handle, Span<byte> buffer, long offset)
    {
        while (buffer.Length > 0)
        {
            int n = RandomAccess.Read(handle, buffer, offset);
            if (n == 0) throw new SafetensorsException(path, tensor, $"file ends at byte {offset}, before the data it declares (truncated while open?)");
            buffer = buffer[n..];
            offset += n;
        }
    }

    private static string OneLine(string s) => s.ReplaceLineEndings(" ");

    public void Dispose() => handle.Dispose();
}

/// <summary>A checkpoint directory: one model.safetensors, or shards listed by model.safetensors.index.json ("weight_map":
/// tensor name -> file). Files open lazily, the first time one of their tensors is asked for, and only the tensors asked for are
/// read. Thread-safe.</summary>
public sealed class SafetensorsCheckpoint : IDisposable
{
    public const string SingleFile = "model.safetensors";
    public const string IndexFile = "model.safetensors.index.json";

    private readonly Lock gate = new();
    private readonly Dictionary<string, SafetensorsFile> open = new(StringComparer.Ordinal);
    private readonly ImmutableDictionary<string, string>? weightMap;
    private bool disposed;

    private SafetensorsCheckpoint(string directory, ImmutableDictionary<string, string>? weightMap)
    {
        Directory = directory;
        this.weightMap = weightMap;
    }

    public string Directory { get; }

    /// <summary>True when the checkpoint is sharded (read through the index).</summary>
    public bool IsSharded => weightMap is not null;

    /// <summary>File names opened so far, in ordinal order.</summary>
    public ImmutableArray<string> OpenedFiles
    {
        get { lock (gate) return [.. open.Keys.Order(StringComparer.Ordinal)]; }
    }

    /// <summary>Bytes read from every opened file so far (headers and tensors).</summary>
    public long BytesRead
    {
        get { lock (gate) return open.Values.Sum(f => f.BytesRead); }
    }

    public static SafetensorsCheckpoint Open(string directory)
    {
        string indexPath = System.IO.Path.Combine(directory, IndexFile);
        if (File.Exists(indexPath)) return new SafetensorsCheckpoint(directory, ReadIndex(indexPath));
        if (File.Exists(System.IO.Path.Combine(directory, SingleFile))) return new SafetensorsCheckpoint(directory, null);
        throw new SafetensorsException(directory, null, $"holds neither {SingleFile} nor {IndexFile}");
    }

    private static ImmutableDictionary<string, string> ReadIndex(string indexPath)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllBytes(indexPath)); }
        catch (JsonException e) { throw new SafetensorsException(indexPath, null, $"is not valid JSON: {e.Message.ReplaceLineEndings(" ")}"); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("weight_map", out var map)
                || map.ValueKind != JsonValueKind.Object)
                throw new SafetensorsException(indexPath, null, "has no \"weight_map\" object");
            var result = ImmutableDictionary.CreateBuilder<string, string>(StringComparer.Ordinal);
            foreach (var kv in map.EnumerateObject())
            {
                string? file = kv.Value.ValueKind == JsonValueKind.String ? kv.Value.GetString() : null;
                if (string.IsNullOrEmpty(file) || file != System.IO.Path.GetFileName(file) || file is "." or "..")
                    throw new SafetensorsException(indexPath, kv.Name, $"maps to {kv.Value.GetRawText()}, not a file name in the checkpoint directory");
                result[kv.Name] = file;
            }
            return result.ToImmutable();
        }
    }

    /// <summary>Every tensor name of the checkpoint. For a single file this opens it (the header only).</summary>
    public IEnumerable<string> Names => weightMap?.Keys.Order(StringComparer.Ordinal) ?? FileFor(SingleFile, null).Names;

    /// <summary>The file (name within the directory) that holds a tensor, without opening it.</summary>
    public string FileOf(string name)
    {
        if (weightMap is null) return SingleFile;
        return weightMap.TryGetValue(name, out var file) ? file
            : throw new SafetensorsException(System.IO.Path.Combine(Directory, IndexFile), name, "is not in the weight_map");
    }

    /// <summary>The header entry of a tensor (dtype, shape, byte range); opens its file but reads no tensor data.</summary>
    public SafetensorsEntry Entry(string name) => Resolve(name).Entry(name);

    /// <summary>Reads one tensor into a new CPU tensor of its stored dtype.</summary>
    public Tensor Read(string name) => Resolve(name).Read(name);

    private SafetensorsFile Resolve(string name)
    {
        var file = FileFor(FileOf(name), name);
        if (!file.Contains(name))
            throw new SafetensorsException(file.Path, name, weightMap is null ? "no such tensor in the file" : "is listed in the index but not in this shard");
        return file;
    }

    private SafetensorsFile FileFor(string fileName, string? tensor)
    {
        lock (gate)
        {
            ObjectDisposedException.ThrowIf(disposed, this);
            if (open.TryGetValue(fileName, out var file)) return file;
            string path = System.IO.Path.Combine(Directory, fileName);
            if (!File.Exists(path))
                throw new SafetensorsException(path, tensor, weightMap is null ? "file not found" : $"shard listed in {IndexFile} is missing");
            file = SafetensorsFile.Open(path);
            open[fileName] = file;
            return file;
        }
    }

    public void Dispose()
    {
        lock (gate)
        {
            disposed = true;
            foreach (var f in open.Values) f.Dispose();
            open.Clear();
        }
    }
}

/// <summary>Writes safetensors in Hugging Face's byte layout: tensors sorted by dtype (widest first, in the reference
/// implementation's enum order) then by name, offsets contiguous from 0, a compact JSON header with "__metadata__" first and
/// each entry's keys in the order dtype, shape, data_offsets, padded with spaces to a multiple of 8 bytes, then the raw
/// little-endian bytes. Sharded checkpoints follow transformers' save_pretrained: model-0000i-of-0000N.safetensors and
/// model.safetensors.index.json with {"metadata": {"total_parameters": ..., "total_size": ...}, "weight_map": {...}}, keys
/// sorted, indented by 2 (recent transformers write total_parameters; older ones only total_size, which readers use).</summary>
public static class SafetensorsWriter
{
    /// <summary>The metadata transformers writes into every checkpoint file.</summary>
    public static readonly ImmutableDictionary<string, string> TransformersMetadata =
        ImmutableDictionary<string, string>.Empty.Add("format", "pt");

    private const int ChunkBytes = 1 << 30;

    /// <summary>Writes one safetensors file. <paramref name="metadata"/> (if any) becomes "__metadata__" with keys in ordinal
    /// order (the reference implementation holds it in a hash map, so its order there is unspecified).</summary>
    public static void WriteFile(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var sorted = Sorted(tensors);
        var header = Header(sorted, metadata);
        // Written beside the target and moved into place, so a reader never sees half a file.
        string partial = path + ".partial";
        using (var stream = new FileStream(partial, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16))
        {
            Span<byte> prefix = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)header.Length);
            stream.Write(prefix);
            stream.Write(header);
            foreach (var (_, _, tensor) in sorted) WriteBytes(stream, tensor);
        }
        File.Move(partial, path, overwrite: true);
    }

    /// <summary>Writes a checkpoint into <paramref name="directory"/>: model.safetensors when <paramref name="shards"/> is 1,
    /// else that many shards plus the index. Tensors go to shards in the order given (e.g. layer order), split into contiguous
    /// groups of about equal bytes, every shard holding at least one tensor. As save_pretrained does, weight files of an earlier
    /// save (model.safetensors, its index, model-*-of-*.safetensors) are removed first, so the directory holds one checkpoint.
    /// Returns the file names written.</summary>
    public static ImmutableArray<string> WriteCheckpoint(string directory, IEnumerable<KeyValuePair<string, Tensor>> tensors, int shards = 1,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        if (shards < 1) throw new ArgumentOutOfRangeException(nameof(shards), $"shards {shards} is below 1");
        if (shards > list.Count) throw new ArgumentOutOfRangeException(nameof(shards), $"shards {shards} exceeds the {list.Count} tensors");
        metadata ??= TransformersMetadata;
        System.IO.Directory.CreateDirectory(directory);
        foreach (string stale in System.IO.Directory.EnumerateFiles(directory, "model-*-of-*.safetensors")
                     .Append(System.IO.Path.Combine(directory, SafetensorsCheckpoint.SingleFile))
                     .Append(System.IO.Path.Combine(directory, SafetensorsCheckpoint.IndexFile)).ToList())
            File.Delete(stale);
        if (shards == 1)
        {
            WriteFile(System.IO.Path.Combine(directory, SafetensorsCheckpoint.SingleFile), list, metadata);
            return [SafetensorsCheckpoint.SingleFile];
        }
        var groups = Split(list, shards);
        var names = ImmutableArray.CreateBuilder<string>();
        var weightMap = new List<(string Tensor, string File)>();
        long totalSize = 0, totalParameters = 0;
        for (int i = 0; i < groups.Count; i++)
        {
            string file = $"model-{i + 1:D5}-of-{shards:D5}.safetensors";
            WriteFile(System.IO.Path.Combine(directory, file), groups[i], metadata);
            names.Add(file);
            foreach (var kv in groups[i])
            {
                weightMap.Add((kv.Key, file));
                totalSize += Bytes(kv.Value);
                totalParameters += kv.Value.NumberOfElements;
            }
        }
        string index = IndexJson(totalParameters, totalSize, weightMap);
        File.WriteAllText(System.IO.Path.Combine(directory, SafetensorsCheckpoint.IndexFile), index, new UTF8Encoding(false));
        return names.ToImmutable();
    }

    /// <summary>The index as transformers writes it: json.dumps(index, indent=2, sort_keys=True) + "\n". total_parameters is the
    /// element count of the tensors written (transformers counts the model's parameters: the same when every saved tensor is one).
    /// </summary>
    public static string IndexJson(long totalParameters, long totalSize, IEnumerable<(string Tensor, string File)> weightMap)
    {
        var sb = new StringBuilder("{\n  \"metadata\": {\n");
        sb.Append("    \"total_parameters\": ").Append(totalParameters.ToString(CultureInfo.InvariantCulture)).Append(",\n");
        sb.Append("    \"total_size\": ").Append(totalSize.ToString(CultureInfo.InvariantCulture)).Append("\n  },\n");
        sb.Append("  \"weight_map\": {");
        bool first = true;
        foreach (var (tensor, file) in weightMap.OrderBy(w => w.Tensor, StringComparer.Ordinal))
        {
            sb.Append(first ? "\n" : ",\n").Append("    ").Append(PythonJsonString(tensor)).Append(": ").Append(PythonJsonString(file));
            first = false;
        }
        sb.Append(first ? "}\n}\n" : "\n  }\n}\n");
        return sb.ToString();
    }

    private static List<List<KeyValuePair<string, Tensor>>> Split(List<KeyValuePair<string, Tensor>> list, int shards)
    {
        long total = Math.Max(1, list.Sum(kv => Bytes(kv.Value)));
        var groups = new List<List<KeyValuePair<string, Tensor>>> { new() };
        long before = 0;
        for (int i = 0; i < list.Count; i++)
        {
            long size = Bytes(list[i].Value);
            int s = groups.Count - 1;
            // The shard whose share of the bytes holds this tensor's midpoint; never skip a shard, and leave one tensor for each
            // shard still empty.
            long wanted = Math.Min(shards - 1, (2 * before + size) * shards / (2 * total));
            bool mustAdvance = groups[s].Count > 0 && list.Count - i <= shards - 1 - s;
            if (groups[s].Count > 0 && s < shards - 1 && (wanted > s || mustAdvance)) groups.Add([]);
            groups[^1].Add(list[i]);
            before += size;
        }
        return groups;
    }

    private static List<(string Name, string Dtype, Tensor Tensor)> Sorted(IEnumerable<KeyValuePair<string, Tensor>> tensors)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var list = new List<(string Name, string Dtype, Tensor Tensor)>();
        foreach (var (name, tensor) in tensors)
        {
            if (string.IsNullOrEmpty(name) || name == "__metadata__") throw new ArgumentException($"tensor name '{name}' is reserved or empty");
            if (!seen.Add(name)) throw new ArgumentException($"tensor '{name}' is given twice");
            list.Add((name, SafetensorsDtypes.Of(tensor.dtype), tensor));
        }
        return [.. list.OrderByDescending(t => SafetensorsDtypes.Rank(t.Dtype)).ThenBy(t => t.Name, StringComparer.Ordinal)];
    }

    private static byte[] Header(List<(string Name, string Dtype, Tensor Tensor)> sorted, IReadOnlyDictionary<string, string>? metadata)
    {
        var sb = new StringBuilder("{");
        bool first = true;
        if (metadata is { Count: > 0 })
        {
            sb.Append("\"__metadata__\":{");
            sb.AppendJoin(',', metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => $"{SerdeString(kv.Key)}:{SerdeString(kv.Value)}"));
            sb.Append('}');
            first = false;
        }
        long offset = 0;
        foreach (var (name, dtype, tensor) in sorted)
        {
            long n = Bytes(tensor);
            if (!first) sb.Append(',');
            sb.Append(SerdeString(name)).Append(":{\"dtype\":\"").Append(dtype).Append("\",\"shape\":[")
                .AppendJoin(',', tensor.shape.Select(d => d.ToString(CultureInfo.InvariantCulture)))
                .Append("],\"data_offsets\":[").Append(offset.ToString(CultureInfo.InvariantCulture)).Append(',')
                .Append((offset + n).ToString(CultureInfo.InvariantCulture)).Append("]}");
            offset += n;
            first = false;
        }
        sb.Append('}');
        var bytes = Encoding.UTF8.GetBytes(sb.ToString());
        int pad = (8 - bytes.Length % 8) % 8;
        return [.. bytes, .. Enumerable.Repeat((byte)' ', pad)];
    }

    private static long Bytes(Tensor t) => t.NumberOfElements * t.ElementSize;

    private static void WriteBytes(Stream stream, Tensor tensor)
    {
        using var scope = NewDisposeScope();
        var flat = (tensor.device_type == DeviceType.CPU ? tensor : tensor.cpu()).contiguous().flatten();
        long elements = flat.NumberOfElements;
        long perChunk = Math.Max(1, ChunkBytes / flat.ElementSize);
        for (long done = 0; done < elements; done += perChunk)
            stream.Write(flat.narrow(0, done, Math.Min(perChunk, elements - done)).bytes);
    }

    // serde_json's escaping: '"', '\\', the short escapes \b \f \n \r \t, other control characters as \u00xx; nothing else.
    private static string SerdeString(string s) => Quote(s, asciiOnly: false);

    // Python json.dumps with ensure_ascii=True: as serde, plus every non-ASCII UTF-16 unit as \uxxxx.
    private static string PythonJsonString(string s) => Quote(s, asciiOnly: true);

    private static string Quote(string s, bool asciiOnly)
    {
        var sb = new StringBuilder(s.Length + 2).Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (c < 0x20 || (asciiOnly && c > 0x7f)) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        return sb.Append('"').ToString();
    }
}
