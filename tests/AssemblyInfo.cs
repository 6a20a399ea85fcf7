// Tests share the process-wide TorchSharp tensor count and two CPU cores: run them one class at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
