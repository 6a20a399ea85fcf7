namespace Superpipeline.Workers;

/// <summary>Dispatcher and mailbox ids; each is defined in hocon/superpipeline.conf.</summary>
public static class Dispatchers
{
    /// <summary>Dedicated threads for host-side TorchSharp work (layer actors reading and owning weights).</summary>
    public const string Host = "superpipeline.host-dispatcher";
    /// <summary>The device loader's bounded mailbox: a monitored safety net, not the flow control.</summary>
    public const string LoaderMailbox = "superpipeline.loader-mailbox";
}
