namespace Superpipeline.Coordinator;

public static class OutputPaths
{
    /// <summary>Fails before any work starts if <paramref name="path"/> cannot be written, naming the option.</summary>
    public static void CheckWritable(string? path, string option)
    {
        if (string.IsNullOrEmpty(path)) return;
        var full = Path.GetFullPath(path);
        if (Directory.Exists(full)) throw new ArgumentException($"{option} {path} is a directory, not a file");
        bool existed = File.Exists(full);
        try
        {
            using (new FileStream(full, FileMode.OpenOrCreate, FileAccess.Write)) { }
            if (!existed) File.Delete(full);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"{option} {path} cannot be written: {e.Message}");
        }
    }
}
