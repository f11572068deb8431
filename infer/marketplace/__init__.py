"""The marketplace: the provider directory, its figures, and reviews."""
