"""Strawberry GraphQL schema: types, queries, mutations, permissions, loaders."""

from infer.schema.root import schema

__all__ = ["schema"]
