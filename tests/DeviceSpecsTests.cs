using Superpipeline.Coordinator.Commands;
using Superpipeline.Engine.Devices;
using TorchSharp;

namespace Superpipeline.Tests;

/// <summary>Devices parsed in one place (<see cref="DeviceSpecs"/>), refusals in domain words, and the CLI's flags for them.</summary>
public sealed class DeviceSpecsTests
{
    [Theory]
    [InlineData("sim", DeviceKind.Sim)]
    [InlineData("CUDA", DeviceKind.Cuda)]
    [InlineData(" auto ", null)]
    public void A_kind_parses_to_one_type_and_auto_to_no_kind(string text, DeviceKind? kind) => Assert.Equal(kind, DeviceSpecs.ParseKind(text));

    [Fact]
    public void Auto_resolves_to_a_kind_the_factory_can_make()
    {
        var expected = torch.cuda.is_available() ? DeviceKind.Cuda : DeviceKind.Sim;
        Assert.Equal(expected, DeviceFactory.Resolve(null));
        Assert.Equal(DeviceKind.Sim, DeviceFactory.Resolve(DeviceKind.Sim));
        using var device = DeviceFactory.Create(new DeviceSpec(DeviceKind.Sim, 1 << 20, null), 3);
        Assert.Equal(("sim:3", DeviceKind.Sim, 1L << 20), (device.Name, device.Kind, device.Memory.Capacity));
    }

    [Fact]
    public void A_bad_kind_is_refused_naming_the_device_field_and_run_names_its_flag()
    {
        var e = Assert.Throws<FieldException>(() => DeviceSpecs.ParseKind("tpu"));
        Assert.Equal(FieldException.Device, e.Field);
        Assert.Equal("device must be sim, cuda or auto; got 'tpu'", e.Message);
        Assert.Equal("--device must be sim, cuda or auto; got 'tpu'", Flags.Describe(e, RunCommand.Build()));
    }

    [Fact]
    public void Lists_give_one_spec_per_device_with_counts_sizes_and_links()
    {
        var specs = DeviceSpecs.ParseList("sim:2x4GiB, sim:512MiB@8,cuda:1x24GiB");
        Assert.Equal(
        [
            new DeviceSpec(DeviceKind.Sim, 4L << 30, null), new DeviceSpec(DeviceKind.Sim, 4L << 30, null),
            new DeviceSpec(DeviceKind.Sim, 512L << 20, 8), new DeviceSpec(DeviceKind.Cuda, 24L << 30, null),
        ], specs);
    }

    [Theory]
    [InlineData("devices entries look like sim:2x4GiB, sim:1GiB@16 or cuda:all; got 'tpu:1GiB'", "tpu:1GiB")]
    [InlineData("devices count must be at least 1; got 'sim:0x1GiB'", "sim:0x1GiB")]
    [InlineData("devices only cuda devices can be 'all'; got 'sim:all'", "sim:all")]
    [InlineData("devices must be a positive size in bytes, optionally with a KiB/MiB/GiB suffix; got 'lots'", "sim:lots")]
    [InlineData("devices link must be a positive number of GB/s; got 'sim:1GiB@1.2.3'", "sim:1GiB@1.2.3")]
    [InlineData("devices is empty", " , ")]
    public void A_bad_list_is_refused_in_domain_words_and_host_names_its_flag(string message, string text)
    {
        var e = Assert.Throws<FieldException>(() => DeviceSpecs.ParseList(text));
        Assert.Equal(FieldException.Devices, e.Field);
        Assert.Equal(message, e.Message);
        Assert.Equal("--" + message, Flags.Describe(e, HostCommand.Build()));
        Assert.Equal(message, Flags.Describe(e, SubmitCommand.Build())); // a command without --devices keeps the domain's words
    }

    [Fact]
    public void Cuda_all_takes_every_gpu_torchsharp_sees_with_the_assumed_capacity_or_is_refused_without_one()
    {
        if (!torch.cuda.is_available())
        {
            var e = Assert.Throws<FieldException>(() => DeviceSpecs.ParseList("cuda:all"));
            Assert.Equal(FieldException.Devices, e.Field);
            return;
        }
        var specs = DeviceSpecs.ParseList("cuda:all@12");
        Assert.Equal(torch.cuda.device_count(), specs.Count);
        Assert.All(specs, s => Assert.Equal(new DeviceSpec(DeviceKind.Cuda, 16L << 30, 12, CapacityAssumed: true), s));
    }

    [Theory]
    [InlineData("blocks must be at least 1 (got 0)", "--layers must be at least 1 (got 0)", 0, 32, 4)]
    [InlineData("hidden (30) must be a multiple of the heads (4)", "--hidden (30) must be a multiple of the heads (4)", 2, 30, 4)]
    [InlineData("heads must be at least 1 (got 0)", "--heads must be at least 1 (got 0)", 2, 32, 0)]
    public void A_bad_model_shape_names_the_domain_field_and_the_cli_its_flag(string domain, string cli, int blocks, int hidden, int heads)
    {
        var e = Assert.Throws<FieldException>(() => ModelCatalog.Create(new ModelSpec("demo", blocks, hidden, heads, 64, 8, 2, 1)));
        Assert.Equal(domain, e.Message);
        Assert.Equal(cli, Flags.Describe(e, RunCommand.Build()));
    }

    [Fact]
    public void A_device_below_the_largest_layer_is_refused_naming_device_memory_and_run_names_its_flag()
    {
        var model = ModelCatalog.Create(new ModelSpec("demo", 1, 32, 4, 64, 8, 2, 1));
        var e = Assert.Throws<FieldException>(() => Preflight.DeviceFits(model, 1000));
        Assert.Equal(FieldException.DeviceMemory, e.Field);
        Assert.StartsWith("device memory 1,000 bytes is below the largest layer", e.Message);
        Assert.StartsWith("--device-memory 1,000 bytes is below the largest layer", Flags.Describe(e, RunCommand.Build()));
        Preflight.DeviceFits(model, 64L << 20); // fits: no refusal
    }
}
