using Superpipeline.Contracts;

namespace Superpipeline.Engine.IO;

/// <summary>A job's input written as a .npy file in the temporary directory (a path crosses the wire, the tensor does not), named
/// by its kind's prefix and this process's id (processes share the directory, so the name says whose file it is), and deleted
/// again only when it is one such file.</summary>
public static class TemporaryNpy
{
    /// <summary>Writes <paramref name="payload"/> to a new file named <paramref name="prefix"/>PID-GUID.npy; returns its path.</summary>
    public static string Write(string prefix, TensorPayload payload)
    {
        string path = Path.Combine(Path.GetTempPath(), $"{prefix}{Environment.ProcessId}-{Guid.NewGuid():N}.npy");
        Npy.Write(path, payload);
        return path;
    }

    /// <summary>Deletes <paramref name="path"/> when it is a file <see cref="Write"/> wrote with <paramref name="prefix"/> in the
    /// temporary directory; anything else (null, a user's own file) is left alone.</summary>
    public static void Delete(string prefix, string? path)
    {
        if (path is null || !Path.GetFileName(path).StartsWith(prefix, StringComparison.Ordinal)) return;
        if (Path.GetFullPath(Path.GetDirectoryName(path)!) != Path.GetFullPath(Path.GetTempPath()).TrimEnd(Path.DirectorySeparatorChar)) return;
        File.Delete(path);
    }
}
