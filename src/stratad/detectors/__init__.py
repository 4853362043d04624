"""Detectors: one module per method, all registered by name with the same contract."""

from __future__ import annotations

from stratad.detectors import ast, dn2, fastflow, gaussian, gde, padim, patchcore, simplenet, spade  # noqa: F401  (registration)
from stratad.detectors.base import (
    Detector,
    DetectorConfig,
    Scores,
    build_detector,
    describe_detectors,
    detector_class,
    list_detectors,
    register_detector,
)

__all__ = [
    "Detector",
    "DetectorConfig",
    "Scores",
    "build_detector",
    "describe_detectors",
    "detector_class",
    "list_detectors",
    "register_detector",
]
