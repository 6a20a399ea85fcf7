using Superpipeline.Engine.Policy;
using Superpipeline.Contracts;
using Superpipeline.Messages;
using Xunit;

namespace Superpipeline.Tests;

public sealed class StreamPolicyTests
{
    [Theory]
    [InlineData(1, 1, 1, 0)]
    [InlineData(3, 1, 3, 2)]
    [InlineData(5, 5, 5, 0)]
    public void Valid_knobs_give_window_swap_and_prefetch_depth(int window, int swap, int expectedWindow, int expectedPrefetch)
    {
        var p = StreamPolicy.Create(new PolicySpec(window, swap), layers: 5);
        Assert.Equal(expectedWindow, p.Window);
        Assert.Equal(swap, p.Swap);
        Assert.Equal(expectedPrefetch, p.PrefetchDepth);
        Assert.False(p.Resident);
    }

    [Fact]
    public void Window_all_keeps_every_layer_resident()
    {
        var p = StreamPolicy.Create(PolicySpec.Resident, layers: 7);
        Assert.True(p.Resident);
        Assert.Equal(7, p.Window);
        Assert.Equal(7, p.Swap);
        Assert.Null(StreamPolicy.ParseWindow("all"));
        Assert.Null(StreamPolicy.ParseWindow("ALL"));
    }

    [Theory]
    [InlineData(0, 1, "window", "window must be from 1 to 5")]
    [InlineData(6, 1, "window", "window must be from 1 to 5")]
    [InlineData(-2, 1, "window", "window must be from 1 to 5")]
    [InlineData(3, 4, "swap", "swap must be from 1 to the window (3); got 4")]
    [InlineData(3, 0, "swap", "swap must be from 1 to the window (3); got 0")]
    public void Out_of_range_knobs_are_refused_naming_the_knob_and_range(int window, int swap, string field, string message)
    {
        var e = Assert.Throws<FieldException>(() => StreamPolicy.Create(new PolicySpec(window, swap), layers: 5));
        Assert.Equal(field, e.Field);
        Assert.StartsWith(message, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Theory]
    [InlineData("three", "window must be a whole number, 'all' or 'auto'; got 'three'")]
    [InlineData("2.5", "window must be a whole number, 'all' or 'auto'; got '2.5'")]
    public void Window_that_is_not_a_number_is_refused(string text, string message) =>
        Assert.Equal(message, Assert.Throws<FieldException>(() => StreamPolicy.ParseWindow(text)).Message);

    [Fact]
    public void Swap_that_is_not_a_number_is_refused() =>
        Assert.Equal("swap must be a whole number; got 'x'", Assert.Throws<FieldException>(() => StreamPolicy.ParseSwap("x")).Message);

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
