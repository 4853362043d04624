"""Greedy k-center coreset subsampling (PatchCore, Roth et al. 2022, section 3.2)."""

from __future__ import annotations

import math

import numpy as np
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

    On the CPU the loop runs in NumPy: its BLAS matrix-vector product for a tall (n, 32..128) bank
    is ~2x faster than torch's and its argmax ~15x (4 us vs 60 us for 100k rows), which makes the
    selection 1.6x (32-d) to 2.5x (128-d) faster, with the same picks up to rounding. Features on
    a GPU stay there and use torch.
    """
    n, dim = features.shape
    if count >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    x = features.detach().float()
    if projection_dim and dim > projection_dim:
        proj = torch.randn(dim, projection_dim, generator=gen) / math.sqrt(projection_dim)
        x = x @ proj.to(x.device)
    start = int(torch.randint(n, (1,), generator=gen))
    if x.device.type == "cpu":
        return torch.from_numpy(_farthest_points_numpy(x.contiguous().numpy(), count, start))
    return _farthest_points_torch(x.contiguous(), count, start).cpu()


def _farthest_points_numpy(bank: np.ndarray, count: int, start: int) -> np.ndarray:
    sq = np.einsum("ij,ij->i", bank, bank)
    chosen = np.empty(count, dtype=np.int64)
    chosen[0] = start
    min_dist = bank @ bank[start]
    min_dist *= -2.0
    min_dist += sq
    min_dist += sq[start]
    step = np.empty_like(min_dist)
    for i in range(1, count):
        nxt = int(min_dist.argmax())
        chosen[i] = nxt
        np.dot(bank, bank[nxt], out=step)
        step *= -2.0
        step += sq
        step += sq[nxt]
        np.minimum(min_dist, step, out=min_dist)
    return chosen


def _farthest_points_torch(bank: torch.Tensor, count: int, start: int) -> torch.Tensor:
    sq = (bank * bank).sum(1)
    chosen = torch.empty(count, dtype=torch.long, device=bank.device)
    chosen[0] = start
    min_dist = torch.addmv(sq, bank, bank[start], alpha=-2.0).add_(sq[start])
    step = torch.empty_like(min_dist)
    for i in range(1, count):
        nxt = torch.argmax(min_dist)  # stays on the device: no synchronisation per step
        chosen[i] = nxt
        torch.addmv(sq, bank, bank[nxt], alpha=-2.0, out=step).add_(sq[nxt])
        torch.minimum(min_dist, step, out=min_dist)
    return chosen
