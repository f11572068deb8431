"""Nodes behind NAT: the agent's outbound WebSocket, through which the platform calls runtimes."""
