using Akka.Actor;
using static TorchSharp.torch;

namespace Superpipeline.Workers;

/// <summary>Delivers a layer's gradients, micro-batch by micro-batch, to the LayerActors that hold its parameters. A parameter
/// tied between layers (a head reading the token embedding) waits for its last layer in the backward order (the lowest index);
/// the sum, the first layer's contribution plus the other's as autograd sums a shared leaf's two uses, then goes to every layer
/// holding it. One instance serves one backward pass; it owns the partial sums until they are delivered or taken.
/// <para>On a pipeline stage only some layers are <paramref name="local"/>: the partial sum of a parameter whose first layer is on
/// an earlier stage is taken at the end of the pass (<see cref="TakePartials"/>) and sent back with the input gradient; that
/// stage seeds it (<see cref="Seed"/>) before its own pass, so the sum is made in the same order as in one process; the complete
/// sum of a parameter held again on a later stage is taken (<see cref="TakeSums"/>) and sent there.</para></summary>
/// <param name="tied">Each tied parameter's layers (model indices, lowest first), as <c>ModelParameters.Tied</c> gives them.</param>
/// <param name="actorOf">The LayerActor of a local model layer index.</param>
/// <param name="local">Whether a model layer index is this pass's (null: every layer is).</param>
public sealed class TiedGradients(IReadOnlyDictionary<string, IReadOnlyList<int>> tied, Func<int, IActorRef> actorOf, TimeSpan askTimeout,
    Func<int, bool>? local = null) : IDisposable
{
    readonly Dictionary<(string Name, int Micro), Tensor> _pending = [];
    readonly Dictionary<(string Name, int Micro), Tensor> _sums = [];

    bool Local(int layer) => local?.Invoke(layer) ?? true;

    /// <summary>Starts <paramref name="name"/>'s sum with later stages' partial sum, one per micro-batch (this instance owns them).</summary>
    public void Seed(string name, IReadOnlyList<Tensor> microBatches)
    {
        if (!tied.ContainsKey(name)) throw new ArgumentException($"{name} is not a tied parameter of this model");
        for (int m = 0; m < microBatches.Count; m++)
        {
            if (_pending.Remove((name, m), out var old)) old.Dispose();
            _pending[(name, m)] = microBatches[m];
        }
    }

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
                    foreach (var holder in tied[name].Where(Local))
                        await actorOf(holder).Ask<LayerActor.GradientsAccumulated>(new LayerActor.AccumulateGradients([(name, sum)]), askTimeout)
                            .ConfigureAwait(false);
            }
            finally
            {
                foreach (var (name, sum) in complete)
                    if (tied[name].All(Local)) sum.Dispose();
                    else _sums[(name, m)] = sum; // held again on another stage: sent there
            }
        }
    }

    /// <summary>The partial sums still waiting for a layer of an earlier stage, by name, one per micro-batch; the caller owns them.</summary>
    public IReadOnlyList<(string Name, Tensor[] MicroBatches)> TakePartials() => Take(_pending);

    /// <summary>The complete sums of parameters also held on other stages, by name, one per micro-batch; the caller owns them.</summary>
    public IReadOnlyList<(string Name, Tensor[] MicroBatches)> TakeSums() => Take(_sums);

    static List<(string, Tensor[])> Take(Dictionary<(string Name, int Micro), Tensor> held)
    {
        var list = held.GroupBy(e => e.Key.Name, StringComparer.Ordinal).OrderBy(g => g.Key, StringComparer.Ordinal)
            .Select(g => (g.Key, g.OrderBy(e => e.Key.Micro).Select(e => e.Value).ToArray())).ToList();
        held.Clear();
        return list;
    }

    /// <summary>Frees partial and complete sums a failed step left undelivered.</summary>
    public void Dispose()
    {
        foreach (var t in _pending.Values.Concat(_sums.Values)) t.Dispose();
        _pending.Clear();
        _sums.Clear();
    }
}
