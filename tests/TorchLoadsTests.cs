using TorchSharp;

namespace Superpipeline.Tests;

/// <summary>The native library loads on this machine (PLATFORM.md: needs the build's libstdc++ fix on Debian 12).</summary>
public sealed class TorchLoadsTests
{
    [Fact]
    public void Torch_native_library_loads_and_computes()
    {
        using var a = torch.ones(3, 4);
        using var b = torch.ones(4, 2);
        using var c = torch.matmul(a, b);
        Assert.Equal(4f, c[0, 0].item<float>());
        Assert.Equal(new long[] { 3, 2 }, c.shape);
    }
}
