"""The operator side: detect local runtimes and GPU, register them, keep them current."""
