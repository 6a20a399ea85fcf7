using System.CommandLine;
using Spectre.Console;
using Superpipeline.Coordinator;

return await Cli.MainAsync(args);
