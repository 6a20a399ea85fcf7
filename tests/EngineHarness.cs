using Akka.Actor;
using Superpipeline.Engine;
using Superpipeline.Engine.Devices;
using Superpipeline.Messages;
using Superpipeline.Workers;
using TorchSharp;
using static TorchSharp.torch;

namespace Superpipeline.Tests;

/// <summary>One device, its loader and the layer actors of one model, inside a test's actor system.</summary>
public sealed class EngineHarness : IDisposable
{
    public EngineHarness(ActorSystem system, ModelSpec spec, long capacityBytes, double? linkGBps = null)
    {
        Spec = spec;
        Model = ModelCatalog.Create(spec);
        Device = new SimulatedDevice("sim:0", capacityBytes, linkGBps);
        var weights = ModelCatalog.Weights(spec);
        var tag = Guid.NewGuid().ToString("N")[..8];
        Layers = Model.Layers.Select(l => system.ActorOf(LayerActor.Props(l, weights, pin: false), $"{tag}-layer-{l.Index}")).ToArray();
        Loader = system.ActorOf(DeviceLoaderActor.Props(Device, TimeSpan.FromSeconds(30)), $"{tag}-sim-loader-0");
        Input = Model.MakeInput(spec.Seed);
        System = system;
    }

    public ActorSystem System { get; }
    public ModelSpec Spec { get; }
    public LayeredModel Model { get; }
    public SimulatedDevice Device { get; }
    public IActorRef[] Layers { get; }
    public IActorRef Loader { get; }
    public Tensor Input { get; }

    public static ModelSpec Tiny(long seed = 7, int blocks = 3, int hidden = 32, int heads = 4, int vocab = 64, int seq = 8, int batch = 2) =>
        new("demo", blocks, hidden, heads, vocab, seq, batch, seed);

    public OffloadPolicy Policy(int? window, int? swap = null) => OffloadPolicy.For(new PolicySpec(window, swap), Model.Layers.Count);

    /// <summary>Runs a pass and returns its output's raw bytes and report, or throws with the failure reason.</summary>
    public async Task<(byte[] Output, PassReport Report)> Pass(OffloadPolicy policy, List<LayerProgress>? progress = null)
    {
        var answer = await Loader.Ask<object>(new DeviceLoaderActor.RunPass(Model, Layers, Input, policy,
            progress is null ? null : p => { lock (progress) progress.Add(p); }), TimeSpan.FromMinutes(2));
        return answer switch
        {
            DeviceLoaderActor.PassSucceeded ok => Take(ok),
            DeviceLoaderActor.PassFailed f => throw new PassFailedException(f.Reason),
            _ => throw new InvalidOperationException(answer.ToString()),
        };
    }

    /// <summary>One pass over several micro-batch inputs; returns each output's raw bytes and the report.</summary>
    public async Task<(byte[][] Outputs, PassReport Report)> PassMany(OffloadPolicy policy, IReadOnlyList<Tensor> inputs)
    {
        var answer = await Loader.Ask<object>(new DeviceLoaderActor.RunPass(Model, Layers, inputs, policy), TimeSpan.FromMinutes(2));
        if (answer is DeviceLoaderActor.PassFailed f) throw new PassFailedException(f.Reason);
        var ok = (DeviceLoaderActor.PassSucceeded)answer;
        var outputs = ok.Outputs.Select(t => { using (t) return Engine.TensorBytes.Raw(t); }).ToArray();
        return (outputs, ok.Report);
    }

    static (byte[], PassReport) Take(DeviceLoaderActor.PassSucceeded ok)
    {
        using var output = ok.Output;
        return (TensorBytes.Raw(output), ok.Report);
    }

    /// <summary>The model computed by hand on the host: each layer's forward with its seeded weights, in order.</summary>
    public byte[] PlainForward()
    {
        var weights = ModelCatalog.Weights(Spec);
        using var scope = NewDisposeScope();
        using var noGrad = inference_mode();
        var x = Input.alias();
        foreach (var layer in Model.Layers) x = layer.Forward(weights.Load(layer), x);
        return TensorBytes.Raw(x);
    }

    public void Dispose()
    {
        foreach (var layer in Layers) System.Stop(layer);
        System.Stop(Loader);
        Input.Dispose();
        Device.Dispose();
    }
}

public sealed class PassFailedException(string reason) : Exception(reason);
