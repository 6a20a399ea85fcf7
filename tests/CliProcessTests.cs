using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.RegularExpressions;
using Superpipeline.Engine.IO;

namespace Superpipeline.Tests;

/// <summary>The real `superpipeline` executable in its own process: files written, exit codes, one-line errors.</summary>
public sealed class CliProcessTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("superpipeline-cli-").FullName;
    static readonly string[] Small = ["--layers", "3", "--hidden", "32", "--heads", "4", "--vocab", "64", "--seq-len", "8", "--batch", "2"];


    [Fact]
    public void Run_writes_report_trace_and_npy_that_agree_with_each_other()
    {
        string report = Path.Combine(_dir, "r.json"), trace = Path.Combine(_dir, "t.json"), npy = Path.Combine(_dir, "o.npy");
        var (code, stdout, stderr) = CliProcess.Run(["run", .. Small, "--window", "2", "--swap", "1", "--device-memory", "1MiB",
            "--report", report, "--trace", trace, "--output", npy]);
        Assert.True(code == 0, stderr);
        Assert.Contains("output sha256", stdout);

        using var json = JsonDocument.Parse(File.ReadAllText(report));
        var r = json.RootElement;
        foreach (var field in new[] { "outputSha256", "layers", "window", "swap", "modelBytes", "peakDeviceBytes", "bytesTransferred", "wallSeconds",
            "lowerBoundSeconds", "overlapEfficiency", "perLayer" })
            Assert.True(r.TryGetProperty(field, out _), $"report lacks {field}");
        Assert.Equal(5, r.GetProperty("layers").GetInt32());
        Assert.Equal(2, r.GetProperty("window").GetInt32());
        Assert.Equal(1, r.GetProperty("swap").GetInt32());
        Assert.Equal(5, r.GetProperty("perLayer").GetArrayLength());
        Assert.True(r.GetProperty("peakDeviceBytes").GetInt64() <= 1L << 20);
        Assert.True(r.GetProperty("perLayer")[0].GetProperty("loadSeconds").GetDouble() > 0);
        Assert.True(r.GetProperty("perLayer")[0].GetProperty("computeSeconds").GetDouble() > 0);
        double wall = r.GetProperty("wallSeconds").GetDouble(), bound = r.GetProperty("lowerBoundSeconds").GetDouble();
        Assert.Equal(bound / wall, r.GetProperty("overlapEfficiency").GetDouble(), 9);

        var (descr, shape, data) = Npy.Read(npy);
        Assert.Equal("<f4", descr);
        Assert.Equal(new long[] { 2, 8, 64 }, shape);
        Assert.Equal(r.GetProperty("outputSha256").GetString(), Convert.ToHexStringLower(SHA256.HashData(data)));

        using var t = JsonDocument.Parse(File.ReadAllText(trace));
        var names = t.RootElement.GetProperty("traceEvents").EnumerateArray().Select(e => e.GetProperty("name").GetString()!).ToArray();
        Assert.Contains("load block.0", names);
        Assert.Contains("compute block.0", names);
        Assert.Contains("evict block.0", names);
    }

    [Fact]
    public void Offloaded_and_resident_runs_print_the_same_output_hash()
    {
        string a = Path.Combine(_dir, "a.json"), b = Path.Combine(_dir, "b.json");
        Assert.Equal(0, CliProcess.Run(["run", .. Small, "--window", "all", "--report", a]).Code);
        Assert.Equal(0, CliProcess.Run(["run", .. Small, "--window", "1", "--swap", "1", "--report", b]).Code);
        string Sha(string f) => JsonDocument.Parse(File.ReadAllText(f)).RootElement.GetProperty("outputSha256").GetString()!;
        Assert.Equal(Sha(a), Sha(b));
    }

    [Theory]
    [InlineData("--window must be a whole number, 'all' or 'auto'; got 'three'", "--window", "three")]
    [InlineData("--window must be from 1 to 5 (the model's layers) or 'all'; got 9", "--window", "9")]
    [InlineData("--swap must be from 1 to the window (3); got 4", "--window", "3", "--swap", "4")]
    [InlineData("--swap must be a whole number; got 'one'", "--swap", "one")]
    [InlineData("--device-memory must be a positive size in bytes, optionally with a KiB/MiB/GiB suffix; got 'lots'", "--device-memory", "lots")]
    [InlineData("--device-memory 20,000 bytes is below the largest layer, 1 (block.0) of 50,816 bytes (with activations it needs 93,824)",
        "--device-memory", "20000")]
    [InlineData("unknown model 'llama-9000' (known: demo, gpt)", "--model", "llama-9000")]
    [InlineData("--device must be sim, cuda or auto; got 'tpu'", "--device", "tpu")]
    [InlineData("--link-gbps must be a positive number of GB/s; got '-1'", "--link-gbps", "-1")]
    [InlineData("--swap cannot be given with --window auto: the planner chooses both", "--window", "auto", "--swap", "2")]
    public void Bad_input_exits_non_zero_with_one_line_naming_what_was_wrong(string message, params string[] bad)
    {
        var (code, _, stderr) = CliProcess.Run(["run", .. Small, .. bad]);
        Assert.NotEqual(0, code);
        Assert.Equal($"superpipeline: {message}", stderr.Trim());
    }

    [Theory]
    [InlineData("--devices count must be at least 1; got 'sim:0x1GiB'", "sim:0x1GiB")]
    [InlineData("--devices only cuda devices can be 'all'; got 'sim:all'", "sim:all")]
    public void Host_refuses_bad_devices_naming_its_flag_before_it_starts(string message, string devices)
    {
        var (code, _, stderr) = CliProcess.Run(["host", "--role", "worker", "--port", "0", "--devices", devices]);
        Assert.NotEqual(0, code);
        Assert.Equal($"superpipeline: {message}", stderr.Trim());
    }

    [Fact]
    public void Window_auto_plans_a_window_that_fits_the_device_and_keeps_the_output()
    {
        string auto = Path.Combine(_dir, "auto.json"), resident = Path.Combine(_dir, "resident.json");
        var (code, stdout, stderr) = CliProcess.Run(["run", .. Small, "--window", "auto", "--device-memory", "300KiB", "--report", auto]);
        Assert.True(code == 0, stderr);
        Assert.Contains("(planned)", stdout);
        Assert.Equal(0, CliProcess.Run(["run", .. Small, "--window", "all", "--report", resident]).Code);
        var r = JsonDocument.Parse(File.ReadAllText(auto)).RootElement;
        int k = r.GetProperty("window").GetInt32(), s = r.GetProperty("swap").GetInt32();
        Assert.InRange(k, 1, 5);
        Assert.InRange(s, 1, k);
        Assert.True(r.GetProperty("peakDeviceBytes").GetInt64() <= 300 * 1024);
        Assert.Equal(JsonDocument.Parse(File.ReadAllText(resident)).RootElement.GetProperty("outputSha256").GetString(),
            r.GetProperty("outputSha256").GetString());
    }

    [Fact]
    public void Plan_prints_the_chosen_knobs()
    {
        var (code, stdout, stderr) = CliProcess.Run(["plan", .. Small, "--device-memory", "300KiB", "--link-gbps", "2", "--tflops", "0.1"]);
        Assert.True(code == 0, stderr);
        Assert.Matches(@"--window \d+ --swap \d+", stdout);
        Assert.Contains("predicted peak device bytes", stdout);
    }

    [Fact]
    public void An_unwritable_report_path_is_refused_before_any_work()
    {
        var (code, stdout, stderr) = CliProcess.Run(["run", .. Small, "--report", "/proc/superpipeline/report.json"]);
        Assert.NotEqual(0, code);
        Assert.StartsWith("superpipeline: --report /proc/superpipeline/report.json cannot be written", stderr.Trim());
        Assert.DoesNotContain('\n', stderr.Trim());
        Assert.DoesNotContain("output sha256", stdout);
    }

    [Fact]
    public void A_flag_that_is_not_a_number_is_one_line()
    {
        var (code, _, stderr) = CliProcess.Run(["run", "--layers", "many"]);
        Assert.NotEqual(0, code);
        Assert.StartsWith("superpipeline: ", stderr.Trim());
        Assert.Contains("many", stderr);
        Assert.DoesNotContain('\n', stderr.Trim());
    }

    [Fact]
    public void A_model_whose_host_weights_exceed_the_available_memory_is_refused_before_any_work_naming_both_figures()
    {
        var (code, stdout, stderr) = CliProcess.Run("run", "--layers", "100000");
        Assert.NotEqual(0, code);
        var line = stderr.Trim();
        Assert.DoesNotContain('\n', line);
        // The demo (a seeded GPT-2) at its defaults (hidden 512, vocab 4096, sequence 128), fp32: a block holds 12h² + 13h parameters
        // (QKV and output projections, the two MLP matrices, their biases, two LayerNorms); the embeddings V·h + S·h; the
        // head a final LayerNorm (2h) and the V·h matrix tied to wte, which the head layer holds again.
        const long h = 512, v = 4096, seq = 128, blocks = 100_000;
        long weights = 4 * (blocks * (12 * h * h + 13 * h) + (v * h + seq * h) + (2 * h + v * h));
        var m = Regex.Match(line, @"^superpipeline: the model's weights need ([\d,]+) bytes .* more than the (?:host weight budget of )?([\d,]+) bytes .*"
            + @"of memory available \(MemAvailable in /proc/meminfo\); nothing was started$");
        Assert.True(m.Success, line);
        Assert.Equal(weights, long.Parse(m.Groups[1].Value.Replace(",", ""), System.Globalization.CultureInfo.InvariantCulture));
        long limit = long.Parse(m.Groups[2].Value.Replace(",", ""), System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(limit, 1, weights - 1);
        Assert.Equal("", stdout.Trim());
    }

    [Fact]
    public void Submit_to_an_address_where_no_coordinator_listens_gives_up_after_the_connect_timeout_with_one_line_and_no_akka_log()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop(); // nothing listens there now
        var (code, stdout, stderr) = CliProcess.Run(["submit", "--contact", $"127.0.0.1:{port}", "--connect-timeout", "3s", .. Small]);
        Assert.NotEqual(0, code);
        Assert.Equal($"superpipeline: no coordinator answered at 127.0.0.1:{port} within 3 s (--connect-timeout)", stderr.Trim());
        Assert.Equal("", stdout.Trim()); // Akka's logger writes to stdout: nothing of it without --verbose
    }

    [Fact]
    public void Submit_refuses_a_window_the_model_cannot_take_before_it_contacts_anyone()
    {
        var (code, stdout, stderr) = CliProcess.Run(["submit", "--contact", "127.0.0.1:1", .. Small, "--window", "9"]);
        Assert.NotEqual(0, code);
        Assert.Equal("superpipeline: --window must be from 1 to 5 (the model's layers) or 'all'; got 9", stderr.Trim());
        Assert.Equal("", stdout.Trim());
    }

    [Theory]
    [InlineData("--policy 'fast' is not a policy; expected ", "--policy", "fast")]
    [InlineData("--policy window:99:1: k = 99 is above the model's 82 streamed layers", "--policy", "window:99:1")]
    [InlineData("--micro-batches must be at least 1; got 0", "--micro-batches", "0")]
    [InlineData("--prompt + --generate (100032) exceeds llama2-70b's 4096 positions", "--prompt", "100000")]
    public void Simulate_refusals_name_its_flags(string message, params string[] bad)
    {
        var (code, _, stderr) = CliProcess.Run(["simulate", .. bad]);
        Assert.NotEqual(0, code);
        Assert.StartsWith($"superpipeline: {message}", stderr.Trim());
        Assert.DoesNotContain('\n', stderr.Trim());
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
