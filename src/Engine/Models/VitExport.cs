using System.Text;
using Superpipeline.Engine.Images;

namespace Superpipeline.Engine.Models;

/// <summary>Writes a seeded ViT checkpoint in Hugging Face's layout: config.json, the safetensors and preprocessor_config.json
/// (ViTImageProcessor's defaults at the config's image_size). Without a classifier it is a ViTModel (tensors unprefixed, with the
/// pooler, as google/vit-base-patch16-224-in21k holds them); with one, a ViTForImageClassification ("vit." prefix, no pooler,
/// classifier.weight and classifier.bias for the config's <see cref="VitConfig.Labels"/>).</summary>
public static class VitExport
{
    /// <summary>Writes the checkpoint of <paramref name="config"/> with weights from <paramref name="seed"/>; returns the weight files
    /// written.</summary>
    public static IReadOnlyList<string> Write(string directory, VitConfig config, long seed, bool classifier, int shards = 1)
    {
        config.Validate();
        var (names, head) = classifier ? (new VitNames(VitNames.Vit), VitHeadKind.Classifier) : (new VitNames(""), VitHeadKind.Pooler);
        var files = SeededCheckpoint.Write(directory, Vit.Create("vit", config, 1, names, head), config.ToJson(classifier), config.TorchDtype,
            seed, shards);
        File.WriteAllText(Path.Combine(directory, ImagePreprocess.FileName), ImagePreprocess.Vit(config.ImageSize).ToJson() + "\n",
            new UTF8Encoding(false));
        return files;
    }
}
