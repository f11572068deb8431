"""INFER: a hub-and-spoke marketplace for LLM inference."""

__version__ = "0.1.0"
