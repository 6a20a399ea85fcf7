using System.Globalization;
using ScottPlot;
using Superpipeline.Engine.Training;

namespace Superpipeline.Coordinator.Bench;

/// <summary>The loss curve of a training run as a PNG (train --plot): the loss of every step (those of the checkpoint a run resumed
/// from too), and its moving mean over a tenth of the steps; drawn with ScottPlot in the project's embedded font (as
/// <see cref="TradeoffPlot"/>).</summary>
public static class LossPlot
{
    public const int Width = 1000, Height = 600;

    public static void Save(string path, IReadOnlyList<LossPoint> history, string title)
    {
        if (history.Count == 0) throw new ArgumentException("no steps to plot");
        TradeoffPlot.UseEmbeddedFont();
        double[] xs = [.. history.Select(h => (double)(h.Step + 1))], ys = [.. history.Select(h => h.Loss)];
        var plot = new Plot();
        var loss = plot.Add.Scatter(xs, ys, Colors.C0);
        loss.LineWidth = 1;
        loss.MarkerSize = history.Count > 60 ? 0 : 5;
        loss.LegendText = "loss (mean causal-LM cross-entropy of the step's rows)";
        int window = Math.Max(1, history.Count / 10);
        if (window > 1)
        {
            double[] mean = [.. ys.Select((_, i) => ys.Skip(Math.Max(0, i - window + 1)).Take(Math.Min(window, i + 1)).Average())];
            var smooth = plot.Add.Scatter(xs, mean, Colors.C1);
            smooth.LineWidth = 2.5f;
            smooth.MarkerSize = 0;
            smooth.LegendText = $"moving mean over {window} steps";
        }
        string first = ys[0].ToString("0.000", CultureInfo.InvariantCulture), last = ys[^1].ToString("0.000", CultureInfo.InvariantCulture);
        plot.Title($"{title}\nloss {first} at step {xs[0]:0}, {last} at step {xs[^1]:0}", 15);
        plot.XLabel("step");
        plot.YLabel("loss (nats per token)");
        plot.Axes.SetLimitsY(0, ys.Max() * 1.1);
        plot.ShowLegend(Alignment.UpperRight);
        plot.Font.Set(TradeoffPlot.FontName);
        plot.SavePng(path, Width, Height);
    }
}
