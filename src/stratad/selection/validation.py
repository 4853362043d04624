"""The synthetic validation set: good images plus images with synthetic defects and exact masks.

Defects are made at the network input size, so masks need no resampling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stratad.data.io import read_image_resized, uint8_batch
from stratad.errors import StratadError
from stratad.selection.split import SelectionSplit


@dataclass
class ValidationSet:
    """Images uint8 (M, 3, S, S), masks bool (M, S, S), labels (M,)."""

    images: torch.Tensor
    masks: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


def build_validation_set(
    split: SelectionSplit,
    kind: str,
    image_size: int,
    seed: int = 0,
    bit_depth: int | None = None,
    sources: Sequence[np.ndarray] | None = None,
    per_image: int = 1,
    **defect_params: Any,
) -> ValidationSet:
    """Good D_V images unchanged; each defect-bound D_V image gets one synthetic defect whose
    source (for CutPaste / NSA) is a random D_T image (:func:`stratad.synth.make_defects`).
    ``kind`` may be a mixture (``simple,cutpaste,nsa``): the defect-bound images are dealt to the
    kinds in turn (image i gets kind i mod k), and each kind takes the options in ``defect_params``
    it accepts. ``sources``: the D_T images already loaded at ``image_size`` (read here when None).
    ``per_image``: defects made on each defect-bound image (each its own draw), for small sets whose
    few defective images would rank nodes on a handful of defects."""
    from stratad.synth import make_defects
    from stratad.synth.base import defect_kinds, params_for

    kinds = defect_kinds(kind)
    if per_image < 1:
        raise StratadError(f"--defects-per-image must be at least 1, got {per_image}")
    rng = np.random.default_rng(seed)
    good = [read_image_resized(r.path, image_size, bit_depth) for r in split.val_good]
    once = [read_image_resized(r.path, image_size, bit_depth) for r in split.val_defect]
    targets = [image for image in once for _ in range(per_image)]  # the same array, per_image times
    if sources is None:
        sources = _LazyImages([r.path for r in split.fit], image_size, bit_depth)
    if len(kinds) == 1:
        made = make_defects(targets, range(len(targets)), kinds[0], rng, sources, **defect_params)
    else:
        unused = set(defect_params) - {k for name in kinds for k in params_for(name, defect_params)}
        if unused:
            raise StratadError(f"no defect kind of {kind!r} takes the option {sorted(unused)[0]!r}")
        dealt: dict[int, Any] = {}
        for k, name in enumerate(kinds):
            mine = list(range(k, len(targets), len(kinds)))
            for index, defect in zip(
                mine,
                make_defects(targets, mine, name, rng, sources, **params_for(name, defect_params)),
                strict=True,
            ):
                dealt[index] = defect
        made = [dealt[i] for i in range(len(targets))]
    empty = [np.zeros((image_size, image_size), dtype=bool)] * len(good)
    labels = np.array([0] * len(good) + [1] * len(made), dtype=np.int64)
    images = good + [m.image for m in made]
    return ValidationSet(uint8_batch(images), np.stack(empty + [m.mask for m in made]), labels)


class _LazyImages(Sequence[np.ndarray]):
    """Images read (and resized) only when a defect draws them as its source."""

    def __init__(self, paths: Sequence[Any], size: int, bit_depth: int | None) -> None:
        self.paths, self.size, self.bit_depth = list(paths), size, bit_depth

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: Any) -> Any:
        return read_image_resized(self.paths[index], self.size, self.bit_depth)
