"""The dashboard: HTML pages for buyers and operators, built on the GraphQL API in process."""
