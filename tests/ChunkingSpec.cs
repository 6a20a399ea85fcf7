using System.Collections.Immutable;
using Akka.Actor;
using Akka.TestKit.Xunit2;
using Superpipeline.Messages;
using Superpipeline.Messages.Serialization;
using Superpipeline.Workers;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Tests;

/// <summary>The one chunk-reassembly hook: an actor that registers <see cref="ChunkAssembler.Receiver"/> handles a
/// chunked message as if it had arrived whole, from the chunks' sender, whatever the order of the chunks.</summary>
public sealed class ChunkingSpec() : TestKit(WorkerConfig.Load())
{
    /// <summary>Receives chunks through the hook and reports every whole job event, with its sender, to <paramref name="report"/>.</summary>
    sealed class Receiver : ReceiveActor
    {
        public Receiver(IActorRef report)
        {
            Receive<MessageChunk>(ChunkAssembler.Receiver(Context));
            Receive<IJobEvent>(e => report.Tell((e, Sender)));
        }
    }

    ProtocolSerializer Serializer => (ProtocolSerializer)Sys.Serialization.FindSerializerForType(typeof(MessageChunk));

    /// <summary>The message's serialized bytes cut into <paramref name="count"/> chunks, as the sender does.</summary>
    MessageChunk[] Chunks(IProtocolMessage message, int count)
    {
        var bytes = Serializer.ToBinary(message);
        int size = (bytes.Length + count - 1) / count;
        var id = Guid.NewGuid();
        return [.. Enumerable.Range(0, count).Select(i =>
            new MessageChunk(id, Serializer.Manifest(message), i, count, ImmutableArray.Create(bytes, i * size, Math.Min(size, bytes.Length - i * size))))];
    }

    static JobSucceeded Answer(string id, int bytes)
    {
        var data = new byte[bytes];
        new Random(bytes).NextBytes(data);
        var report = new PassReport("sim:0", 1, 1, 1, 1, 1, 1, 1, 1, 1, []);
        return new JobSucceeded(new JobId(id), new TensorPayload("Float32", [bytes / 4], ImmutableArray.Create(data)), report);
    }

    [Fact]
    public void Interleaved_chunks_of_two_messages_out_of_order_are_handled_as_the_two_whole_messages_from_their_sender()
    {
        var receiver = Sys.ActorOf(Props.Create(() => new Receiver(TestActor)));
        var sender = CreateTestProbe();
        var (a, b) = (Answer("a", 40_000), Answer("b", 30_000));
        var chunksA = Chunks(a, 4);
        var chunksB = Chunks(b, 3);
        foreach (var chunk in new[] { chunksA[2], chunksB[1], chunksA[0], chunksB[2], chunksA[3], chunksB[0] })
            receiver.Tell(chunk, sender.Ref);
        var (whole, from) = ExpectMsg<(IJobEvent, IActorRef)>(TimeSpan.FromSeconds(10));
        Assert.Equal(b.Output, Assert.IsType<JobSucceeded>(whole).Output); // all of b's chunks were in first
        Assert.Equal(sender.Ref, from);
        ExpectNoMsg(TimeSpan.FromMilliseconds(100)); // a is still missing a chunk
        receiver.Tell(chunksA[1], sender.Ref);
        (whole, from) = ExpectMsg<(IJobEvent, IActorRef)>(TimeSpan.FromSeconds(10));
        Assert.Equal(a.Id, whole.Id);
        Assert.True(a.Output.Bytes.AsSpan().SequenceEqual(Assert.IsType<JobSucceeded>(whole).Output.Bytes.AsSpan()));
        Assert.Equal(sender.Ref, from);
    }
}
