"""Inference modules: a fitted detector as a plain ``nn.Module`` with its learned state in buffers.

``Detector.module()`` returns one of these; :class:`stratad.inference.InferenceModel` chains it after
the node extractor and before the map head: prediction, evaluation, every sweep node and
``stratad export`` all go through it. In Python a module runs the detector's own scoring (faiss
nearest neighbours, chunked loops); traced for export it runs :meth:`DetectorModule.traced`, plain
tensor algebra on its buffers: the nearest-neighbour search is a matrix product
(``||q||^2 - 2 q.b + ||b||^2``, the form faiss's exact index computes too) because ``cdist`` does
not export to ONNX, and PatchCore's adaptive channel pooling is a fixed averaging matrix (adaptive
pooling with uneven bins has no ONNX operator). Fitting stays outside (faiss, coreset, Ledoit-Wolf);
the contract suite checks both forms give the same scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def exporting() -> bool:
    """Whether the module is being traced or exported (the pure-tensor form is then required)."""
    return bool(torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling())


class DetectorModule(nn.Module):
    """A fitted detector as a module: ``forward(features) -> (image scores (N,), raw maps or None)``.

    In Python, ``forward`` runs the detector's own scoring (faiss for nearest neighbours, chunked
    loops that bound memory), so prediction, evaluation and sweeps are exactly as fast and give the
    same numbers as before; while tracing or exporting it runs :meth:`traced`, the same algebra in
    plain tensor operations on the module's buffers. The contract suite checks both agree.
    """

    def __init__(self, detector: object, nodes: Sequence[str]) -> None:
        super().__init__()
        self.nodes = list(nodes)
        self._detector = [detector]  # a plain list: the detector is neither state nor a submodule

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if exporting():
            return self.traced(features)
        from stratad.features.types import FeatureBatch

        out = self._detector[0].score(FeatureBatch({n: features[n] for n in self.nodes}, (0, 0)))  # type: ignore[attr-defined]
        maps = None if out.maps is None else torch.from_numpy(out.maps)
        return torch.from_numpy(out.image_scores), maps

    def traced(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The scoring as plain tensor operations on the buffers (what ONNX export records)."""
        raise NotImplementedError


class NearestDistance(nn.Module):
    """Euclidean distance of each query row to its ``k`` nearest rows of a bank, ``(q, k)``, ascending."""

    bank: torch.Tensor
    bank_sq: torch.Tensor

    def __init__(self, bank: torch.Tensor, k: int = 1) -> None:
        super().__init__()
        self.k = min(int(k), int(bank.shape[0]))
        self.register_buffer("bank", bank.detach().float().contiguous())
        self.register_buffer("bank_sq", self.bank.square().sum(1))

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        d2 = queries.square().sum(1, keepdim=True) - 2.0 * (queries @ self.bank.T) + self.bank_sq
        if self.k == 1:
            nearest = d2.min(dim=1, keepdim=True).values
        else:
            nearest = torch.topk(d2, self.k, dim=1, largest=False).values
        return nearest.clamp_min(0.0).sqrt()


def _resized(x: torch.Tensor, grid: tuple[int, int], mode: str) -> torch.Tensor:
    """(N, C, h, w) resized to ``grid`` (the detectors' choice of mode: bilinear, or PaDiM's nearest)."""
    if tuple(x.shape[-2:]) == grid:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=grid, mode="nearest")
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)


def channel_pool_matrix(channels: int, dim: int) -> torch.Tensor:
    """``(channels, dim)`` matrix equal to ``adaptive_avg_pool1d`` from ``channels`` to ``dim`` bins."""
    matrix = torch.zeros(channels, dim)
    for i in range(dim):
        start = (i * channels) // dim
        stop = -((-(i + 1) * channels) // dim)  # ceil
        matrix[start:stop, i] = 1.0 / (stop - start)
    return matrix


def _pool_channels(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, C, h, w) pooled over channels to ``dim`` as a matrix product (identity when C <= dim)."""
    channels = int(x.shape[1])
    if dim <= 0 or channels <= dim:
        return x
    matrix = channel_pool_matrix(channels, dim).to(x.device)
    return torch.einsum("nchw,cd->ndhw", x, matrix)


def embed_patches(
    features: dict[str, torch.Tensor],
    nodes: Sequence[str],
    patch_size: int,
    node_dim: int,
    target_dim: int,
    embedding: str = "average",
) -> torch.Tensor:
    """The patch embedding (:func:`stratad.features.patch.embed_nodes`) in exportable operations:
    3 x 3 average (or unfolded neighbourhoods), bilinear resize to the first node's grid, channel
    pooling as matrices."""
    first = features[nodes[0]]
    grid = (int(first.shape[-2]), int(first.shape[-1]))
    if embedding == "unfold":
        from stratad.features.patch import unfold_neighbourhoods

        unfolded = [
            _pool_exactly(
                _resized(unfold_neighbourhoods(features[n].float(), patch_size), grid, "bilinear"), node_dim
            )
            for n in nodes
        ]
        return _pool_exactly(torch.cat(unfolded, dim=1), target_dim)
    pad = patch_size // 2
    parts = []
    for node in nodes:
        x = features[node].float()
        if patch_size > 1:
            x = F.avg_pool2d(x, patch_size, stride=1, padding=pad, count_include_pad=True)
        parts.append(_pool_channels(_resized(x, grid, "bilinear"), node_dim))
    joined = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    return _pool_channels(joined, target_dim)


def _pool_exactly(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, C, h, w) pooled over channels to exactly ``dim`` (up or down) as a matrix product."""
    channels = int(x.shape[1])
    if channels == dim:
        return x
    return torch.einsum("nchw,cd->ndhw", x, channel_pool_matrix(channels, dim).to(x.device))


class PatchCoreModule(DetectorModule):
    """Patch embedding of the nodes, nearest memory-bank distance per patch, max as image score."""

    def __init__(
        self,
        detector: object,
        memory_bank: torch.Tensor,
        nodes: Sequence[str],
        patch_size: int,
        node_dim: int,
        target_dim: int,
        reweight_neighbours: int = 0,
        embedding: str = "average",
    ) -> None:
        super().__init__(detector, nodes)
        self.reweight_neighbours, self.embedding = reweight_neighbours, embedding
        self.patch_size, self.node_dim, self.target_dim = patch_size, node_dim, target_dim
        self.nearest = NearestDistance(memory_bank, k=1)

    def embed(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        return embed_patches(
            features, self.nodes, self.patch_size, self.node_dim, self.target_dim, self.embedding
        )

    def traced(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.reweight_neighbours:
            from stratad.errors import DetectorError

            raise DetectorError(
                "PatchCore's image-score reweighting cannot be exported yet; fit with reweight_neighbours=0"
            )
        emb = self.embed(features)
        n, d, h, w = emb.shape
        queries = emb.permute(0, 2, 3, 1).reshape(-1, d)
        maps = self.nearest(queries)[:, 0].reshape(n, h, w)
        return maps.flatten(1).amax(dim=1), maps


class PadimModule(DetectorModule):
    """Selected channels of the nodes on the first node's grid, Mahalanobis distance per position."""

    channel_index: torch.Tensor
    mean: torch.Tensor
    inv_covariance: torch.Tensor

    def __init__(
        self,
        detector: object,
        nodes: Sequence[str],
        node_channels: Sequence[int],
        channel_index: torch.Tensor,
        mean: torch.Tensor,
        inv_covariance: torch.Tensor,
    ) -> None:
        super().__init__(detector, nodes)
        # Per node: which of its own channels are kept (the global index split by node), in order.
        offset = 0
        for i, channels in enumerate(node_channels):
            local = channel_index[(channel_index >= offset) & (channel_index < offset + channels)] - offset
            self.register_buffer(f"local_index_{i}", local.long())
            offset += channels
        self.register_buffer("channel_index", channel_index.long())
        self.register_buffer("mean", mean.float())
        self.register_buffer("inv_covariance", inv_covariance.float())

    def traced(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        first = features[self.nodes[0]]
        grid = (int(first.shape[-2]), int(first.shape[-1]))
        parts = []
        for i, node in enumerate(self.nodes):
            local: torch.Tensor = getattr(self, f"local_index_{i}")
            if local.numel() == 0:
                continue
            parts.append(_resized(features[node].index_select(1, local).float(), grid, "nearest"))
        emb = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        n = emb.shape[0]
        delta = emb.flatten(2).transpose(1, 2) - self.mean  # (N, P, d)
        weighted = torch.einsum("npd,pde->npe", delta, self.inv_covariance)
        dist = (weighted * delta).sum(-1).clamp_min(0.0).sqrt()
        maps = dist.reshape(n, grid[0], grid[1])
        return maps.flatten(1).amax(dim=1), maps


def _pooled(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=(2, 3)) if x.ndim == 4 else x.reshape(x.shape[0], -1)


class GaussianModule(DetectorModule):
    """Per node: pooled feature, whitened distance to the node's Gaussian; summed over the nodes."""

    def __init__(
        self,
        detector: object,
        nodes: Sequence[str],
        means: Sequence[torch.Tensor],
        transforms: Sequence[torch.Tensor],
    ) -> None:
        super().__init__(detector, nodes)
        for i, (mean, transform) in enumerate(zip(means, transforms, strict=True)):
            self.register_buffer(f"mean_{i}", mean.double())
            self.register_buffer(f"transform_{i}", transform.double())

    def traced(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None]:
        total = torch.zeros(features[self.nodes[0]].shape[0], dtype=torch.float64)
        for i, node in enumerate(self.nodes):
            mean: torch.Tensor = getattr(self, f"mean_{i}")
            transform: torch.Tensor = getattr(self, f"transform_{i}")
            d = _pooled(features[node].float()).double() - mean
            z = d * transform if transform.ndim == 1 else d @ transform
            total = total + z.square().sum(1).sqrt()
        return total.float(), None


class DN2Module(DetectorModule):
    """Pooled features of the nodes, mean distance to the ``k`` nearest training images."""

    def __init__(self, detector: object, nodes: Sequence[str], bank: torch.Tensor, neighbours: int) -> None:
        super().__init__(detector, nodes)
        self.nearest = NearestDistance(bank, k=neighbours)

    def traced(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, None]:
        parts = [_pooled(features[node].float()) for node in self.nodes]
        queries = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return self.nearest(queries).mean(dim=1), None


def _squared_distances(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(..., q, d) x (..., b, d) -> (..., q, b) squared Euclidean distances, as a matrix product."""
    return (
        queries.square().sum(-1, keepdim=True)
        - 2.0 * torch.matmul(queries, bank.transpose(-1, -2))
        + bank.square().sum(-1).unsqueeze(-2)
    )


class SpadeModule(DetectorModule):
    """Retrieval of the ``K`` nearest training images by the pooled feature, then per pixel the mean
    distance to the ``kappa`` nearest features of those images only, per part, summed on the grid."""

    retrieval_bank: torch.Tensor

    def __init__(
        self,
        detector: object,
        nodes: Sequence[str],
        retrieval_node: str,
        pixel_banks: Sequence[torch.Tensor],
        retrieval_bank: torch.Tensor,
        image_neighbours: int,
        pixel_neighbours: int,
        concat: bool,
        image_score_knn: bool,
    ) -> None:
        super().__init__(detector, nodes)
        self.retrieval_node = retrieval_node
        self.image_neighbours = min(image_neighbours, int(retrieval_bank.shape[0]))
        self.pixel_neighbours = pixel_neighbours
        self.concat, self.image_score_knn = concat, image_score_knn
        self.register_buffer("retrieval_bank", retrieval_bank.float())
        self.parts = len(pixel_banks)
        for i, bank in enumerate(pixel_banks):  # (N_train, h, w, C)
            self.register_buffer(f"pixel_bank_{i}", bank.float())

    def traced(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = _pooled(features[self.retrieval_node].float())
        d2 = _squared_distances(pooled, self.retrieval_bank)
        image_d2, neighbours = torch.topk(d2, self.image_neighbours, dim=1, largest=False)
        maps = [
            features[n].float()
            for n in self.nodes
            if features[n].ndim == 4 and features[n].shape[-2] * features[n].shape[-1] > 1
        ]
        grid = (int(maps[0].shape[-2]), int(maps[0].shape[-1]))
        if self.concat:
            maps = [torch.cat([_resized(m, grid, "bilinear") for m in maps], dim=1)]
        total = torch.zeros(pooled.shape[0], 1, grid[0], grid[1])
        for i, part in enumerate(maps):
            bank: torch.Tensor = getattr(self, f"pixel_bank_{i}")
            n, c, h, w = part.shape
            queries = part.permute(0, 2, 3, 1).reshape(n, h * w, c)
            retrieved = bank[neighbours].reshape(n, -1, c)  # (N, K * h' * w', C)
            nearest = torch.topk(
                _squared_distances(queries, retrieved), self.pixel_neighbours, dim=2, largest=False
            ).values
            node_map = nearest.clamp_min(0.0).sqrt().mean(dim=2).reshape(n, 1, h, w)
            total = total + _resized(node_map, grid, "bilinear")
        maps_out = total[:, 0]
        if self.image_score_knn:
            scores = image_d2.clamp_min(0.0).sqrt().mean(dim=1)
        else:
            scores = maps_out.flatten(1).amax(dim=1)
        return scores, maps_out


class GdeModule(DetectorModule):
    """The nodes on the first node's grid, concatenated; Mahalanobis distance of every position to
    one Gaussian (``||(x - mean) W||``), max as image score."""

    mean: torch.Tensor
    whitener: torch.Tensor

    def __init__(
        self, detector: object, nodes: Sequence[str], mean: torch.Tensor, whitener: torch.Tensor
    ) -> None:
        super().__init__(detector, nodes)
        self.register_buffer("mean", mean.float())
        self.register_buffer("whitener", whitener.float())

    def traced(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        maps = [
            features[n].float()
            if features[n].ndim == 4
            else features[n].float().reshape(features[n].shape[0], -1, 1, 1)
            for n in self.nodes
        ]
        grid = (int(maps[0].shape[-2]), int(maps[0].shape[-1]))
        emb = torch.cat([_resized(m, grid, "bilinear") for m in maps], dim=1) if len(maps) > 1 else maps[0]
        n, c, h, w = emb.shape
        z = (emb.permute(0, 2, 3, 1).reshape(-1, c) - self.mean) @ self.whitener
        dist = z.square().sum(1).sqrt().reshape(n, h, w)
        return dist.flatten(1).amax(dim=1), dist


class SimpleNetModule(DetectorModule):
    """Patch embedding, the feature adaptor and the discriminator; ``-d`` per patch, max per image."""

    def __init__(
        self,
        detector: object,
        nodes: Sequence[str],
        adaptor: nn.Module,
        discriminator: nn.Module,
        patch_size: int,
        node_dim: int,
        target_dim: int,
        embedding: str = "unfold",
    ) -> None:
        import copy

        super().__init__(detector, nodes)
        self.patch_size, self.node_dim, self.target_dim = patch_size, node_dim, target_dim
        self.embedding = embedding
        # Copies in eval mode, frozen: the module holds its own state.
        self.adaptor = copy.deepcopy(adaptor).eval().requires_grad_(False)
        self.discriminator = copy.deepcopy(discriminator).eval().requires_grad_(False)

    def traced(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        emb = embed_patches(
            features, self.nodes, self.patch_size, self.node_dim, self.target_dim, self.embedding
        )
        n, d, h, w = emb.shape
        patches = emb.permute(0, 2, 3, 1).reshape(-1, d)
        maps = -self.discriminator(self.adaptor(patches)).reshape(n, h, w)
        return maps.flatten(1).amax(dim=1), maps


class FastFlowModule(DetectorModule):
    """Each node's LayerNorm and flow; ``-exp(-0.5 mean_c z^2)`` per node, averaged on the first
    node's grid; max per image."""

    def __init__(self, detector: object, nodes: Sequence[str], flows: nn.ModuleList) -> None:
        import copy

        super().__init__(detector, nodes)
        self.flows = copy.deepcopy(flows).eval().requires_grad_(False)  # the module holds its own state

    def traced(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        from stratad.detectors.fastflow import fastflow_maps

        maps = fastflow_maps(list(self.flows), [features[n].float() for n in self.nodes])
        return maps.flatten(1).amax(dim=1), maps


class ASTModule(DetectorModule):
    """AST's teacher and student on the nodes joined on the first node's grid; the map is the
    student-teacher distance, the image score its maximum (or mean)."""

    def __init__(self, detector: object, nodes: Sequence[str], networks: nn.Module, image_score: str) -> None:
        import copy

        super().__init__(detector, nodes)
        self.networks = copy.deepcopy(networks).eval().requires_grad_(False)  # its own state
        self.image_score = image_score

    def traced(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        from stratad.detectors.ast import ast_scores, join_nodes
        from stratad.features.patch import spatial

        x = join_nodes([spatial(n, features[n]).float() for n in self.nodes])
        return ast_scores(self.networks, x, self.image_score)  # type: ignore[arg-type]
