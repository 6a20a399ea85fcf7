using System.Text.Json;
using Superpipeline.Engine.Models;
using Superpipeline.Engine.Text;

namespace Superpipeline.Coordinator.Commands;

/// <summary>The prompts of a generation, as token ids one row each (of any lengths: generation left-pads them): from
/// <c>--input ids.npy</c> (each row a prompt as it stands) or from <c>--prompt TEXT</c> through the checkpoint's tokenizer;
/// with the tokenizer when the checkpoint has one, to print text and to know its end-of-sequence and pad ids.</summary>
public sealed record GenerationPrompts(long[][] Ids, IReadOnlyList<string>? Texts, CheckpointTokenizer? Tokenizer)
{
    /// <summary>Reads the prompts for the checkpoint in <paramref name="dir"/>: exactly one of <paramref name="input"/> and
    /// <paramref name="texts"/>; a one-line refusal otherwise, or when a prompt is empty, too long for the model's positions
    /// or maps outside its vocabulary.</summary>
    public static GenerationPrompts Read(string dir, string? input, IReadOnlyList<string> texts)
    {
        if (!Directory.Exists(dir)) throw new ArgumentException($"--model {dir}: not a checkpoint directory");
        if (input is not null && texts.Count > 0) throw new ArgumentException("--prompt and --input cannot be given together: each gives the token ids");
        if (texts.Count > 0)
        {
            var tokenizer = CheckpointTokenizer.Load(dir);
            var rows = PromptIds.EncodeRows(tokenizer, texts, ModelCatalog.TokenLimits(dir));
            return new([.. rows.Select(r => r.Select(id => (long)id).ToArray())], texts, tokenizer);
        }
        if (input is null) throw new ArgumentException("no prompts: give --prompt TEXT (once per row) or --input ids.npy");
        var model = ModelCatalog.Create(ModelCatalog.CheckpointSpec(dir, 1, 1, 0, input)); // the ids checked against the config
        long[][] ids;
        using (var tensor = model.MakeInput(0)) ids = [.. Enumerable.Range(0, (int)tensor.shape[0]).Select(b => tensor[b].data<long>().ToArray())];
        return new(ids, null, CheckpointTokenizer.Present(dir) ? CheckpointTokenizer.Load(dir) : null);
    }

    /// <summary>The prompts with their images placed: on a LLaVA checkpoint, each image token (<c>&lt;image&gt;</c>) becomes the
    /// tokens one image takes (LlavaProcessor's expansion), and the prompts must hold exactly one per <paramref name="images"/>
    /// file. One-line refusals name the flag: an image token with no --image, --image with no image token, counts that disagree,
    /// --image on a checkpoint of another family.</summary>
    public GenerationPrompts WithImages(string dir, int images)
    {
        string flag = Texts is null ? "--input" : "--prompt";
        string family;
        using (var config = ConfigJson.Open(dir)) family = config.String("model_type") ?? "";
        if (family != LlavaConfig.ModelType)
            return images == 0 ? this
                : throw new ArgumentException(
                    $"--image needs a llava checkpoint; {dir} holds a {(family.Length > 0 ? family : "model")} model, which takes no images");
        var llava = LlavaConfig.Read(dir);
        long token = llava.ImageTokenIndex;
        int found = Ids.Sum(row => row.Count(id => id == token));
        string name = Tokenizer?.Decode([(int)token], skipSpecialTokens: false) is { Length: > 0 } text ? text : $"id {token}";
        if (found == 0 && images > 0)
            throw new ArgumentException($"{flag} has no image token ({name}, image_token_index {token}), but --image is given: "
                + $"put {name} where the image goes");
        if (found > 0 && images == 0)
            throw new ArgumentException($"{flag} holds {found} image token(s) ({name}), but no --image is given: give one --image FILE per {name}");
        if (found != images)
            throw new ArgumentException($"{flag} holds {found} image token(s) ({name}), but {images} --image file(s) are given: give one per {name}");
        return this with { Ids = [.. Ids.Select(row => Llava.ExpandImageTokens(row, token, llava.ImageTokens))] };
    }

    /// <summary>The end-of-sequence id: <paramref name="given"/> (<c>--eos</c>), else the tokenizer's (tokenizer and generation
    /// configs), else config.json's <c>eos_token_id</c> (the first when it is a list); null when none says.</summary>
    public long? Eos(long? given, string dir) => given ?? Tokenizer?.EosId ?? ConfigEos(dir);

    /// <summary>The pad id the tokenizer names (null: generation pads with the end-of-sequence id).</summary>
    public long? Pad => Tokenizer?.PadId;

    /// <summary>config.json's eos_token_id (the first when it is a list); null when it has none.</summary>
    public static long? ConfigEos(string dir)
    {
        using var config = ConfigJson.Open(dir);
        if (!config.Root.TryGetProperty("eos_token_id", out var e)) return null;
        if (e.ValueKind == JsonValueKind.Array && e.GetArrayLength() > 0) e = e[0];
        return e.ValueKind == JsonValueKind.Number && e.TryGetInt64(out long id) ? id : null;
    }

    /// <summary>Row <paramref name="row"/> of the answer as text: its prompt (as given, or decoded without pads) and what was generated.</summary>
    public string Text(long[,] tokens, int row, int promptLength)
    {
        var tokenizer = Tokenizer ?? throw new InvalidOperationException("no tokenizer");
        int width = tokens.GetLength(1);
        var generated = Enumerable.Range(promptLength, width - promptLength).Select(t => (int)tokens[row, t]).ToArray();
        string prompt = Texts?[row] ?? tokenizer.Decode(Ids[row].Select(id => (int)id).ToArray());
        return prompt + tokenizer.Decode(generated);
    }
}
