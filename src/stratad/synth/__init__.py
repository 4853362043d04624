"""Synthetic defects on good images: simple (black rectangle), CutPaste, NSA (Poisson blending).

Each generator maps ``(target, source, rng)`` to a :class:`SyntheticDefect` ``(image, mask)``::

    gen = build_defect("nsa", max_patches=2)
    defect = gen(target, source, np.random.default_rng(0))
"""

from __future__ import annotations

from stratad.synth.base import (
    DefectConfig,
    DefectGenerator,
    DefectKind,
    SyntheticDefect,
    build_defect,
    defect_class,
    list_defect_kinds,
    register_defect,
)
from stratad.synth.cutpaste import CutPasteConfig, CutPasteDefect
from stratad.synth.foreground import foreground_mask
from stratad.synth.nsa import CloneMode, NSAConfig, NSADefect
from stratad.synth.sets import make_defects, make_synthetic_set
from stratad.synth.simple import SimpleConfig, SimpleDefect

__all__ = [
    "CloneMode",
    "CutPasteConfig",
    "CutPasteDefect",
    "DefectConfig",
    "DefectGenerator",
    "DefectKind",
    "NSAConfig",
    "NSADefect",
    "SimpleConfig",
    "SimpleDefect",
    "SyntheticDefect",
    "build_defect",
    "defect_class",
    "foreground_mask",
    "list_defect_kinds",
    "make_defects",
    "make_synthetic_set",
    "register_defect",
]
