using System.Runtime.InteropServices;
using Google.Protobuf;
using Superpipeline.Engine.Onnx.Proto;
using static TorchSharp.torch;

namespace Superpipeline.Engine.Onnx;

/// <summary>A one-line refusal of an ONNX file: it is not a model, it is cut short, or its graph is not one the importer
/// recognises (<see cref="AtNode"/> names the first node that did not fit).</summary>
public sealed class OnnxException(string message) : Exception(message)
{
    /// <summary>"FILE: node 'name' (OpType): why": the node of <paramref name="graph"/> where recognising the family stopped.</summary>
    public static OnnxException AtNode(OnnxGraph graph, OnnxNode node, string why) => new($"{graph.File}: node {node.Label}: {why}");
}

/// <summary>A value the graph takes or gives: its name, element type ("float", "int64", ...) and shape, -1 for a symbolic
/// dimension (a batch or sequence the file leaves open).</summary>
public sealed record OnnxValue(string Name, string ElementType, long[] Shape);

/// <summary>One node of the graph: its operator, the values it reads and writes (an empty input name is an absent optional
/// input) and its attributes.</summary>
public sealed class OnnxNode
{
    readonly Dictionary<string, AttributeProto> _attributes;

    internal OnnxNode(int index, NodeProto proto)
    {
        Index = index;
        Name = proto.Name;
        OpType = proto.OpType;
        Domain = proto.Domain;
        Inputs = [.. proto.Input];
        Outputs = [.. proto.Output];
        _attributes = proto.Attribute.GroupBy(a => a.Name).ToDictionary(g => g.Key, g => g.Last());
    }

    public int Index { get; }
    public string Name { get; }
    public string OpType { get; }
    /// <summary>The operator set's domain: "" (or "ai.onnx") for the standard operators, e.g. "com.microsoft" for contrib ops.</summary>
    public string Domain { get; }
    public IReadOnlyList<string> Inputs { get; }
    public IReadOnlyList<string> Outputs { get; }

    /// <summary>How errors name the node: "'name' (OpType)", or "#index (OpType)" when it has no name.</summary>
    public string Label => Name.Length > 0 ? $"'{Name}' ({OpType})" : $"#{Index} ({OpType})";

    public bool Has(string attribute) => _attributes.ContainsKey(attribute);
    public long Int(string attribute, long fallback) => _attributes.TryGetValue(attribute, out var a) ? a.I : fallback;
    public float Float(string attribute, float fallback) => _attributes.TryGetValue(attribute, out var a) ? a.F : fallback;
    public long[] Ints(string attribute) => _attributes.TryGetValue(attribute, out var a) ? [.. a.Ints] : [];
    public string? String(string attribute) => _attributes.TryGetValue(attribute, out var a) ? a.S.ToStringUtf8() : null;
    internal TensorProto? TensorAttribute(string attribute) => _attributes.TryGetValue(attribute, out var a) ? a.T : null;

    public override string ToString() => $"{Label}: [{string.Join(", ", Inputs)}] → [{string.Join(", ", Outputs)}]";
}

/// <summary>An ONNX model read with Google.Protobuf (the format's own wire format, from classes protoc generates out of the
/// specification's field numbers), indexed for following the graph: which node makes a value, which nodes read it, and the
/// constants (initializers and Constant nodes) the weights come from. Thread-safe to read once loaded.</summary>
public sealed class OnnxGraph
{
    readonly Dictionary<string, OnnxNode> _producers = new(StringComparer.Ordinal);
    readonly Dictionary<string, List<OnnxNode>> _consumers = new(StringComparer.Ordinal);
    readonly Dictionary<string, TensorProto> _constants = new(StringComparer.Ordinal);

    OnnxGraph(string file, ModelProto model)
    {
        File = file;
        var graph = model.Graph;
        ProducerName = model.ProducerName;
        foreach (var t in graph.Initializer) _constants[t.Name] = t;
        var nodes = new List<OnnxNode>(graph.Node.Count);
        foreach (var proto in graph.Node)
        {
            var node = new OnnxNode(nodes.Count, proto);
            nodes.Add(node);
            foreach (var output in node.Outputs)
            {
                _producers[output] = node;
                if (node.OpType == "Constant" && node.TensorAttribute("value") is { } value) _constants[output] = value;
            }
            foreach (var input in node.Inputs.Where(i => i.Length > 0))
            {
                if (!_consumers.TryGetValue(input, out var list)) _consumers[input] = list = [];
                if (!list.Contains(node)) list.Add(node);
            }
        }
        Nodes = nodes;
        Inputs = [.. graph.Input.Where(v => !_constants.ContainsKey(v.Name)).Select(Value)];
        Outputs = [.. graph.Output.Select(Value)];
        OpsetVersion = model.OpsetImport.Where(o => o.Domain is "" or "ai.onnx").Select(o => o.Version).DefaultIfEmpty(0).Max();
    }

    /// <summary>The file the graph was read from (how errors name it).</summary>
    public string File { get; }
    /// <summary>The tool that wrote the file (ModelProto.producer_name), e.g. "pytorch" or "CNTK".</summary>
    public string ProducerName { get; }
    /// <summary>The version of the standard operator set the graph binds to.</summary>
    public long OpsetVersion { get; }
    /// <summary>The nodes in the file's order, which the format requires to be topological.</summary>
    public IReadOnlyList<OnnxNode> Nodes { get; }
    /// <summary>The graph's inputs that are not initializers: what a caller feeds.</summary>
    public IReadOnlyList<OnnxValue> Inputs { get; }
    public IReadOnlyList<OnnxValue> Outputs { get; }

    /// <summary>Reads <paramref name="path"/>. A missing file, bytes that are not an ONNX model (not protobuf, or protobuf with
    /// no graph) and a file cut short are each one line naming the file.</summary>
    public static OnnxGraph Load(string path)
    {
        if (!System.IO.File.Exists(path)) throw new OnnxException($"{path}: not found");
        ModelProto model;
        try
        {
            using var stream = System.IO.File.OpenRead(path);
            model = ModelProto.Parser.ParseFrom(stream);
        }
        catch (InvalidProtocolBufferException e) when (e.Message.Contains("truncated", StringComparison.OrdinalIgnoreCase))
        {
            throw new OnnxException($"{path}: truncated: the file ends inside a protobuf message ({new FileInfo(path).Length} bytes)");
        }
        catch (InvalidProtocolBufferException e)
        {
            throw new OnnxException($"{path}: not an ONNX model (not a protobuf ModelProto: {e.Message.TrimEnd('.')})");
        }
        if (model.Graph is null || model.Graph.Node.Count == 0)
            throw new OnnxException($"{path}: not an ONNX model (no graph{(model.Graph is null ? "" : " nodes")}; ir_version {model.IrVersion})");
        var graph = new OnnxGraph(path, model);
        graph.CheckConstants();
        return graph;
    }

    /// <summary>The node that makes <paramref name="value"/> (a Constant node for its value); null for a graph input or an initializer.</summary>
    public OnnxNode? Producer(string value) => _producers.TryGetValue(value, out var node) ? node : null;

    /// <summary>The nodes that read <paramref name="value"/>, in file order.</summary>
    public IReadOnlyList<OnnxNode> Consumers(string value) => _consumers.TryGetValue(value, out var list) ? list : [];

    /// <summary>True when <paramref name="value"/> is a constant: an initializer or a Constant node's output.</summary>
    public bool IsConstant(string value) => _constants.ContainsKey(value);

    public long[] ConstantShape(string value) => [.. Constant(value).Dims];

    /// <summary>The constant <paramref name="value"/> as a new host tensor (float32 for FLOAT, int64 for INT64, float64 for
    /// DOUBLE, int32 for INT32); the caller owns it.</summary>
    public Tensor ReadConstant(string value)
    {
        var t = Constant(value);
        long[] shape = [.. t.Dims];
        switch ((TensorProto.Types.DataType)t.DataType)
        {
            case TensorProto.Types.DataType.Float:
                return tensor(Floats(value), shape, ScalarType.Float32);
            case TensorProto.Types.DataType.Int64:
                return tensor(Longs(value), shape, ScalarType.Int64);
            case TensorProto.Types.DataType.Double:
                return tensor(Values<double>(value, t.DoubleData), shape, ScalarType.Float64);
            case TensorProto.Types.DataType.Int32:
                return tensor(Values<int>(value, t.Int32Data), shape, ScalarType.Int32);
            default:
                throw new OnnxException($"{File}: constant '{value}' is {(TensorProto.Types.DataType)t.DataType}; float, double, int32 and int64 are read");
        }
    }

    /// <summary>The values of a FLOAT constant (raw_data or float_data), in row-major order.</summary>
    public float[] Floats(string value)
    {
        var t = Constant(value);
        if (t.DataType != (int)TensorProto.Types.DataType.Float)
            throw new OnnxException($"{File}: constant '{value}' is {(TensorProto.Types.DataType)t.DataType}, not float");
        return Values<float>(value, t.FloatData);
    }

    /// <summary>The values of an INT64 constant (raw_data or int64_data): shapes, axes, indices.</summary>
    public long[] Longs(string value)
    {
        var t = Constant(value);
        if (t.DataType != (int)TensorProto.Types.DataType.Int64)
            throw new OnnxException($"{File}: constant '{value}' is {(TensorProto.Types.DataType)t.DataType}, not int64");
        return Values<long>(value, t.Int64Data);
    }

    TensorProto Constant(string value) =>
        _constants.TryGetValue(value, out var t) ? t : throw new OnnxException($"{File}: '{value}' is not a constant of the graph");

    T[] Values<T>(string value, IReadOnlyList<T> typed) where T : unmanaged
    {
        var t = Constant(value);
        long count = t.Dims.Aggregate(1L, (a, d) => a * d);
        if (t.DataLocation == TensorProto.Types.DataLocation.External)
            throw new OnnxException($"{File}: constant '{value}' is stored in an external file; only weights inside the .onnx file are read");
        T[] result;
        if (!t.RawData.IsEmpty)
        {
            if (t.RawData.Length != count * Marshal.SizeOf<T>())
                throw new OnnxException($"{File}: constant '{value}' has {t.RawData.Length} bytes of data, not the {count * Marshal.SizeOf<T>()} "
                    + $"its shape [{string.Join(", ", t.Dims)}] takes");
            result = MemoryMarshal.Cast<byte, T>(t.RawData.Span).ToArray(); // raw_data is little-endian, as this machine is
        }
        else
        {
            if (typed.Count != count)
                throw new OnnxException($"{File}: constant '{value}' has {typed.Count} values, not the {count} its shape [{string.Join(", ", t.Dims)}] takes");
            result = [.. typed];
        }
        return result;
    }

    /// <summary>Every constant's data matches its shape; a file cut inside a tensor's bytes can still parse when the cut falls on
    /// a field boundary, so this is where such a file is refused.</summary>
    void CheckConstants()
    {
        foreach (var (name, t) in _constants)
        {
            if (t.DataLocation == TensorProto.Types.DataLocation.External) continue;
            long count = t.Dims.Aggregate(1L, (a, d) => a * d);
            int size = (TensorProto.Types.DataType)t.DataType switch
            {
                TensorProto.Types.DataType.Float or TensorProto.Types.DataType.Int32 => 4,
                TensorProto.Types.DataType.Int64 or TensorProto.Types.DataType.Double => 8,
                _ => 0,
            };
            if (size == 0 || t.RawData.IsEmpty) continue;
            if (t.RawData.Length != count * size)
                throw new OnnxException($"{File}: truncated or damaged: constant '{name}' has {t.RawData.Length} bytes of data, "
                    + $"its shape [{string.Join(", ", t.Dims)}] takes {count * size}");
        }
    }

    static OnnxValue Value(ValueInfoProto v)
    {
        var tensorType = v.Type?.TensorType;
        string element = tensorType is null ? "unknown" : ((TensorProto.Types.DataType)tensorType.ElemType).ToString().ToLowerInvariant();
        const TensorShapeProto.Types.Dimension.ValueOneofCase Fixed = TensorShapeProto.Types.Dimension.ValueOneofCase.DimValue;
        long[] shape = tensorType?.Shape is { } s ? [.. s.Dim.Select(d => d.ValueCase == Fixed ? d.DimValue : -1)] : [];
        return new OnnxValue(v.Name, element, shape);
    }
}
