"""Nodes: the registry, the health monitor, and the runtime clients."""
