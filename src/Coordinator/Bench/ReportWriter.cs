using System.Text.Json;
using System.Text.Json.Serialization;

namespace Superpipeline.Coordinator.Bench;

/// <summary>Where a report goes: <c>NAME.md</c> and <c>NAME.json</c> in one folder, and any other files beside them.</summary>
public sealed record ReportFiles(string Markdown, string Json, IReadOnlyList<string> Others)
{
    public IEnumerable<string> All => [Markdown, Json, .. Others];
}

/// <summary>The one writer of reports, for every bench, <c>simulate</c> and the run report: JSON from typed records
/// (camelCase, indented, NaN and infinities as named literals) and Markdown beside it.</summary>
public static class ReportWriter
{
    public static JsonSerializerOptions JsonOptions { get; } = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public static string Serialize<T>(T report) => JsonSerializer.Serialize(report, JsonOptions);

    public static void WriteJson<T>(string path, T report) => File.WriteAllText(path, Serialize(report));

    public static Task WriteJsonAsync<T>(string path, T report, CancellationToken cancel = default) =>
        File.WriteAllTextAsync(path, Serialize(report), cancel);

    /// <summary>Creates <paramref name="outDir"/> and checks, before any work, that <c>NAME.md</c>, <c>NAME.json</c> and
    /// <paramref name="others"/> (file names) can be written there.</summary>
    public static ReportFiles Prepare(string outDir, string name, params string[] others)
    {
        if (string.IsNullOrWhiteSpace(outDir)) throw new ArgumentException("--out must name a folder");
        var dir = Directory.CreateDirectory(outDir).FullName;
        var files = new ReportFiles(Path.Combine(dir, $"{name}.md"), Path.Combine(dir, $"{name}.json"), [.. others.Select(o => Path.Combine(dir, o))]);
        foreach (var f in files.All) OutputPaths.CheckWritable(f, "--out");
        return files;
    }

    /// <summary>Writes the Markdown and the JSON, then prints the Markdown and the files written to <paramref name="output"/>.
    /// <paramref name="writeOthers"/> writes <see cref="ReportFiles.Others"/> (e.g. a plot) first.</summary>
    public static async Task WriteAsync<T>(ReportFiles files, string markdown, T report, TextWriter output, CancellationToken cancel,
        Action? writeOthers = null)
    {
        await File.WriteAllTextAsync(files.Markdown, markdown, cancel);
        await WriteJsonAsync(files.Json, report, cancel);
        writeOthers?.Invoke();
        output.Write(markdown);
        output.WriteLine();
        output.WriteLine($"written: {string.Join(", ", files.All)}");
    }
}

/// <summary>A GitHub Markdown table: a header, an alignment row (<c>---</c> or right-aligned <c>---:</c>) and rows.</summary>
public sealed class MarkdownTable
{
    readonly string[] _headers;
    readonly bool[] _right;
    readonly List<string[]> _rows = [];

    /// <param name="columns">Column headers; a header ending in <c>&gt;</c> is right-aligned (the mark is not printed).</param>
    public MarkdownTable(params string[] columns)
    {
        _right = [.. columns.Select(c => c.EndsWith('>'))];
        _headers = [.. columns.Select(c => c.TrimEnd('>'))];
    }

    public MarkdownTable Row(params string[] cells)
    {
        if (cells.Length != _headers.Length) throw new ArgumentException($"a row of {cells.Length} cells in a table of {_headers.Length} columns");
        _rows.Add(cells);
        return this;
    }

    public IEnumerable<string> Lines()
    {
        yield return Line(_headers);
        yield return $"|{string.Join('|', _right.Select(r => r ? "---:" : "---"))}|";
        foreach (var r in _rows) yield return Line(r);
    }

    public void WriteTo(TextWriter w)
    {
        foreach (var line in Lines()) w.WriteLine(line);
    }

    public override string ToString() => string.Join('\n', Lines());

    static string Line(IEnumerable<string> cells) => $"| {string.Join(" | ", cells)} |";
}
