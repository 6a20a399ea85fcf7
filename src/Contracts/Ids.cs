namespace Superpipeline.Contracts;

/// <summary>A job's id, chosen by the client; resubmitting the same id never runs the job twice.</summary>
public sealed record JobId(string Value)
{
    public static JobId New() => new(Guid.NewGuid().ToString("N")[..12]);
    public override string ToString() => Value;
}
