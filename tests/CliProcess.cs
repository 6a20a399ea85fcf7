using System.Diagnostics;

namespace Superpipeline.Tests;

/// <summary>The built <c>superpipeline</c> CLI (superpipeline.dll beside the tests) in its own process: its exit code, standard
/// output and standard error, killed with its children and reported as a <see cref="TimeoutException"/> past a bounded wait.</summary>
static class CliProcess
{
    /// <summary>How long a command may take unless a test says otherwise.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromMinutes(2);

    /// <summary>Runs <c>superpipeline <paramref name="args"/></c> and waits at most <see cref="DefaultTimeout"/>.</summary>
    public static (int Code, string Out, string Err) Run(params string[] args) => Run(DefaultTimeout, args);

    /// <summary>Runs <c>superpipeline <paramref name="args"/></c> and waits at most <paramref name="timeout"/>.</summary>
    public static (int Code, string Out, string Err) Run(TimeSpan timeout, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "superpipeline.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"superpipeline did not exit within {timeout.TotalSeconds:0} s: {string.Join(' ', args)}");
        }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }
}
