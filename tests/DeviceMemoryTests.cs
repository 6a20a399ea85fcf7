using Superpipeline.Engine.Devices;

namespace Superpipeline.Tests;

public sealed class DeviceMemoryTests
{
    [Fact]
    public void Reservations_are_counted_exactly_and_peak_is_tracked()
    {
        var m = new DeviceMemory("sim:0", 1000);
        var a = m.Reserve(400, "a");
        var b = m.Reserve(500, "b");
        Assert.Equal(900, m.Reserved);
        a.Dispose();
        a.Dispose(); // idempotent
        Assert.Equal(500, m.Reserved);
        Assert.Equal(900, m.Peak);
        b.Dispose();
        Assert.Equal(0, m.Reserved);
        Assert.Equal(1000, m.Free);
    }

    [Fact]
    public void Reservation_past_capacity_fails_with_requested_free_and_total_bytes()
    {
        var m = new DeviceMemory("sim:3", 1000);
        using var held = m.Reserve(700, "first");
        var e = Assert.Throws<DeviceOutOfMemoryException>(() => m.Reserve(301, "layer 2 (block.1) weights"));
        Assert.Equal(301, e.Requested);
        Assert.Equal(300, e.Free);
        Assert.Equal(1000, e.Capacity);
        Assert.Contains("sim:3", e.Message);
        Assert.Contains("layer 2 (block.1) weights needs 301 bytes", e.Message);
        Assert.Contains("300 of 1,000 bytes free", e.Message);
        Assert.Equal(700, m.Reserved); // the failed reservation left nothing behind
    }

    [Fact]
    public async Task Upload_reserves_numel_times_element_size_and_dispose_returns_it()
    {
        using var device = new SimulatedDevice("sim:0", 1 << 20);
        using var a = TorchSharp.torch.ones(10, 20); // 800 bytes
        using var b = TorchSharp.torch.zeros(new long[] { 5 }, TorchSharp.torch.ScalarType.Int64); // 40 bytes
        var placed = await device.OnTransferThread(() => device.Upload([("a", a), ("b", b)], "test")).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(840, placed.Bytes);
        Assert.Equal(840, device.Memory.Reserved);
        Assert.Equal(a.data<float>().ToArray(), placed["a"].data<float>().ToArray());
        placed.Dispose();
        Assert.Equal(0, device.Memory.Reserved);
    }

    [Fact]
    public async Task Upload_that_does_not_fit_leaves_nothing_reserved()
    {
        using var device = new SimulatedDevice("sim:0", 100);
        using var a = TorchSharp.torch.ones(10, 20);
        var e = await Assert.ThrowsAsync<DeviceOutOfMemoryException>(
            () => device.OnTransferThread(() => device.Upload([("a", a)], "big")).WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(800, e.Requested);
        Assert.Equal(0, device.Memory.Reserved);
    }
}
