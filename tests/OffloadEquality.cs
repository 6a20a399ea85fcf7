using Akka.Actor;
using Superpipeline.Engine;
using Superpipeline.Engine.Devices;
using Superpipeline.Workers;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>The (k, k') bit-identity harness every family's spec shares: one model on one simulated device, through its layer
/// actors and the device loader, resident and then under a list of (window, swap); every output bit for bit resident's, resident
/// bit for bit the layers' forwards on the host, no device bytes left reserved and the live tensors back to the baseline.</summary>
static class OffloadEquality
{
    /// <summary>Every window k from 1 to <paramref name="layers"/> with every swap k' from 1 to k: layers · (layers + 1) / 2 cases.</summary>
    public static (int Window, int Swap)[] EveryWindowAndSwap(int layers) =>
        [.. Enumerable.Range(1, layers).SelectMany(k => Enumerable.Range(1, k).Select(s => (k, s)))];

    /// <summary>Every layer's forward in order with <paramref name="source"/>'s weights, on the host, in inference mode: the
    /// reference a resident pass must equal bit for bit. The result leaves the dispose scope; the caller disposes it.</summary>
    public static Tensor HostForward(LayeredModel model, IWeightSource source, Tensor input)
    {
        using var scope = NewDisposeScope();
        using var noGrad = inference_mode();
        var x = input.alias();
        foreach (var layer in model.Layers) x = layer.Forward(source.Load(layer), x);
        return x.MoveToOuterDisposeScope();
    }

    /// <summary>Runs <paramref name="model"/> resident, then under each of <paramref name="cases"/>, on one simulated device of
    /// <paramref name="deviceBytes"/>, and asserts that resident's output is <see cref="HostForward"/>'s bit for bit; that each
    /// case's output is resident's bit for bit and its report names the case's window and swap; that the device holds no reserved
    /// bytes at the end; and that the process-wide live tensors after the cases are as many as after resident (the passes leak
    /// none). <paramref name="eachOutput"/> sees every output tensor (resident's too) before it is disposed. The actors stop at the
    /// end. Returns resident's raw bytes.</summary>
    public static async Task<byte[]> AssertBitIdenticalToResident(ActorSystem system, LayeredModel model, IWeightSource source, Tensor input,
        IReadOnlyList<(int Window, int Swap)> cases, long deviceBytes = 256L << 20, string label = "", Action<Tensor>? eachOutput = null)
    {
        using var device = new SimulatedDevice("sim:0", deviceBytes, null);
        var tag = Guid.NewGuid().ToString("N")[..8];
        var layers = model.Layers.Select(l => system.ActorOf(LayerActor.Props(l, source, pin: false), $"{tag}-layer-{l.Index}")).ToArray();
        var loader = system.ActorOf(DeviceLoaderActor.Props(device, TimeSpan.FromSeconds(30)), $"{tag}-loader");
        try
        {
            async Task<(byte[] Bytes, PassReport Report)> Pass(int? k, int? s)
            {
                var policy = OffloadPolicy.For(new PolicySpec(k, s), model.Layers.Count);
                var answer = await loader.Ask<object>(new DeviceLoaderActor.RunPass(model, layers, input, policy), TimeSpan.FromMinutes(2));
                if (answer is DeviceLoaderActor.PassFailed f) throw new PassFailedException(f.Reason);
                var ok = (DeviceLoaderActor.PassSucceeded)answer;
                using var output = ok.Output;
                eachOutput?.Invoke(output);
                return (TensorBytes.Raw(output), ok.Report);
            }
            var (resident, _) = await Pass(null, null);
            using (var plain = HostForward(model, source, input))
                Assert.True(TensorBytes.Raw(plain).AsSpan().SequenceEqual(resident), $"{label}resident differs from the layers' forwards on the host");
            long tensors = TensorProbe.LiveTensors();
            foreach (var (k, s) in cases)
            {
                var (output, report) = await Pass(k, s);
                Assert.True(resident.AsSpan().SequenceEqual(output), $"{label}k={k}, k'={s} differs from resident");
                Assert.Equal((k, s), (report.Window, report.Swap));
            }
            Assert.Equal(0, device.Memory.Reserved);
            Assert.Equal(tensors, TensorProbe.LiveTensors());
            return resident;
        }
        finally
        {
            foreach (var a in layers.Append(loader)) system.Stop(a);
        }
    }
}
