using System.Collections.Immutable;
using System.Runtime.Serialization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Akka.Actor;
using Akka.Serialization;
using static Superpipeline.Messages.GenerationProtocol;
using static Superpipeline.Messages.JobProtocol;
using static Superpipeline.Messages.StageProtocol;
using static Superpipeline.Messages.TrainingProtocol;
using static Superpipeline.Messages.WorkerProtocol;

namespace Superpipeline.Messages.Serialization;

/// <summary>The serializer bound to <see cref="IProtocolMessage"/>. Each message type has a fixed manifest from a
/// closed list: nothing names a .NET type on the wire, and an unknown manifest is refused. The fields are JSON;
/// every byte array (tensor data, chunks) is appended raw after it, never as JSON: a tensor travels as dtype,
/// shape and its bytes. Layout: [int32 header length][UTF-8 JSON header][int32 blob count]([int32 length][bytes])*.</summary>
public sealed class ProtocolSerializer : SerializerWithStringManifest
{
    public const int SerializerId = 4711;

    static readonly (string Manifest, Type Type)[] Types =
    [
        ("submit", typeof(SubmitJob)), ("accepted", typeof(JobAccepted)), ("progress", typeof(JobProgress)),
        ("succeeded", typeof(JobSucceeded)), ("failed", typeof(JobFailed)), ("refused", typeof(JobRefused)),
        ("register", typeof(RegisterWorker)), ("registered", typeof(WorkerRegistered)),
        ("stage", typeof(StageAssignment)), ("stage-input", typeof(StageInput)), ("stage-done", typeof(StageDone)),
        ("stage-output", typeof(StageOutput)), ("stage-failed", typeof(StageFailed)), ("cancel", typeof(CancelAttempt)),
        ("stage-progress", typeof(StageProgress)),
        ("token", typeof(JobToken)), ("generated", typeof(JobGenerated)),
        ("gen-open", typeof(OpenGeneration)), ("gen-ready", typeof(GenerationReady)), ("gen-step", typeof(GenerationStepInput)),
        ("gen-logits", typeof(GenerationLogits)), ("gen-end", typeof(EndGeneration)), ("gen-ended", typeof(GenerationEnded)),
        ("train-open", typeof(OpenTraining)), ("train-ready", typeof(TrainingStageReady)), ("train-linked", typeof(TrainingLinked)),
        ("train-act", typeof(TrainingActivations)), ("train-grad", typeof(TrainingGradients)), ("train-stepped", typeof(TrainingStageStepped)),
        ("train-apply", typeof(ApplyTrainingStep)), ("train-applied", typeof(TrainingStepApplied)), ("train-failed", typeof(TrainingStageFailed)),
        ("train-drop", typeof(DropTrainingStep)), ("train-dropped", typeof(TrainingStepDropped)), ("train-get-weights", typeof(GetTrainingWeights)),
        ("train-weights", typeof(TrainingStageWeights)), ("train-end", typeof(EndTraining)),
        ("train-tied", typeof(TrainingTiedSums)),
        ("train-step", typeof(JobTrainingStep)), ("trained", typeof(JobTrained)),
        ("chunk", typeof(MessageChunk)),
    ];

    static readonly Dictionary<Type, string> ManifestOf = Types.ToDictionary(t => t.Type, t => t.Manifest);
    static readonly Dictionary<string, Type> TypeOf = Types.ToDictionary(t => t.Manifest, t => t.Type);

    [ThreadStatic] static List<byte[]>? _blobs;
    readonly JsonSerializerOptions _options;

    public ProtocolSerializer(ExtendedActorSystem system) : base(system)
    {
        _options = new JsonSerializerOptions
        {
            Converters = { new ActorRefConverter(system), new BlobConverter() },
            NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        };
    }

    public override int Identifier => SerializerId;

    public override string Manifest(object o) =>
        ManifestOf.TryGetValue(o.GetType(), out var m) ? m : throw new ArgumentException($"{o.GetType().Name} is not a Superpipeline protocol message");

    public override byte[] ToBinary(object obj)
    {
        // The list is closed both ways: a type outside it is never written (it would otherwise go out as plain JSON).
        if (!ManifestOf.ContainsKey(obj.GetType())) throw new ArgumentException($"{obj.GetType().Name} is not a Superpipeline protocol message");
        var blobs = _blobs = [];
        try
        {
            var json = JsonSerializer.SerializeToUtf8Bytes(obj, obj.GetType(), _options);
            using var stream = new MemoryStream();
            using var writer = new BinaryWriter(stream, Encoding.UTF8, leaveOpen: true);
            writer.Write(json.Length);
            writer.Write(json);
            writer.Write(blobs.Count);
            foreach (var blob in blobs)
            {
                writer.Write(blob.Length);
                writer.Write(blob);
            }
            writer.Flush();
            return stream.ToArray();
        }
        finally { _blobs = null; }
    }

    public override object FromBinary(byte[] bytes, string manifest)
    {
        if (!TypeOf.TryGetValue(manifest, out var type)) throw new SerializationException($"unknown Superpipeline manifest '{manifest}'");
        using var reader = new BinaryReader(new MemoryStream(bytes, writable: false));
        var json = reader.ReadBytes(reader.ReadInt32());
        int count = reader.ReadInt32();
        var blobs = new List<byte[]>(count);
        for (int i = 0; i < count; i++) blobs.Add(reader.ReadBytes(reader.ReadInt32()));
        _blobs = blobs;
        try
        {
            return JsonSerializer.Deserialize(json, type, _options) ?? throw new SerializationException($"empty {manifest} message");
        }
        finally { _blobs = null; }
    }

    /// <summary>Byte arrays become an index into the raw blobs that follow the JSON header.</summary>
    sealed class BlobConverter : JsonConverter<ImmutableArray<byte>>
    {
        public override ImmutableArray<byte> Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
        {
            int index = reader.GetInt32();
            var blobs = _blobs ?? throw new JsonException("blob outside a protocol message");
            if (index < 0 || index >= blobs.Count) throw new JsonException($"blob {index} missing");
            return ImmutableArray.Create(blobs[index]);
        }

        public override void Write(Utf8JsonWriter writer, ImmutableArray<byte> value, JsonSerializerOptions options)
        {
            var blobs = _blobs ?? throw new JsonException("blob outside a protocol message");
            writer.WriteNumberValue(blobs.Count);
            blobs.Add(value.IsDefault ? [] : value.ToArray());
        }
    }

    /// <summary>Actor references travel as their serialized paths and are resolved by the receiving system.</summary>
    sealed class ActorRefConverter(ExtendedActorSystem system) : JsonConverter<IActorRef>
    {
        public override bool CanConvert(Type typeToConvert) => typeof(IActorRef).IsAssignableFrom(typeToConvert);

        public override IActorRef? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
            reader.TokenType == JsonTokenType.Null ? null : system.Provider.ResolveActorRef(reader.GetString()!);

        public override void Write(Utf8JsonWriter writer, IActorRef value, JsonSerializerOptions options) =>
            writer.WriteStringValue(Akka.Serialization.Serialization.SerializedActorPath(value));
    }
}
