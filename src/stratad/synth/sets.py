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
    (within one); sources follow :func:`make_defects`. Every result records its ``target_index``
    and ``source_index``.
    """
    count = _count(n)
    if len(images) == 0:
        raise DataError("make_synthetic_set needs at least one good image")
    build_defect(kind, **params)  # an unknown kind or option fails first
    pool = len(images)
    rounds = -(-count // pool)
    targets = [int(t) for _ in range(rounds) for t in rng.permutation(pool)][:count]
    return make_defects(images, targets, kind, rng, **params)


def make_defects(
    images: Sequence[np.ndarray],
    targets: Sequence[int],
    kind: str | DefectKind,
    rng: np.random.Generator,
    sources: Sequence[np.ndarray] | None = None,
    **params: Any,
) -> list[SyntheticDefect]:
    """THE sampling policy of synthetic defects: one defect of ``kind`` on ``images[t]`` for each
    ``t`` of ``targets``, in order. The source of a defect (the image CutPaste and NSA take their
    patch from) is a random image of ``sources`` when given (the selection study: patches from D_T,
    defects on D_V), else a random *other* image of ``images`` (the target itself when there is only
    one). Each draw takes the source index from ``rng`` first, then the generator's own draws."""
    generator = build_defect(kind, **params)
    if not isinstance(rng, np.random.Generator):
        raise DataError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if sources is not None and len(sources) == 0:
        raise DataError("make_defects needs at least one source image when sources are given")
    outside = [i for i in targets if not 0 <= i < len(images)]
    if outside:
        raise DataError(f"target index {outside[0]} is outside the {len(images)} images")
    # Without separate sources every image may serve as one: check them all before any work.
    for i in range(len(images)) if sources is None else sorted(set(targets)):
        check_image(images[i], f"images[{i}]", generator.min_image_side)
    pool = len(images)
    defects = []
    for t in targets:
        s: int | None
        source: np.ndarray | None
        if sources is not None:
            s = int(rng.integers(len(sources)))
            source = sources[s]
        elif pool == 1:
            s, source = None, None
        else:
            s = (t + 1 + int(rng.integers(pool - 1))) % pool
            source = images[s]
        defect = generator(images[t], source, rng)
        defects.append(dataclasses.replace(defect, target_index=t, source_index=s))
    return defects


def _count(n: int) -> int:
    try:
        count = operator.index(n)
    except TypeError:
        raise DataError(f"n must be a non-negative int, got {n!r}") from None
    if count < 0:
        raise DataError(f"n must be a non-negative int, got {n!r}")
    return count
