using System.Collections.Immutable;
using System.Runtime.CompilerServices;
using System.Runtime.Serialization;
using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Messages;
using Superpipeline.Messages.Serialization;
using Superpipeline.Workers;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Tests;

/// <summary>The wire format: protocol messages are bound to <see cref="ProtocolSerializer"/>, whose closed list of
/// manifests is the only thing it reads or writes; tensors travel as raw bytes.</summary>
public sealed class ProtocolSerializerSpec() : TestKit(WorkerConfig.Load())
{
    /// <summary>Implements the marker, so the HOCON binding sends it to the protocol serializer, but is not in its list.</summary>
    public sealed record NotInTheList(string Command) : IProtocolMessage;

    ProtocolSerializer Serializer => Assert.IsType<ProtocolSerializer>(Sys.Serialization.FindSerializerForType(typeof(IProtocolMessage)));

    static IEnumerable<Type> ProtocolTypes() => typeof(IProtocolMessage).Assembly.GetTypes()
        .Where(t => typeof(IProtocolMessage).IsAssignableFrom(t) && t is { IsAbstract: false, IsInterface: false });

    [Fact]
    public void Every_protocol_message_type_is_bound_to_the_protocol_serializer_with_a_fixed_manifest()
    {
        Assert.NotEmpty(ProtocolTypes());
        foreach (var type in ProtocolTypes())
        {
            Assert.IsType<ProtocolSerializer>(Sys.Serialization.FindSerializerForType(type));
            var manifest = Serializer.Manifest(System.Runtime.CompilerServices.RuntimeHelpers.GetUninitializedObject(type));
            Assert.DoesNotContain(".", manifest); // a short name from the list, never a .NET type name
        }
    }

    [Fact]
    public void The_manifest_list_is_exactly_the_wire_protocol()
    {
        // Written out here, not read from the serializer: a renamed manifest would break peers of another version.
        var expected = new Dictionary<string, string>
        {
            ["SubmitJob"] = "submit", ["JobAccepted"] = "accepted", ["JobProgress"] = "progress", ["JobSucceeded"] = "succeeded",
            ["JobFailed"] = "failed", ["JobRefused"] = "refused", ["RegisterWorker"] = "register", ["WorkerRegistered"] = "registered",
            ["StageAssignment"] = "stage", ["StageInput"] = "stage-input", ["StageProgress"] = "stage-progress", ["StageDone"] = "stage-done",
            ["StageOutput"] = "stage-output", ["StageFailed"] = "stage-failed", ["CancelAttempt"] = "cancel", ["MessageChunk"] = "chunk",
            ["JobToken"] = "token", ["JobGenerated"] = "generated", ["OpenGeneration"] = "gen-open", ["GenerationReady"] = "gen-ready",
            ["GenerationStepInput"] = "gen-step", ["GenerationLogits"] = "gen-logits", ["EndGeneration"] = "gen-end", ["GenerationEnded"] = "gen-ended",
            ["OpenTraining"] = "train-open", ["TrainingStageReady"] = "train-ready", ["TrainingLinked"] = "train-linked",
            ["TrainingActivations"] = "train-act", ["TrainingGradients"] = "train-grad", ["TrainingStageStepped"] = "train-stepped",
            ["ApplyTrainingStep"] = "train-apply", ["TrainingStepApplied"] = "train-applied", ["TrainingStageFailed"] = "train-failed",
            ["DropTrainingStep"] = "train-drop", ["TrainingStepDropped"] = "train-dropped", ["GetTrainingWeights"] = "train-get-weights",
            ["TrainingStageWeights"] = "train-weights", ["EndTraining"] = "train-end", ["TrainingTiedSums"] = "train-tied",
            ["JobTrainingStep"] = "train-step", ["JobTrained"] = "trained",
        };
        var actual = ProtocolTypes().ToDictionary(t => t.Name, t => Serializer.Manifest(RuntimeHelpers.GetUninitializedObject(t)));
        Assert.Equal(expected.OrderBy(kv => kv.Key), actual.OrderBy(kv => kv.Key));
    }

    [Fact]
    public void Stage_progress_round_trips_with_its_attempt_stage_and_model_layer()
    {
        var message = new StageProtocol.StageProgress(new JobId("run-1"), 7, 2, 13, LayerPhase.Computed, 0.25);
        var bytes = Serializer.ToBinary(message);
        Assert.Equal("stage-progress", Serializer.Manifest(message));
        Assert.Equal(message, Serializer.FromBinary(bytes, "stage-progress"));
    }

    [Fact]
    public void A_submission_of_a_checkpoint_model_round_trips_with_its_checkpoint_and_input_paths()
    {
        var spec = new ModelSpec("llama", 2, 64, 4, 256, 12, 2, 1, Checkpoint: "/data/ckpt", Input: "/data/ids.npy");
        var message = new SubmitJob(new JobId("ckpt-1"), spec, new PolicySpec(1, 1));
        var back = Assert.IsType<SubmitJob>(Serializer.FromBinary(Serializer.ToBinary(message), Serializer.Manifest(message)));
        Assert.Equal(message, back);
        Assert.Equal("/data/ckpt", back.Model.Checkpoint);
        Assert.Equal("/data/ids.npy", back.Model.Input);
        var seeded = new SubmitJob(new JobId("demo-1"), ModelSpec.Demo, PolicySpec.Resident);
        Assert.Null(Assert.IsType<SubmitJob>(Serializer.FromBinary(Serializer.ToBinary(seeded), "submit")).Model.Checkpoint);
        var upcast = message with { Model = spec with { LoadDtype = ModelSpec.Float32 } }; // a training job's: F16/BF16 read as float32
        var wide = Assert.IsType<SubmitJob>(Serializer.FromBinary(Serializer.ToBinary(upcast), "submit"));
        Assert.Equal(upcast, wide);
        Assert.Equal("float32", wide.Model.LoadDtype);
        Assert.NotEqual(message, wide);
    }

    [Fact]
    public void A_generation_job_and_its_answer_round_trip_with_prompts_of_different_lengths_and_per_stage_figures()
    {
        var spec = new ModelSpec("llama", 2, 64, 4, 256, 5, 2, 0, Checkpoint: "/data/ckpt");
        var generation = new GenerationParameters([[1, 2, 3, 4, 5], [7, 8]], 6, Temperature: 0.7, TopK: 5, TopP: null, Seed: 3, Eos: 2, Kv: "host");
        var submit = new SubmitJob(new JobId("gen-1"), spec, new PolicySpec(1, 1), Generation: generation);
        var back = Assert.IsType<SubmitJob>(Serializer.FromBinary(Serializer.ToBinary(submit), "submit"));
        Assert.Equal(submit, back); // a resubmission that crossed the wire is the same job
        Assert.Equal([7L, 8], back.Generation!.Prompts[1].ToArray());
        Assert.NotEqual(submit, submit with { Generation = generation with { Prompts = [[1, 2, 3, 4, 5], [7, 9]] } });

        var report = new GenerationReport("a/sim:0,b/sim:0", 4, 1, 1, "host", 2, 5, 6, 6, 1000, 64 << 20, 0.5, 20, 900, 400, 5000, 1.5)
        {
            Stages =
            [
                new GenerationStagePlan(0, "a", "sim:0", 0, 2, 1, 1, 900, 100, 2500, 6),
                new GenerationStagePlan(1, "b", "sim:0", 2, 2, 1, 1, 800, 300, 2500, 6),
            ],
        };
        var tokens = new TensorPayload("Int64", [2, 11], [.. new byte[2 * 11 * 8]]);
        var answer = Assert.IsType<JobGenerated>(Serializer.FromBinary(Serializer.ToBinary(new JobGenerated(new JobId("gen-1"), tokens, report)), "generated"));
        Assert.Equal(tokens, answer.Tokens);
        Assert.Equal(report.Stages.ToArray(), answer.Report.Stages.ToArray());
        Assert.Equal(report with { Stages = [] }, answer.Report with { Stages = [] });

        var step = new GenerationProtocol.GenerationStepInput(new JobId("gen-1"), 3, 1, 4, tokens, tokens, tokens, 10);
        Assert.Equal(step, Serializer.FromBinary(Serializer.ToBinary(step), "gen-step"));
    }

    [Theory]
    [InlineData("nope")]
    [InlineData("")]
    [InlineData("Superpipeline.Messages.JobProtocol+JobFailed, Superpipeline.Messages")]
    [InlineData("System.Diagnostics.Process, System.Diagnostics.Process")]
    public void An_unknown_manifest_is_refused(string manifest)
    {
        var bytes = Serializer.ToBinary(new JobFailed(new JobId("j"), "x")); // well-formed bytes, wrong manifest
        Assert.Throws<SerializationException>(() => Serializer.FromBinary(bytes, manifest));
        Assert.ThrowsAny<Exception>(() => Sys.Serialization.Deserialize(bytes, ProtocolSerializer.SerializerId, manifest));
    }

    [Fact]
    public void A_type_outside_the_list_cannot_be_serialized_by_it()
    {
        var rogue = new NotInTheList("rm -rf /");
        Assert.IsType<ProtocolSerializer>(Sys.Serialization.FindSerializerFor(rogue)); // the binding does pick it…
        Assert.Throws<ArgumentException>(() => Serializer.Manifest(rogue));              // …but it has no manifest
        Assert.Throws<ArgumentException>(() => Serializer.ToBinary(rogue));              // and is never written
        Assert.Throws<ArgumentException>(() => Serializer.ToBinary("a plain string"));
        Assert.Throws<ArgumentException>(() => Serializer.ToBinary(new Dictionary<string, string>()));
    }

    [Fact]
    public void A_succeeded_job_with_a_300_KB_tensor_round_trips_byte_for_byte_without_json_encoding_the_bytes()
    {
        var data = new byte[300_000];
        new Random(42).NextBytes(data); // every bit pattern, NaNs included
        var output = new TensorPayload("Float32", [3, 100, 250], ImmutableArray.Create(data));
        var report = new PassReport("127.0.0.1:4054/sim:0,127.0.0.1:4055/sim:1", 8, 2, 1, 1 << 20, 64 << 20, 1 << 19, 3 << 20, 1.25, 0.75,
            [.. Enumerable.Range(0, 8).Select(i => new LayerTiming(i, $"block.{i}", 1000 + i, i * 0.1, 0.01, i * 0.1 + 0.01, 0.02, i * 0.1 + 0.03))])
        {
            Stages =
            [
                new StagePlan(0, "127.0.0.1:4054", "sim:0", 0, 4, 2, 1, 4000, 1e6, 2000, 0.5),
                new StagePlan(1, "127.0.0.1:4055", "sim:1", 4, 4, 2, 1, 4000, 1e6, 2000, 0.6),
            ],
        };
        var message = new JobSucceeded(new JobId("big"), output, report);

        var serializer = Sys.Serialization.FindSerializerFor(message);
        var bytes = serializer.ToBinary(message);
        Assert.True(bytes.Length < data.Length + 4096, $"{bytes.Length:N0} bytes for a {data.Length:N0}-byte tensor: the bytes were encoded, not appended raw");

        var back = Assert.IsType<JobSucceeded>(Sys.Serialization.Deserialize(bytes, serializer.Identifier, Serializer.Manifest(message)));
        Assert.Equal(message.Id, back.Id);
        Assert.Equal(output, back.Output);
        Assert.True(data.AsSpan().SequenceEqual(back.Output.Bytes.AsSpan()));
        Assert.Equal(report with { LayerTimings = [], Stages = [] }, back.Report with { LayerTimings = [], Stages = [] });
        Assert.Equal(report.LayerTimings.AsEnumerable(), back.Report.LayerTimings.AsEnumerable()); // ImmutableArray's own Equals compares references
        Assert.Equal(report.Stages.AsEnumerable(), back.Report.Stages.AsEnumerable());
    }
}
