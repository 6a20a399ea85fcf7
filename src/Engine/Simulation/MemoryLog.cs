namespace Superpipeline.Engine.Simulation;

/// <summary>Reservations and frees at virtual times. The peak is read with frees before reservations at the same
/// instant (what a real allocator sees when one layer's bytes are returned as the next one's are requested), so it
/// does not depend on the order in which simultaneous events happened to be processed.</summary>
public sealed class MemoryLog
{
    readonly List<(double At, long Delta, string What)> _events = [];

    public void Reserve(double at, long bytes, string what) { lock (_events) _events.Add((at, bytes, what)); }
    public void Free(double at, long bytes, string what) { lock (_events) _events.Add((at, -bytes, what)); }

    /// <summary>The highest total, and when and on what it was first reached.</summary>
    public (long Peak, double At, string What) Peak()
    {
        lock (_events)
        {
            long current = 0, peak = 0;
            double at = 0;
            string what = "";
            foreach (var e in _events.OrderBy(e => e.At).ThenBy(e => e.Delta < 0 ? 0 : 1))
            {
                current += e.Delta;
                if (current > peak) (peak, at, what) = (current, e.At, e.What);
            }
            return (peak, at, what);
        }
    }

    public long Outstanding() { lock (_events) return _events.Sum(e => e.Delta); }
}
