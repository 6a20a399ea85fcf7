// The namespaces most specs open, once for the whole test project (a file may still name them again).
global using Superpipeline.Contracts;
global using Superpipeline.Engine.Models;
global using Superpipeline.Engine.Policy;
global using Xunit;
