using Superpipeline.Coordinator;

return await Cli.MainAsync(args);
