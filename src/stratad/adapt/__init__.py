"""Adapting a pretrained backbone to the normal images: PANDA (:mod:`stratad.adapt.panda`)."""

from __future__ import annotations

from stratad.adapt.panda import AdaptConfig, AdaptResult, Variant, adapt, load_ses_checkpoints, ses_scores

__all__ = ["AdaptConfig", "AdaptResult", "Variant", "adapt", "load_ses_checkpoints", "ses_scores"]
