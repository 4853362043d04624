"""Greedy k-center coreset subsampling (PatchCore, Roth et al. 2022, section 3.2)."""

from __future__ import annotations

import math

import torch

from stratad.errors import DetectorError


def coreset_count(n: int, size: int | None, fraction: float | None) -> int:
    """Number of rows to keep: a fraction of ``n`` when given, else the fixed ``size`` (capped at n)."""
    if fraction is not None:
        if not 0.0 < fraction <= 1.0:
            raise DetectorError(f"coreset_fraction must lie in (0, 1], got {fraction}")
        return max(1, min(n, math.ceil(fraction * n)))
    if size is None or size <= 0:
        raise DetectorError(f"coreset_size must be a positive count, got {size}")
    return min(n, size)


def greedy_coreset(
    features: torch.Tensor, count: int, projection_dim: int = 128, seed: int = 0
) -> torch.Tensor:
    """Indices of ``count`` rows chosen by iterative farthest-point selection.

    Distances are computed on a Johnson-Lindenstrauss random projection to ``projection_dim``
    (the paper's speed-up). Each step is one matrix-vector product over the bank using
    ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2 with cached squared norms, so a step costs one pass over
    memory instead of materialising an (n, d) difference.
    """
    n, dim = features.shape
    if count >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    x = features.float()
    if projection_dim and dim > projection_dim:
        proj = torch.randn(dim, projection_dim, generator=gen) / math.sqrt(projection_dim)
        x = x @ proj
    x = x.contiguous()
    sq = (x * x).sum(1)
    start = int(torch.randint(n, (1,), generator=gen))
    chosen = torch.empty(count, dtype=torch.long)
    chosen[0] = start
    min_dist = torch.addmv(sq, x, x[start], alpha=-2.0).add_(sq[start])
    step = torch.empty_like(min_dist)
    for i in range(1, count):
        nxt = int(torch.argmax(min_dist))
        chosen[i] = nxt
        torch.addmv(sq, x, x[nxt], alpha=-2.0, out=step).add_(sq[nxt])
        torch.minimum(min_dist, step, out=min_dist)
    return chosen
