"""Feature selection with synthetic defects, node sweeps, and oracle analysis.

The names below are imported on first use: ``stratad.selection.config`` stays free of torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stratad._lazy import lazy_attributes

if TYPE_CHECKING:
    from stratad.selection.config import Criterion, NodeResult, SweepConfig
    from stratad.selection.select import SelectionResult, choose, select_features
    from stratad.selection.split import SelectionSplit, selection_split
    from stratad.selection.sweep import EvalSet, run_sweep
    from stratad.selection.validation import ValidationSet, build_validation_set

_WHERE = {
    "Criterion": "config",
    "NodeResult": "config",
    "SweepConfig": "config",
    "SelectionResult": "select",
    "choose": "select",
    "select_features": "select",
    "SelectionSplit": "split",
    "selection_split": "split",
    "EvalSet": "sweep",
    "run_sweep": "sweep",
    "ValidationSet": "validation",
    "build_validation_set": "validation",
}
__getattr__ = lazy_attributes(__name__, _WHERE)
__all__ = [
    "Criterion",
    "EvalSet",
    "NodeResult",
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
