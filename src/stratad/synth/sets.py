"""Synthetic defect sets: many defects drawn from a pool of good images."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np

from stratad.errors import DataError
from stratad.synth.base import DefectKind, SyntheticDefect, build_defect, check_image


def make_synthetic_set(
    images: Sequence[np.ndarray],
    kind: str | DefectKind,
    n: int,
    rng: np.random.Generator,
    **params: Any,
) -> list[SyntheticDefect]:
    """``n`` defects of ``kind`` (options in ``params``) made from the good ``images``.

    Targets cycle through random permutations of ``images``, so each image is used equally often
    (within one); each source is a random *other* image when there are at least two, else ``None``
    (the target itself). Every result records its ``target_index`` and ``source_index``.
    """
    generator = build_defect(kind, **params)
    if len(images) == 0:
        raise DataError("make_synthetic_set needs at least one good image")
    try:
        count = operator.index(n)
    except TypeError:
        raise DataError(f"n must be a non-negative int, got {n!r}") from None
    if count < 0:
        raise DataError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(rng, np.random.Generator):
        raise DataError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    for i, image in enumerate(images):
        check_image(image, f"images[{i}]", generator.min_image_side)
    pool = len(images)
    rounds = -(-count // pool)
    targets = [int(t) for _ in range(rounds) for t in rng.permutation(pool)][:count]
    defects = []
    for t in targets:
        s = None if pool == 1 else (t + 1 + int(rng.integers(pool - 1))) % pool
        defect = generator(images[t], None if s is None else images[s], rng)
        defects.append(dataclasses.replace(defect, target_index=t, source_index=s))
    return defects
