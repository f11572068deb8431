"""Money: prices, the double-entry ledger, holds and settlement, usage records."""
