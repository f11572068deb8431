"""The `infer` command: serve, migrate, grant credits, and the operator's node tools."""

from infer.cli.main import main

__all__ = ["main"]
