using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Akka.Cluster;
using Superpipeline.Coordinator;
using Superpipeline.Coordinator.Cluster;
using Superpipeline.Engine.Devices;
using Superpipeline.Messages;
using Xunit.Abstractions;
using static Superpipeline.Messages.JobProtocol;

namespace Superpipeline.Tests;

/// <summary>Who can reach a cluster: a member listens only on its configured interface, and with TLS on, only
/// peers with TLS (and the certificate) get through.</summary>
public sealed class ClusterSecuritySpec(ITestOutputHelper output) : IAsyncLifetime
{
    const string Timings = """
        akka.cluster.split-brain-resolver.stable-after = 2s
        akka.cluster.failure-detector.acceptable-heartbeat-pause = 5s
        akka.cluster.failure-detector.heartbeat-interval = 500ms
        superpipeline.heartbeat = 1s
        superpipeline.resubmit-after = 2s
        superpipeline.pass-timeout = 60s
        """;

    static readonly TimeSpan Wait = TimeSpan.FromSeconds(60);

    static readonly ModelSpec Model = new("demo", Blocks: 4, Hidden: 64, Heads: 4, Vocab: 256, Sequence: 32, Batch: 2, Seed: 5);

    readonly string _dir = Directory.CreateTempSubdirectory("superpipeline-tls-").FullName;
    readonly List<ClusterHost> _hosts = [];
    readonly List<SubmitClient> _clients = [];

    [Fact]
    public async Task A_member_listens_only_on_the_configured_interface()
    {
        var host = Start(["coordinator"], [], null);
        Assert.Equal("127.0.0.1", host.Address.Host);
        int port = host.Address.Port!.Value;
        Assert.NotEqual(0, port);

        using (var loopback = new TcpClient())
            await loopback.ConnectAsync(IPAddress.Loopback, port).WaitAsync(TimeSpan.FromSeconds(10)); // reachable where it was told to listen

        var others = NetworkInterface.GetAllNetworkInterfaces()
            .Where(n => n.OperationalStatus == OperationalStatus.Up)
            .SelectMany(n => n.GetIPProperties().UnicastAddresses.Select(a => a.Address))
            .Where(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a))
            .ToArray();
        var listed = others.Length == 0 ? "none (only the bound address is checked)" : string.Join(", ", others.Select(a => a.ToString()));
        output.WriteLine($"other local IPv4 addresses: {listed}");
        foreach (var address in others)
        {
            using var client = new TcpClient();
            var e = await Assert.ThrowsAsync<SocketException>(() => client.ConnectAsync(address, port).WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.Equal(SocketError.ConnectionRefused, e.SocketErrorCode);
        }
    }

    [Fact]
    public async Task With_tls_a_job_runs_and_a_client_without_tls_gets_no_answer()
    {
        var tls = TlsConfig(WriteSelfSignedCertificate("superpipeline-test"), "s3cret!");
        var coordinator = Start(["coordinator"], [], tls);
        var worker = Start(["worker"], DeviceSpecs.ParseList("sim:2x16MiB"), tls, seed: coordinator);
        await WaitForMembers(coordinator, 2);
        foreach (var h in _hosts)
            Assert.True(h.System.Settings.Config.GetBoolean("akka.remote.dot-netty.tcp.enable-ssl"));

        TensorPayload reference;
        await using (var single = EmbeddedHost.Start(new DeviceSpec(DeviceKind.Sim, 64L << 20, null), Timings))
            reference = Assert.IsType<JobSucceeded>(await single.RunAsync(new SubmitJob(JobId.New(), Model, new PolicySpec(2, 1))).WaitAsync(Wait)).Output;

        var secure = Client(coordinator, tls);
        var ok = Assert.IsType<JobSucceeded>(await secure.RunAsync(new SubmitJob(new JobId("over-tls"), Model, new PolicySpec(2, 1))).WaitAsync(Wait));
        Assert.Equal(reference, ok.Output);
        Assert.Equal(2, ok.Report.Stages.Length);
        Assert.All(ok.Report.Stages, s => Assert.Equal($"127.0.0.1:{worker.Address.Port}", s.Node));

        // The same cluster, a client that speaks plain TCP: its ClusterClient never reaches the receptionist.
        var plain = Client(coordinator, "superpipeline.pass-timeout = 8s");
        var answer = await plain.RunAsync(new SubmitJob(new JobId("plain"), Model, new PolicySpec(2, 1))).WaitAsync(TimeSpan.FromSeconds(60));
        var failed = Assert.IsType<JobFailed>(answer);
        Assert.StartsWith("no answer for job plain", failed.Reason);
    }

    /// <summary>A self-signed certificate (server and client authentication, for 127.0.0.1 and localhost) as a
    /// password-protected PKCS#12 file.</summary>
    string WriteSelfSignedCertificate(string name)
    {
        using var key = RSA.Create(2048);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyEncipherment, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], false));
        var names = new SubjectAlternativeNameBuilder();
        names.AddIpAddress(IPAddress.Loopback);
        names.AddDnsName("localhost");
        request.CertificateExtensions.Add(names.Build());
        using var certificate = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(7));
        var path = Path.Combine(_dir, $"{name}.pfx");
        File.WriteAllBytes(path, certificate.Export(X509ContentType.Pkcs12, "s3cret!"));
        return path;
    }

    /// <summary>What the README tells an operator to put in the file given to <c>host --config</c>. The certificate is
    /// self-signed, so validation of its chain is suppressed; every member and client presents it (mutual TLS).</summary>
    static string TlsConfig(string path, string password) => $$"""
        akka.remote.dot-netty.tcp {
          enable-ssl = true
          ssl {
            suppress-validation = true
            certificate {
              path = "{{path}}"
              password = "{{password}}"
            }
          }
        }
        """;

    ClusterHost Start(IReadOnlyList<string> roles, IReadOnlyList<DeviceSpec> devices, string? extra, ClusterHost? seed = null)
    {
        string[] seeds = seed is null ? [] : [$"127.0.0.1:{seed.Address.Port}"];
        var host = ClusterHost.Start(new HostOptions(roles, "127.0.0.1", 0, seeds, devices, $"{extra}\n{Timings}"));
        _hosts.Add(host);
        return host;
    }

    SubmitClient Client(ClusterHost contact, string extra)
    {
        var client = SubmitClient.Start([$"127.0.0.1:{contact.Address.Port}"], "127.0.0.1", $"{Timings}\n{extra}"); // the test's own keys win
        _clients.Add(client);
        return client;
    }

    static async Task WaitForMembers(ClusterHost host, int count)
    {
        var cluster = Cluster.Get(host.System);
        for (int i = 0; i < 300 && cluster.State.Members.Count(m => m.Status == MemberStatus.Up) < count; i++) await Task.Delay(100);
        Assert.Equal(count, cluster.State.Members.Count(m => m.Status == MemberStatus.Up));
    }

    public Task InitializeAsync() => Task.CompletedTask;

    public async Task DisposeAsync()
    {
        foreach (var c in _clients) await c.DisposeAsync();
        foreach (var h in Enumerable.Reverse(_hosts)) await h.DisposeAsync();
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }
}
