"""Accounts: sign-up, log-in, sessions (and Google OAuth)."""
