"""Completions: one chat completion from plan to settlement, shared by every edge."""
