"""The one nearest-neighbour component every kNN-based detector uses (faiss).

Exact L2 search (IndexFlatL2) by default; an approximate HNSW index is an option for large banks.
Distances returned are Euclidean (faiss gives squared ones).
"""

from __future__ import annotations

import enum

import faiss
import numpy as np
import torch

from stratad.errors import DetectorError


class IndexKind(str, enum.Enum):
    exact = "exact"
    hnsw = "hnsw"


class NearestNeighbours:
    def __init__(self, kind: IndexKind | str = IndexKind.exact, hnsw_neighbours: int = 32) -> None:
        self.kind = IndexKind(kind)
        self.hnsw_neighbours = hnsw_neighbours
        self._index: faiss.Index | None = None

    def fit(self, bank: torch.Tensor | np.ndarray) -> NearestNeighbours:
        data = _as_float32(bank)
        if data.ndim != 2 or data.shape[0] == 0:
            raise DetectorError(f"a nearest-neighbour bank needs (n, d) with n > 0, got {data.shape}")
        dim = data.shape[1]
        if self.kind is IndexKind.exact:
            index: faiss.Index = faiss.IndexFlatL2(dim)
        else:
            index = faiss.IndexHNSWFlat(dim, self.hnsw_neighbours)
        index.add(data)
        self._index = index
        return self

    @property
    def size(self) -> int:
        return 0 if self._index is None else int(self._index.ntotal)

    def search(
        self, queries: torch.Tensor | np.ndarray, k: int = 1, batch_size: int = 65536
    ) -> tuple[np.ndarray, np.ndarray]:
        """Euclidean distances (q, k) and bank indices (q, k) of the k nearest bank rows."""
        if self._index is None:
            raise DetectorError("the nearest-neighbour index is empty: fit it first")
        data = _as_float32(queries)
        k = min(k, self.size)
        dists = np.empty((data.shape[0], k), dtype=np.float32)
        idx = np.empty((data.shape[0], k), dtype=np.int64)
        for start in range(0, data.shape[0], batch_size):
            d, i = self._index.search(data[start : start + batch_size], k)
            dists[start : start + batch_size] = d
            idx[start : start + batch_size] = i
        np.sqrt(np.maximum(dists, 0.0, out=dists), out=dists)
        return dists, idx


def _as_float32(x: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return np.ascontiguousarray(arr, dtype=np.float32)
