using System.Globalization;
using ScottPlot;
using SkiaSharp;

namespace Superpipeline.Coordinator.Bench;

/// <summary>tradeoff.png, drawn with ScottPlot (SkiaSharp underneath; its native library comes from the
/// SkiaSharp.NativeAssets.Linux.NoDependencies package, so nothing is installed on the machine): peak device memory
/// against time per pass, one labelled marker per measured (k, k') and the simulator's prediction for the same
/// point beside it, joined by a dotted line. Its text is set in DejaVu Sans embedded in this assembly, so it renders the
/// same everywhere, including on machines with no system fonts (where Skia would otherwise draw no text at all).</summary>
public static class TradeoffPlot
{
    public const int Width = 1000, Height = 680;

    static readonly object Registering = new();
    static bool _registered;

    /// <summary>The name of the embedded DejaVu Sans, for other plots of the project (<see cref="UseEmbeddedFont"/> first).</summary>
    internal const string FontName = EmbeddedFontResolver.Name;

    /// <summary>Registers the embedded font with ScottPlot, once per process: every plot the project draws sets its text in it.</summary>
    internal static void UseEmbeddedFont()
    {
        lock (Registering)
        {
            if (!_registered) Fonts.FontResolvers.Insert(0, new EmbeddedFontResolver());
            _registered = true;
        }
    }

    public static void Save(string path, TradeoffReport r)
    {
        UseEmbeddedFont();
        const double mib = 1 << 20;
        var pts = r.Points;
        double[] mx = [.. pts.Select(p => p.MeasuredSeconds)], my = [.. pts.Select(p => p.MeasuredPeakBytes / mib)];
        double[] px = [.. pts.Select(p => p.PredictedSeconds)], py = [.. pts.Select(p => p.PredictedPeakBytes / mib)];

        var plot = new Plot();
        var measuredColor = Colors.C0;
        var predictedColor = Colors.C1;
        for (int i = 0; i < pts.Count; i++)
        {
            var link = plot.Add.Line(mx[i], my[i], px[i], py[i]);
            link.LineColor = Colors.Gray.WithAlpha(0.6);
            link.LineWidth = 1;
            link.LinePattern = LinePattern.Dotted;
        }
        var predicted = plot.Add.ScatterPoints(px, py, predictedColor);
        predicted.MarkerShape = MarkerShape.OpenDiamond;
        predicted.MarkerSize = 13;
        predicted.MarkerLineWidth = 2;
        predicted.LegendText = $"predicted (PassSimulator, {r.LinkCalibration.FlopsPerSecond / 1e9:0.0} GFLOP/s, {r.LinkCalibration.LinkGBps:0.000} GB/s)";
        var measured = plot.Add.ScatterPoints(mx, my, measuredColor);
        measured.MarkerShape = MarkerShape.FilledCircle;
        measured.MarkerSize = 10;
        measured.LegendText = $"measured (engine on the simulated device, median of {r.Repeats})";

        double xMin = Math.Min(mx.Min(), px.Min()), xMax = Math.Max(mx.Max(), px.Max());
        double xSpan = Math.Max(xMax - xMin, xMax * 0.05);
        double yMax = Math.Max(my.Max(), py.Max());

        double xLo = xMin - 0.08 * xSpan, xHi = xMax + 0.22 * xSpan;
        plot.Axes.SetLimits(xLo, xHi, 0, yMax * 1.15);
        double pixelsPerSecond = (Width - 90) / (xHi - xLo); // the data area is the figure less about 90 px of axes

        // Labels "k/k'": above right of the measured markers in black, below right of the predicted ones in their colour.
        Label(plot, mx, my, pts, pixelsPerSecond, yMax, Colors.Black, bold: true, Alignment.LowerLeft, offsetY: -4);
        Label(plot, px, py, pts, pixelsPerSecond, yMax, predictedColor.Darken(0.2), bold: false, Alignment.UpperLeft, offsetY: 5);

        var m = r.Model;
        string error = r.MeanAbsoluteErrorPercent.ToString("0.0", CultureInfo.InvariantCulture);
        plot.Title($"Peak device memory against time per pass over (k, k'): {m.Layers}-layer demo decoder" +
            $"{(r.Quick ? " (quick)" : "")}\nlabels are k/k' (window/swap); dotted lines join a measurement to its prediction; " +
            $"mean |prediction error| {error} %", 15);
        plot.XLabel("time per pass (s)");
        plot.YLabel("peak device memory (MiB)");
        plot.ShowLegend(Alignment.UpperRight);
        plot.Font.Set(EmbeddedFontResolver.Name);
        plot.SavePng(path, Width, Height);
    }

    /// <summary>Labels the markers of one series. Markers on one row (nearly the same memory) are taken left to right;
    /// one whose label would overlap the label before it joins that label instead ("6/1, 6/2").</summary>
    static void Label(Plot plot, double[] xs, double[] ys, IReadOnlyList<TradeoffPoint> pts, double pixelsPerSecond, double yMax,
        Color color, bool bold, Alignment alignment, float offsetY)
    {
        float size = bold ? 13 : 12;
        double charPixels = size * (bold ? 0.72 : 0.64);
        var clusters = new List<(double X, double Y, List<string> Labels)>();
        foreach (int i in Enumerable.Range(0, pts.Count).OrderBy(i => ys[i]).ThenBy(i => xs[i]))
        {
            int at = clusters.FindIndex(c => Math.Abs(c.Y - ys[i]) < 0.025 * yMax &&
                (xs[i] - c.X) * pixelsPerSecond < string.Join(", ", c.Labels).Length * charPixels + 10);
            if (at < 0) clusters.Add((xs[i], ys[i], [pts[i].Label]));
            else clusters[at].Labels.Add(pts[i].Label);
        }
        foreach (var (x, y, labels) in clusters)
        {
            var text = plot.Add.Text(string.Join(", ", labels), x, y);
            text.LabelFontName = EmbeddedFontResolver.Name;
            text.LabelFontSize = size;
            text.LabelBold = bold;
            text.LabelFontColor = color;
            text.LabelAlignment = alignment;
            text.OffsetX = 6;
            text.OffsetY = offsetY;
        }
    }

    /// <summary>Serves <see cref="Name"/> from the DejaVu Sans files embedded in this assembly; other names are left to
    /// the resolvers after it.</summary>
    sealed class EmbeddedFontResolver : IFontResolver
    {
        public const string Name = "DejaVu Sans (embedded)";
        static readonly Lazy<SKTypeface> Regular = new(() => Load("DejaVuSans.ttf"));
        static readonly Lazy<SKTypeface> Bold = new(() => Load("DejaVuSans-Bold.ttf"));

        static SKTypeface Load(string file)
        {
            var resource = $"Superpipeline.Fonts.{file}";
            using var stream = typeof(EmbeddedFontResolver).Assembly.GetManifestResourceStream(resource)
                ?? throw new InvalidOperationException($"the font {resource} is not embedded in {typeof(EmbeddedFontResolver).Assembly.GetName().Name}");
            using var buffer = new MemoryStream();
            stream.CopyTo(buffer);
            using var data = SKData.CreateCopy(buffer.ToArray());
            return SKTypeface.FromData(data) ?? throw new InvalidOperationException($"Skia could not read the embedded font {resource}");
        }

        public SKTypeface? CreateTypeface(string fontName, bool bold, bool italic) =>
            fontName == Name ? (bold ? Bold.Value : Regular.Value) : null;

        public SKTypeface? CreateTypeface(string fontName, FontWeight weight, FontSlant slant, FontSpacing width) =>
            CreateTypeface(fontName, weight >= FontWeight.SemiBold, slant != FontSlant.Upright);
    }
}
