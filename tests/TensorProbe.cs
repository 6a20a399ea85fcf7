using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>What tests read about live tensors: the process-wide count once finalizers ran, and the temporaries a layer's
/// forward really holds in its dispose scope (the reference its declared workspace is checked against).</summary>
static class TensorProbe
{
    /// <summary>The process-wide TorchSharp tensor count, after every unreachable tensor (this test's or an earlier
    /// test's) has been finalized, so that only live tensors are counted and no finalizer runs between two readings.</summary>
    public static long LiveTensors()
    {
        for (int i = 0; i < 2; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
        return Tensor.TotalCount;
    }

    /// <summary>Runs <paramref name="layer"/>'s forward in a dispose scope and returns the bytes of every distinct storage the
    /// scope holds at its end that is not the input's, a weight's or the output's.</summary>
    public static long HeldBytes(Layer layer, IReadOnlyDictionary<string, Tensor> weights, Tensor input)
    {
        using var scope = NewDisposeScope();
        using var _ = inference_mode();
        var output = layer.Forward(weights, input);
        var outside = weights.Values.Append(input).Append(output).Select(Storage).ToHashSet();
        return scope.DisposablesView.OfType<Tensor>().Select(t => (Storage(t), Bytes(t))).Distinct()
            .Where(s => !outside.Contains(s.Item1)).Sum(s => s.Item2);
    }

    static long Storage(Tensor t) => (long)(t.dtype == ScalarType.Int64 ? t.storage<long>().data_ptr() : t.storage<float>().data_ptr());
    static long Bytes(Tensor t) => (long)(t.dtype == ScalarType.Int64 ? t.storage<long>().nbytes() : t.storage<float>().nbytes());
}
