"""The agent's local console: a page on 127.0.0.1, opened with a token, to steer the node."""
