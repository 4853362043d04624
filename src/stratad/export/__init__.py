"""Saving and loading fitted models (atomic, no pickled code)."""
