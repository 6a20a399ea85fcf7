// MSBuild task (netstandard2.0: no spans), compiled by RoslynCodeTaskFactory from build/Superpipeline.Native.targets.
//
// libLibTorchSharp.so 0.107.0 declares a version need for GLIBCXX_3.4.32 (libstdc++ of GCC 13)
// only because <iostream> references std::ios_base_library_init(), which it never calls.
// Debian 12 ships GLIBCXX_3.4.30, so the dynamic loader refuses the library. Marking that one
// need entry weak (VER_FLG_WEAK) in .gnu.version_r lets it load; see shared/PLATFORM.md.
// The task edits the copy in the build output, and only when the machine's libstdc++ lacks
// the version.
using System;
using System.IO;
using System.Text;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public sealed class WeakenGlibcxxNeed : Task
{
    const uint ShtGnuVerneed = 0x6ffffffe;
    const ushort VerFlgWeak = 0x2;

    [Required] public string Library { get; set; } = "";
    [Required] public string Version { get; set; } = "";

    public override bool Execute()
    {
        if (!File.Exists(Library)) return true;
        string libstdcxx = FindLibStdCxx();
        if (libstdcxx == null)
        {
            Log.LogMessage(MessageImportance.Low, "No libstdc++.so.6 found; leaving " + Library + " as it is.");
            return true;
        }
        if (Contains(File.ReadAllBytes(libstdcxx), Encoding.ASCII.GetBytes(Version + "\0")))
        {
            Log.LogMessage(MessageImportance.Low, libstdcxx + " provides " + Version + "; no patch needed.");
            return true;
        }
        try
        {
            byte[] elf = File.ReadAllBytes(Library);
            string result = Weaken(elf, Version);
            if (result == "patched")
            {
                string tmp = Library + ".patching";
                File.WriteAllBytes(tmp, elf);
                File.Delete(Library); // replace the file, never write through a hard link
                File.Move(tmp, Library);
                Log.LogMessage(MessageImportance.High,
                    "Superpipeline: marked the " + Version + " need of " + Path.GetFileName(Library) + " weak (" + libstdcxx + " lacks it).");
            }
            else
            {
                Log.LogMessage(MessageImportance.Low, Path.GetFileName(Library) + ": " + result);
            }
            return true;
        }
        catch (Exception e)
        {
            Log.LogError("Superpipeline: could not patch " + Library + ": " + e.Message);
            return false;
        }
    }

    static string FindLibStdCxx()
    {
        foreach (var p in new[] { "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/usr/lib/aarch64-linux-gnu/libstdc++.so.6",
            "/usr/lib64/libstdc++.so.6", "/usr/lib/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6" })
            if (File.Exists(p)) return p;
        return null;
    }

    static bool Contains(byte[] haystack, byte[] needle)
    {
        for (int i = 0; i + needle.Length <= haystack.Length; i++)
        {
            int j = 0;
            while (j < needle.Length && haystack[i + j] == needle[j]) j++;
            if (j == needle.Length) return true;
        }
        return false;
    }

    /// <summary>Sets VER_FLG_WEAK on the vernaux entry named <paramref name="version"/>.
    /// Returns "patched", "already weak" or "no such need".</summary>
    public static string Weaken(byte[] elf, string version)
    {
        if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F')
            throw new InvalidDataException("not an ELF file");
        if (elf[4] != 2 || elf[5] != 1) throw new InvalidDataException("only little-endian ELF64 is supported");
        ulong shoff = BitConverter.ToUInt64(elf, 0x28);
        ushort shentsize = BitConverter.ToUInt16(elf, 0x3A);
        ushort shnum = BitConverter.ToUInt16(elf, 0x3C);
        for (int s = 0; s < shnum; s++)
        {
            int sh = checked((int)shoff + s * shentsize);
            if (BitConverter.ToUInt32(elf, sh + 4) != ShtGnuVerneed) continue;
            int offset = checked((int)BitConverter.ToUInt64(elf, sh + 0x18));
            uint link = BitConverter.ToUInt32(elf, sh + 0x28);
            int strtab = checked((int)BitConverter.ToUInt64(elf, checked((int)shoff + (int)link * shentsize) + 0x18));
            int need = offset;
            while (true)
            {
                ushort cnt = BitConverter.ToUInt16(elf, need + 2);
                int aux = need + (int)BitConverter.ToUInt32(elf, need + 8);
                for (int a = 0; a < cnt; a++)
                {
                    ushort flags = BitConverter.ToUInt16(elf, aux + 4);
                    uint name = BitConverter.ToUInt32(elf, aux + 8);
                    if (ReadString(elf, strtab + (int)name) == version)
                    {
                        if ((flags & VerFlgWeak) != 0) return "already weak";
                        ushort weak = (ushort)(flags | VerFlgWeak);
                        elf[aux + 4] = (byte)(weak & 0xff);
                        elf[aux + 5] = (byte)(weak >> 8);
                        return "patched";
                    }
                    uint nextAux = BitConverter.ToUInt32(elf, aux + 12);
                    if (nextAux == 0) break;
                    aux += (int)nextAux;
                }
                uint next = BitConverter.ToUInt32(elf, need + 12);
                if (next == 0) break;
                need += (int)next;
            }
        }
        return "no such need";
    }

    static string ReadString(byte[] elf, int at)
    {
        int end = Array.IndexOf(elf, (byte)0, at);
        return Encoding.ASCII.GetString(elf, at, end - at);
    }
}
