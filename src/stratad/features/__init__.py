"""Feature batches and patch-embedding helpers shared by the detectors."""

from __future__ import annotations

from stratad.features.types import FeatureBatch

__all__ = ["FeatureBatch"]
