using System.Buffers.Binary;
using System.Text;
using Superpipeline.Engine.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>The safetensors reader and writer (issue 8, points 2, 3 and 11): Hugging Face's byte layout, single and sharded
/// checkpoints, one tensor read at a time, and one-line errors naming the file and the tensor for every malformed input.</summary>
public sealed class SafetensorsSpec : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("safetensors-spec-").FullName;

    public void Dispose() => Directory.Delete(dir, recursive: true);

    // ---- bytes checked against files built by hand ----

    [Fact]
    public void Writer_matches_the_reference_layout_of_a_header_already_aligned_to_8_bytes()
    {
        // The reference implementation's own serialization test: F32 [1,2,3] holding 0..5 under "attn.0"; the header is
        // exactly 64 bytes, so no padding.
        const string header = """{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}""";
        var expected = File(64, header, F32(0, 1, 2, 3, 4, 5));
        using var t = arange(6, dtype: float32).reshape(1, 2, 3);
        string path = Path.Combine(dir, "a.safetensors");
        SafetensorsWriter.WriteFile(path, [new("attn.0", t)]);
        Assert.Equal(expected, System.IO.File.ReadAllBytes(path));
    }

    [Fact]
    public void Writer_pads_the_header_with_spaces_to_a_multiple_of_8_bytes()
    {
        // 65 bytes of JSON, padded with 7 spaces to 72, as the reference implementation's forced-alignment test shows.
        const string header = """{"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}""" + "       ";
        var expected = File(72, header, F32(0, 1, 2, 3, 4, 5));
        using var t = arange(6, dtype: float32).reshape(1, 1, 2, 3);
        string path = Path.Combine(dir, "a.safetensors");
        SafetensorsWriter.WriteFile(path, [new("attn0", t)]);
        Assert.Equal(expected, System.IO.File.ReadAllBytes(path));
    }

    [Fact]
    public void Writer_puts_metadata_first_and_sorts_tensors_widest_dtype_first_then_by_name()
    {
        // Given b (F16), a (BF16), c (F32): the reference orders by dtype descending (F32 > BF16 > F16), then name.
        const string header = """{"__metadata__":{"format":"pt"},"c":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":"""
            + """{"dtype":"BF16","shape":[2],"data_offsets":[4,8]},"b":{"dtype":"F16","shape":[2],"data_offsets":[8,12]}}""" + "       ";
        byte[] data = [0x00, 0x00, 0x00, 0x3F, /* c = 0.5f */ 0x80, 0x3F, 0x00, 0xC0, /* a = bf16 1, -2 */ 0x00, 0x3C, 0x00, 0xC0 /* b = f16 1, -2 */];
        var expected = File(200, header, data);
        using var b = tensor(new float[] { 1, -2 }).to(float16);
        using var a = tensor(new float[] { 1, -2 }).to(bfloat16);
        using var c = tensor(new float[] { 0.5f });
        string path = Path.Combine(dir, "a.safetensors");
        SafetensorsWriter.WriteFile(path, [new("b", b), new("a", a), new("c", c)], SafetensorsWriter.TransformersMetadata);
        Assert.Equal(expected, System.IO.File.ReadAllBytes(path));
    }

    [Fact]
    public void Reader_decodes_a_hand_built_file_in_each_stored_dtype()
    {
        const string header = """{"c":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]},"b":"""
            + """{"dtype":"F16","shape":[2],"data_offsets":[8,12]},"i":{"dtype":"I64","shape":[1],"data_offsets":[12,20]}}""";
        byte[] data = [0x00, 0x00, 0x00, 0x3F, 0x80, 0x3F, 0x00, 0xC0, 0x00, 0x3C, 0x00, 0xC0, 0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        string path = Write("hand.safetensors", header, data);
        using var file = SafetensorsFile.Open(path);
        using var a = file.Read("a");
        using var b = file.Read("b");
        using var c = file.Read("c");
        using var i = file.Read("i");
        Assert.Equal(ScalarType.BFloat16, a.dtype);
        Assert.Equal(ScalarType.Float16, b.dtype);
        Assert.Equal(ScalarType.Float32, c.dtype);
        Assert.Equal(ScalarType.Int64, i.dtype);
        using var af = a.to(float32);
        using var bf = b.to(float32);
        Assert.Equal(new float[] { 1, -2 }, af.data<float>().ToArray());
        Assert.Equal(new float[] { 1, -2 }, bf.data<float>().ToArray());
        Assert.Equal(new float[] { 0.5f }, c.data<float>().ToArray());
        Assert.Equal(new long[] { -2 }, i.data<long>().ToArray());
        Assert.Equal(new[] { "c", "a", "b", "i" }, file.Names);
    }

    [Fact]
    public void Sharded_index_is_written_as_transformers_writes_it()
    {
        var tensors = Enumerable.Range(0, 4).Select(i => new KeyValuePair<string, Tensor>($"w{i}", full(4, (float)i))).ToList();
        var files = SafetensorsWriter.WriteCheckpoint(dir, tensors, shards: 2);
        const string expected = """
            {
              "metadata": {
                "total_parameters": 16,
                "total_size": 64
              },
              "weight_map": {
                "w0": "model-00001-of-00002.safetensors",
                "w1": "model-00001-of-00002.safetensors",
                "w2": "model-00002-of-00002.safetensors",
                "w3": "model-00002-of-00002.safetensors"
              }
            }

            """;
        Assert.Equal(new[] { "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors" }, files);
        Assert.Equal(expected.ReplaceLineEndings("\n"), System.IO.File.ReadAllText(Path.Combine(dir, SafetensorsCheckpoint.IndexFile)));
        Assert.False(System.IO.File.Exists(Path.Combine(dir, SafetensorsCheckpoint.SingleFile)));
        foreach (var (_, t) in tensors) t.Dispose();
    }

    // ---- round trips ----

    [Theory]
    [InlineData(ScalarType.Float32, 1)]
    [InlineData(ScalarType.Float16, 1)]
    [InlineData(ScalarType.BFloat16, 1)]
    [InlineData(ScalarType.Float32, 3)]
    [InlineData(ScalarType.Float16, 3)]
    [InlineData(ScalarType.BFloat16, 4)]
    public void Checkpoint_round_trips_every_tensor_bit_for_bit(ScalarType dtype, int shards)
    {
        var tensors = Weights(dtype);
        SafetensorsWriter.WriteCheckpoint(dir, tensors, shards);
        using var checkpoint = SafetensorsCheckpoint.Open(dir);
        Assert.Equal(shards > 1, checkpoint.IsSharded);
        Assert.Equal(tensors.Select(t => t.Key).Order(StringComparer.Ordinal), checkpoint.Names.Order(StringComparer.Ordinal));
        foreach (var (name, expected) in tensors)
        {
            using var actual = checkpoint.Read(name);
            Assert.Equal(expected.dtype, actual.dtype);
            Assert.Equal(expected.shape, actual.shape);
            Assert.Equal(expected.bytes.ToArray(), actual.bytes.ToArray());
            expected.Dispose();
        }
        Assert.Equal(shards, checkpoint.OpenedFiles.Length);
    }

    [Fact]
    public void Mixed_dtypes_and_a_transposed_view_round_trip_in_one_file_and_reads_in_small_chunks_give_the_same_bytes()
    {
        using var g = new Generator(7);
        using var w = randn([5, 3], generator: g);
        using var h = randn([7], generator: g).to(float16);
        using var bf = randn([3, 3], generator: g).to(bfloat16);
        using var square = randn([3, 4], generator: g);
        using var transposed = square.t(); // not contiguous: written in its logical (row-major) order
        using var expectedTransposed = transposed.contiguous();
        string path = Path.Combine(dir, "m.safetensors");
        SafetensorsWriter.WriteFile(path, [new("w", w), new("h", h), new("bf", bf), new("t", transposed)]);
        using var file = SafetensorsFile.Open(path, chunkBytes: 6);
        foreach (var (name, expected) in new[] { ("w", w), ("h", h), ("bf", bf), ("t", expectedTransposed) })
        {
            using var actual = file.Read(name);
            Assert.Equal(expected.shape, actual.shape);
            Assert.Equal(expected.bytes.ToArray(), actual.bytes.ToArray());
        }
    }

    [Fact]
    public void Writing_a_checkpoint_replaces_an_earlier_one_in_the_same_directory()
    {
        var tensors = Enumerable.Range(0, 3).Select(i => new KeyValuePair<string, Tensor>($"w{i}", full(2, (float)i))).ToList();
        SafetensorsWriter.WriteCheckpoint(dir, tensors, shards: 3);
        using var changed = full(2, 9f);
        SafetensorsWriter.WriteCheckpoint(dir, [new("w0", changed)]);
        Assert.Equal(new[] { SafetensorsCheckpoint.SingleFile }, Directory.GetFiles(dir).Select(Path.GetFileName));
        using var checkpoint = SafetensorsCheckpoint.Open(dir);
        using var w0 = checkpoint.Read("w0");
        Assert.Equal(new float[] { 9, 9 }, w0.data<float>().ToArray());
        foreach (var (_, t) in tensors) t.Dispose();
    }

    // ---- one tensor at a time ----

    [Fact]
    public void Reading_one_tensor_reads_only_its_bytes_and_ignores_garbage_in_the_others()
    {
        using var a = tensor(new float[] { 1, 2, 3 });
        using var b = tensor(new float[] { 4, 5, 6, 7 });
        string path = Path.Combine(dir, "ab.safetensors");
        SafetensorsWriter.WriteFile(path, [new("a", a), new("b", b)]);
        long dataStart;
        long bBegin;
        using (var probe = SafetensorsFile.Open(path))
        {
            dataStart = probe.DataStart;
            bBegin = probe.Entry("b").Begin;
        }
        var bytes = System.IO.File.ReadAllBytes(path);
        bytes.AsSpan((int)(dataStart + bBegin), 16).Fill(0xFF); // b becomes four NaNs
        System.IO.File.WriteAllBytes(path, bytes);

        using var file = SafetensorsFile.Open(path);
        Assert.Equal(dataStart, file.BytesRead);
        using var read = file.Read("a");
        Assert.Equal(new float[] { 1, 2, 3 }, read.data<float>().ToArray());
        Assert.Equal(dataStart + 12, file.BytesRead);
        using var garbage = file.Read("b");
        Assert.True(garbage.isnan().all().item<bool>());
    }

    [Fact]
    public void Checkpoint_opens_only_the_shard_holding_the_tensor_asked_for()
    {
        var tensors = Enumerable.Range(0, 4).Select(i => new KeyValuePair<string, Tensor>($"w{i}", full(4, (float)i))).ToList();
        SafetensorsWriter.WriteCheckpoint(dir, tensors, shards: 2);
        // Ruin the second shard's header: a header length far past its end.
        string second = Path.Combine(dir, "model-00002-of-00002.safetensors");
        var bytes = System.IO.File.ReadAllBytes(second);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, 1_000_000);
        System.IO.File.WriteAllBytes(second, bytes);

        using var checkpoint = SafetensorsCheckpoint.Open(dir);
        using var w1 = checkpoint.Read("w1");
        Assert.Equal(new float[] { 1, 1, 1, 1 }, w1.data<float>().ToArray());
        Assert.Equal(new[] { "model-00001-of-00002.safetensors" }, checkpoint.OpenedFiles);
        var e = Assert.Throws<SafetensorsException>(() => checkpoint.Read("w3"));
        Assert.Contains(second, e.Message);
        foreach (var (_, t) in tensors) t.Dispose();
    }

    // ---- bad input: one line naming the file and the tensor ----

    [Fact]
    public void Header_length_past_the_end_of_the_file()
    {
        string path = Path.Combine(dir, "bad.safetensors");
        var bytes = new byte[40];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, 1000);
        System.IO.File.WriteAllBytes(path, bytes);
        OneLine(Assert.Throws<SafetensorsException>(() => SafetensorsFile.Open(path)), path, null,
            "header length 1000 runs past the end of the file (40 bytes)");
    }

    /// <summary>A file whose header cannot be opened as it stands: one line naming the file, the tensor where there is one, and the
    /// problem; the first argument is the case's name.</summary>
    [Theory]
    [InlineData("Header_that_is_not_json", """{"a":{"dtype":"F32",""", 0, null, "header is not valid JSON")]
    [InlineData("Offsets_past_the_end_of_the_data",
        """{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""",
        8, "a", "run past the end of the 8-byte data region")]
    [InlineData("Overlapping_offsets",
        """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""",
        12, "b", "overlap tensor 'a' ending at 8")]
    [InlineData("A_gap_between_tensors",
        """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}}""",
        20, "b", "leave a gap after byte 8")]
    [InlineData("Data_not_starting_at_offset_zero", """{"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", 12, "a", "leave a gap after byte 0")]
    [InlineData("Bytes_after_the_last_tensor",
        """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""",
        12, "a", "data region is 12 bytes but the tensors cover 8")]
    [InlineData("Unknown_dtype", """{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}""", 8, "a", "unknown dtype 'Q7'")]
    [InlineData("Byte_length_not_matching_dtype_and_shape",
        """{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}""",
        8, "a", "holds 8 bytes but F32[3] needs 12")]
    public void A_header_that_does_not_hold_is_refused_at_open_in_one_line(string name, string header, int dataBytes, string? tensor, string problem)
    {
        Assert.NotEmpty(name);
        string path = Write("bad.safetensors", header, new byte[dataBytes]);
        OneLine(Assert.Throws<SafetensorsException>(() => SafetensorsFile.Open(path)), path, tensor, problem);
    }

    [Fact]
    public void Known_but_unread_dtype_fails_on_read_only()
    {
        string path = Write("u16.safetensors", """{"a":{"dtype":"U16","shape":[2],"data_offsets":[0,4]}}""", new byte[4]);
        using var file = SafetensorsFile.Open(path);
        OneLine(Assert.Throws<SafetensorsException>(() => file.Read("a")), path, "a", "dtype U16 is not read");
    }

    [Fact]
    public void Missing_tensor_in_a_single_file_checkpoint()
    {
        using var a = ones(2);
        SafetensorsWriter.WriteCheckpoint(dir, [new("a", a)]);
        using var checkpoint = SafetensorsCheckpoint.Open(dir);
        OneLine(Assert.Throws<SafetensorsException>(() => checkpoint.Read("zz")), Path.Combine(dir, "model.safetensors"), "zz", "no such tensor");
    }

    [Fact]
    public void Missing_tensor_in_a_sharded_checkpoint_names_the_index()
    {
        var tensors = Enumerable.Range(0, 2).Select(i => new KeyValuePair<string, Tensor>($"w{i}", ones(2))).ToList();
        SafetensorsWriter.WriteCheckpoint(dir, tensors, shards: 2);
        using var checkpoint = SafetensorsCheckpoint.Open(dir);
        OneLine(Assert.Throws<SafetensorsException>(() => checkpoint.Read("zz")), Path.Combine(dir, SafetensorsCheckpoint.IndexFile), "zz",
            "is not in the weight_map");
        foreach (var (_, t) in tensors) t.Dispose();
    }

    [Fact]
    public void Missing_shard_file_fails_only_for_its_tensors()
    {
        var tensors = Enumerable.Range(0, 2).Select(i => new KeyValuePair<string, Tensor>($"w{i}", full(2, (float)i))).ToList();
        SafetensorsWriter.WriteCheckpoint(dir, tensors, shards: 2);
        string second = Path.Combine(dir, "model-00002-of-00002.safetensors");
        System.IO.File.Delete(second);
        using var checkpoint = SafetensorsCheckpoint.Open(dir);
        using var w0 = checkpoint.Read("w0");
        OneLine(Assert.Throws<SafetensorsException>(() => checkpoint.Read("w1")), second, "w1", "shard listed in model.safetensors.index.json is missing");
        foreach (var (_, t) in tensors) t.Dispose();
    }

    [Fact]
    public void Index_entry_that_escapes_the_directory()
    {
        System.IO.File.WriteAllText(Path.Combine(dir, SafetensorsCheckpoint.IndexFile), """{"weight_map":{"w":"../x.safetensors"}}""");
        OneLine(Assert.Throws<SafetensorsException>(() => SafetensorsCheckpoint.Open(dir)), Path.Combine(dir, SafetensorsCheckpoint.IndexFile), "w",
            "not a file name in the checkpoint directory");
    }

    [Fact]
    public void Directory_without_weights()
    {
        OneLine(Assert.Throws<SafetensorsException>(() => SafetensorsCheckpoint.Open(dir)), dir, null, "holds neither model.safetensors");
    }

    // ---- helpers ----

    private static void OneLine(SafetensorsException e, string file, string? tensorName, string problem)
    {
        Assert.DoesNotContain('\n', e.Message);
        Assert.StartsWith(file + ": ", e.Message);
        Assert.Equal(file, e.File);
        Assert.Equal(tensorName, e.Tensor);
        if (tensorName is not null) Assert.Contains($"tensor '{tensorName}'", e.Message);
        Assert.Contains(problem, e.Message);
    }

    /// <summary>An 8-byte little-endian length, the header as given (unpadded), then the data.</summary>
    private string Write(string name, string header, byte[] data)
    {
        string path = Path.Combine(dir, name);
        System.IO.File.WriteAllBytes(path, File((ulong)Encoding.UTF8.GetByteCount(header), header, data));
        return path;
    }

    private static byte[] File(ulong length, string header, byte[] data)
    {
        var prefix = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(prefix, length);
        return [.. prefix, .. Encoding.UTF8.GetBytes(header), .. data];
    }

    private static byte[] F32(params float[] values)
    {
        var bytes = new byte[values.Length * 4];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * 4), values[i]);
        return bytes;
    }

    /// <summary>A small decoder's worth of named tensors in one dtype, in layer order.</summary>
    private static List<KeyValuePair<string, Tensor>> Weights(ScalarType dtype)
    {
        using var g = new Generator(42);
        var list = new List<KeyValuePair<string, Tensor>> { new("model.embed_tokens.weight", randn([11, 8], generator: g).to(dtype)) };
        for (int layer = 0; layer < 3; layer++)
        {
            list.Add(new($"model.layers.{layer}.self_attn.q_proj.weight", randn([8, 8], generator: g).to(dtype)));
            list.Add(new($"model.layers.{layer}.mlp.up_proj.weight", randn([16, 8], generator: g).to(dtype)));
            list.Add(new($"model.layers.{layer}.input_layernorm.weight", randn([8], generator: g).to(dtype)));
        }
        list.Add(new("model.norm.weight", randn([8], generator: g).to(dtype)));
        list.Add(new("lm_head.weight", randn([11, 8], generator: g).to(dtype)));
        return list;
    }
}
