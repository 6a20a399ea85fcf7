using Superpipeline.Messages;

namespace Superpipeline.Tests;

public sealed class OffloadPolicyTests
{
    [Theory]
    [InlineData(1, 1, 1, 0)]
    [InlineData(3, 1, 3, 2)]
    [InlineData(5, 5, 5, 0)]
    public void Valid_knobs_give_window_swap_and_prefetch_depth(int window, int swap, int expectedWindow, int expectedPrefetch)
    {
        var p = OffloadPolicy.For(new PolicySpec(window, swap), layers: 5);
        Assert.Equal(expectedWindow, p.Window);
        Assert.Equal(swap, p.Swap);
        Assert.Equal(expectedPrefetch, p.PrefetchDepth);
        Assert.False(p.IsResident);
    }

    [Fact]
    public void A_job_s_knobs_and_the_simulator_s_text_are_one_policy()
    {
        Assert.Equal(OffloadPolicy.Parse("window:3:1"), OffloadPolicy.For(new PolicySpec(3, 1), layers: 5));
        Assert.Equal("window:3:1", OffloadPolicy.For(new PolicySpec(3, null), layers: 5).ToString());
        var resident = OffloadPolicy.Parse("resident").CreateGate([1, 2, 3]);
        Assert.Equal(3, resident.MaxResidentLayers); // resolved against the model when it becomes a gate
        Assert.Equal(OffloadPolicy.For(PolicySpec.Resident, 3), ((WindowGate)resident).Policy);
    }

    [Fact]
    public void Window_all_keeps_every_layer_resident()
    {
        var p = OffloadPolicy.For(PolicySpec.Resident, layers: 7);
        Assert.True(p.IsResident);
        Assert.Equal(7, p.Window);
        Assert.Equal(7, p.Swap);
        Assert.Null(OffloadPolicy.ParseWindow("all"));
        Assert.Null(OffloadPolicy.ParseWindow("ALL"));
    }

    [Theory]
    [InlineData(0, 1, "window", "window must be from 1 to 5")]
    [InlineData(6, 1, "window", "window must be from 1 to 5")]
    [InlineData(-2, 1, "window", "window must be from 1 to 5")]
    [InlineData(3, 4, "swap", "swap must be from 1 to the window (3); got 4")]
    [InlineData(3, 0, "swap", "swap must be from 1 to the window (3); got 0")]
    public void Out_of_range_knobs_are_refused_naming_the_knob_and_range(int window, int swap, string field, string message)
    {
        var e = Assert.Throws<FieldException>(() => OffloadPolicy.For(new PolicySpec(window, swap), layers: 5));
        Assert.Equal(field, e.Field);
        Assert.StartsWith(message, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Theory]
    [InlineData("three", "window must be a whole number, 'all' or 'auto'; got 'three'")]
    [InlineData("2.5", "window must be a whole number, 'all' or 'auto'; got '2.5'")]
    public void Window_that_is_not_a_number_is_refused(string text, string message) =>
        Assert.Equal(message, Assert.Throws<FieldException>(() => OffloadPolicy.ParseWindow(text)).Message);

    [Fact]
    public void Swap_that_is_not_a_number_is_refused() =>
        Assert.Equal("swap must be a whole number; got 'x'", Assert.Throws<FieldException>(() => OffloadPolicy.ParseSwap("x")).Message);

    [Theory]
    [InlineData("1048576", 1048576L)]
    [InlineData("64MiB", 64L << 20)]
    [InlineData("1.5 GiB", 3L << 29)]
    [InlineData("512KiB", 512L << 10)]
    [InlineData("2g", 2L << 30)]
    public void Byte_sizes_parse_with_suffixes(string text, long bytes) => Assert.Equal(bytes, ByteSize.Parse(text, FieldException.DeviceMemory));

    [Theory]
    [InlineData("lots")]
    [InlineData("-5MiB")]
    [InlineData("0")]
    public void Bad_byte_sizes_are_refused_naming_the_field(string text)
    {
        var e = Assert.Throws<FieldException>(() => ByteSize.Parse(text, FieldException.DeviceMemory));
        Assert.Equal(FieldException.DeviceMemory, e.Field);
        Assert.StartsWith("device memory must be a positive size", e.Message);
    }
}
