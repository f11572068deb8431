"""Cryptography, passwords, sessions, API-key format and the outbound URL guard."""
