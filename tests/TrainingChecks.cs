using Superpipeline.Engine;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>What the training checks of every family share: one SGD step's update against finite differences of an independent
/// float64 loss, and the device bound the window sets.</summary>
static class TrainingChecks
{
    /// <summary>Samples three coordinates of every tensor (a seeded generator), and for each compares (before − after) / lr with
    /// the central difference (h = 1e-5) of <paramref name="loss64"/> over the float64 weights; returns the worst relative error
    /// (|fd − update| / (1e-3 + |fd|)) and where it was.</summary>
    public static (string Where, double Error) WorstFiniteDifference(IReadOnlyDictionary<string, Tensor> before,
        IReadOnlyDictionary<string, Tensor> after, double lr, Func<Dictionary<string, Tensor>, double> loss64)
    {
        var w64 = before.ToDictionary(e => e.Key, e => e.Value.to_type(ScalarType.Float64));
        using var g = new Generator(3);
        const double h = 1e-5;
        var worst = (Where: "", Error: 0.0);
        foreach (var (name, w0) in before)
        {
            var flat = w64[name].view(-1);
            var update = ((w0 - after[name]) / lr).view(-1);
            for (int sample = 0; sample < 3; sample++)
            {
                long i = randint(flat.shape[0], [1], generator: g).item<long>();
                double original = flat[i].item<double>();
                flat[i] = original + h;
                double up = loss64(w64);
                flat[i] = original - h;
                double down = loss64(w64);
                flat[i] = original;
                double fd = (up - down) / (2 * h), streamed = update[i].item<float>();
                double error = Math.Abs(fd - streamed) / (1e-3 + Math.Abs(fd));
                if (error > worst.Error) worst = ($"{name}[{i}]: finite difference {fd:G9}, streamed step {streamed:G9}", error);
            }
        }
        return worst;
    }

    /// <summary>The bound from the window alone, for <paramref name="model"/> built at one micro-batch's rows: the k largest
    /// layers' weights and as many gradients, the activations a layer's backward holds per micro-batch (its saved input and
    /// that of up to k − 1 layers loaded ahead, the gradient coming in and the one going out, all at most the largest
    /// activation), and the largest layer's recompute (its forward's temporaries and output, twice over for their
    /// gradients).</summary>
    public static long PeakBound(LayeredModel model, int k, int micro)
    {
        var largest = model.Layers.Select(l => l.Bytes).OrderDescending().Take(k).Sum();
        var shapes = model.ActivationShapes().Select(a => a.Shape).ToArray();
        long activation = shapes.Max(s => TensorBytes.Of(s, ScalarType.Float32));
        long recompute = model.Layers.Max(l => 2 * l.WorkspaceBytes(shapes[l.Index]) + 2 * TensorBytes.Of(shapes[l.Index + 1], ScalarType.Float32));
        return 2 * largest + (k + 2) * micro * activation + recompute;
    }
}
