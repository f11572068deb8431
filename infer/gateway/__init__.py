"""The REST edge for buyers: OpenAI-compatible chat completions and models."""
