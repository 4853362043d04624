"""Feature selection with synthetic defects, node sweeps, and oracle analysis."""

from __future__ import annotations

from stratad.selection.select import Criterion, SelectionResult, choose, select_features
from stratad.selection.split import SelectionSplit, selection_split
from stratad.selection.sweep import EvalSet, SweepConfig, run_sweep
from stratad.selection.validation import ValidationSet, build_validation_set

__all__ = [
    "Criterion",
    "EvalSet",
    "SelectionResult",
    "SelectionSplit",
    "SweepConfig",
    "ValidationSet",
    "build_validation_set",
    "choose",
    "run_sweep",
    "select_features",
    "selection_split",
]
