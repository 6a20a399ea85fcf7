using System.Collections.Immutable;
using Akka.Actor;

namespace Superpipeline.Messages.Serialization;

/// <summary>Sends protocol messages so that none exceeds the transport's frame size: a message for a remote actor
/// whose serialized form is larger than <see cref="MaxChunkBytes"/> goes as <see cref="MessageChunk"/>s. Local
/// messages go as they are (in memory, never serialized).</summary>
public sealed class ChunkingSender(ActorSystem system, int maxChunkBytes)
{
    public int MaxChunkBytes { get; } = maxChunkBytes > 0 ? maxChunkBytes : throw new ArgumentOutOfRangeException(nameof(maxChunkBytes));

    /// <summary>Reads akka.remote.dot-netty.tcp.maximum-frame-size and keeps a margin for the envelope.</summary>
    public static ChunkingSender For(ActorSystem system)
    {
        long frame = system.Settings.Config.GetByteSize("akka.remote.dot-netty.tcp.maximum-frame-size", null) ?? 128000;
        return new ChunkingSender(system, (int)Math.Max(4096, frame - 16 * 1024));
    }

    public void Tell(IActorRef target, IProtocolMessage message, IActorRef sender)
    {
        // A receptionist's response tunnel is local but forwards to a ClusterClient over the network.
        bool tunnel = target.Path.ToStringWithoutAddress().StartsWith("/system/receptionist/", StringComparison.Ordinal);
        if (!tunnel && (target.Path.Address.HasLocalScope || target.Path.Address.Equals(((ExtendedActorSystem)system).Provider.DefaultAddress)))
        {
            target.Tell(message, sender);
            return;
        }
        var serializer = (ProtocolSerializer)system.Serialization.FindSerializerForType(typeof(MessageChunk));
        var bytes = serializer.ToBinary(message);
        if (bytes.Length <= MaxChunkBytes)
        {
            target.Tell(message, sender);
            return;
        }
        var id = Guid.NewGuid();
        int count = (bytes.Length + MaxChunkBytes - 1) / MaxChunkBytes;
        for (int i = 0; i < count; i++)
        {
            int start = i * MaxChunkBytes, length = Math.Min(MaxChunkBytes, bytes.Length - start);
            target.Tell(new MessageChunk(id, serializer.Manifest(message), i, count, ImmutableArray.Create(bytes, start, length)), sender);
        }
    }
}

/// <summary>Puts chunked messages back together; the actor handles the whole message as if it had arrived in one piece.
/// Chunks arrive in order over one association, but the assembler does not rely on it. Actors do not hold one
/// themselves: they register <see cref="Receiver"/>, the one place where chunks are received.</summary>
public sealed class ChunkAssembler(ActorSystem system)
{
    readonly Dictionary<Guid, ImmutableArray<byte>[]> _partial = [];

    /// <summary>The one hook by which an actor receives chunked messages: <c>Receive&lt;MessageChunk&gt;(ChunkAssembler.Receiver(Context));</c>
    /// in its constructor. Once every chunk of a message is in, the whole message is sent to the actor itself with
    /// the chunks' sender as its sender, and is handled like any other message.</summary>
    public static Action<MessageChunk> Receiver(IActorContext context)
    {
        var assembler = new ChunkAssembler(context.System);
        var self = context.Self;
        return chunk =>
        {
            if (assembler.Add(chunk) is { } whole) self.Tell(whole, context.Sender);
        };
    }

    /// <summary>Adds a chunk; returns the whole message once every chunk is in, else null.</summary>
    public object? Add(MessageChunk chunk)
    {
        if (chunk.Count < 1 || chunk.Index < 0 || chunk.Index >= chunk.Count) throw new ArgumentException($"bad chunk {chunk.Index}/{chunk.Count}");
        if (!_partial.TryGetValue(chunk.Message, out var parts)) _partial[chunk.Message] = parts = new ImmutableArray<byte>[chunk.Count];
        parts[chunk.Index] = chunk.Bytes;
        if (parts.Any(p => p.IsDefault)) return null;
        _partial.Remove(chunk.Message);
        var bytes = new byte[parts.Sum(p => p.Length)];
        int offset = 0;
        foreach (var p in parts)
        {
            p.CopyTo(bytes, offset);
            offset += p.Length;
        }
        var serializer = (ProtocolSerializer)system.Serialization.FindSerializerForType(typeof(MessageChunk));
        return serializer.FromBinary(bytes, chunk.Manifest);
    }
}
