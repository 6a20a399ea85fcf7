using Akka.Actor;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>Delivers a layer's gradients, micro-batch by micro-batch, to the LayerActors that hold its parameters. A parameter
/// tied between layers (a head reading the token embedding) waits for its last layer in the backward order (the lowest index);
/// the sum, the first layer's contribution plus the other's as autograd sums a shared leaf's two uses, then goes to every layer
/// holding it. One instance serves one step; it owns the partial sums until they are delivered.</summary>
/// <param name="tied">Each tied parameter's layers (model indices, lowest first), as <c>ModelParameters.Tied</c> gives them.</param>
/// <param name="actorOf">The LayerActor of a model layer index.</param>
public sealed class TiedGradients(IReadOnlyDictionary<string, IReadOnlyList<int>> tied, Func<int, IActorRef> actorOf, TimeSpan askTimeout)
    : IDisposable
{
    readonly Dictionary<(string Name, int Micro), Tensor> _pending = [];

    /// <summary>Gives layer <paramref name="index"/>'s gradients (per micro-batch; the caller keeps them) to the actors.</summary>
    public async Task DeliverAsync(int index, IReadOnlyList<IReadOnlyList<(string Name, Tensor Grad)>> grads)
    {
        for (int m = 0; m < grads.Count; m++)
        {
            var own = new List<(string, Tensor)>();
            var complete = new List<(string Name, Tensor Sum)>();
            foreach (var (name, g) in grads[m])
            {
                if (!tied.TryGetValue(name, out var holders))
                {
                    own.Add((name, g));
                    continue;
                }
                if (_pending.Remove((name, m), out var earlier))
                {
                    using (earlier)
                    using (no_grad()) _pending[(name, m)] = earlier + g;
                }
                else _pending[(name, m)] = g.clone();
                if (index == holders[0] && _pending.Remove((name, m), out var sum)) complete.Add((name, sum));
            }
            try
            {
                await actorOf(index).Ask<LayerActor.GradientsAccumulated>(new LayerActor.AccumulateGradients(own), askTimeout).ConfigureAwait(false);
                foreach (var (name, sum) in complete)
                    foreach (var holder in tied[name])
                        await actorOf(holder).Ask<LayerActor.GradientsAccumulated>(new LayerActor.AccumulateGradients([(name, sum)]), askTimeout)
                            .ConfigureAwait(false);
            }
            finally
            {
                foreach (var (_, sum) in complete) sum.Dispose();
            }
        }
    }

    /// <summary>Frees partial sums a failed step left undelivered.</summary>
    public void Dispose()
    {
        foreach (var t in _pending.Values) t.Dispose();
        _pending.Clear();
    }
}
