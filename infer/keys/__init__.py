"""API keys: create, rotate, revoke, authenticate."""
