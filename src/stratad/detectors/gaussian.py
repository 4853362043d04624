"""Gaussian AD (Rippel, Mertens, Merhof, "Modeling the Distribution of Normal Data in Pre-Trained Deep
Features for Anomaly Detection", ICPR 2020).

Each node's feature map is globally average pooled; a multivariate Gaussian with a Ledoit-Wolf shrunk
covariance is fitted to the pooled training features of every node; the image score is the Mahalanobis
distance, summed with equal weights over the nodes (the paper's "sum" over levels). Variants
(``variant``): ``mvg`` (the paper's method), ``l2`` (Euclidean distance to the mean), ``sed``
(standardised Euclidean: per-dimension variances only), ``pca`` / ``npca`` (Mahalanobis in the
subspace of the principal components with the most / the least variance that together explain
``variance_kept`` of the variance; the paper's best reduction is "NPCA 1%").

Working point without anomalous data: under the Gaussian model the squared Mahalanobis distance of a
normal sample follows a chi-squared law with D degrees of freedom (D = dimension of the Gaussian), so
:meth:`GaussianAD.threshold` turns a target false-positive rate into a distance. This holds per node:
the distances of different nodes are strongly correlated (one network, one image), so their sum follows
no known law and thresholds of a multi-node model are only given per node (``node=i``, compared with
:meth:`GaussianAD.node_scores`).

Default nodes. Rippel et al. sum all nine levels of EfficientNet-B4: the stem, the seven stage outputs
and the head (1x1 conv + BN + swish). For ``efficientnet_lite0`` we sum the seven stage outputs
``blocks.0``..``blocks.6``: timm's ``conv_head`` node is the bare 1x1 convolution, and global average
pooling commutes with a linear map, so its pooled output is an affine image of pooled ``blocks.6`` and
adds dimensions but no information; the 32-channel stem was the weakest level in the paper's per-level
study. For ResNet-style backbones the analogue is ``layer1``..``layer4``.

The shared pieces (:func:`ledoit_wolf`, :func:`whitener`) are also used by the patch-level ``gde``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from stratad._options import bounded
from stratad.backbones.stages import NodeRule
from stratad.detectors.base import Detector, DetectorConfig, Scores, register_detector
from stratad.errors import DetectorError
from stratad.features.patch import global_pool
from stratad.features.types import FeatureBatch

_EPS64 = float(torch.finfo(torch.float64).eps)


# -- shared Gaussian helpers -------------------------------------------------------------------------
def ledoit_wolf(x: torch.Tensor, chunk_rows: int = 65536) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mean ``(C,)``, Ledoit-Wolf shrunk covariance ``(C, C)`` (float64) and the shrinkage of rows ``x``.

    The estimate of :class:`sklearn.covariance.LedoitWolf` (same formulas: empirical covariance with
    1/n, shrinkage towards ``trace / C * I``), well defined when C > n. Float64 input is processed in
    float64; other inputs use float32 chunk products accumulated in float64.
    """
    if x.ndim != 2 or x.shape[0] == 0:
        raise DetectorError(f"a Gaussian needs (samples, dims) features, got shape {tuple(x.shape)}")
    step = max(1, chunk_rows)
    return ledoit_wolf_chunks(lambda: (x[s : s + step] for s in range(0, x.shape[0], step)))


def ledoit_wolf_chunks(
    chunks: Callable[[], Iterable[torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """:func:`ledoit_wolf` over rows given as chunks ``(n_i, C)``; ``chunks()`` is called twice (two passes).

    Streaming keeps millions of rows (every position of every training image) from ever needing one
    float64 copy: pass one gives the mean, pass two the centred Gram matrix and sum_i ||x_i - mean||^4.
    """
    n, mean = 0, torch.zeros(0, dtype=torch.float64)
    for chunk in chunks():
        part = chunk.sum(0, dtype=torch.float64)
        mean = part if n == 0 else mean + part
        n += int(chunk.shape[0])
    if n == 0:
        raise DetectorError("a Gaussian needs at least one feature vector")
    mean /= n
    c = int(mean.shape[0])
    gram = torch.zeros(c, c, dtype=torch.float64)
    fourth = 0.0  # sum_i ||x_i - mean||^4, sklearn's beta_
    mean32 = mean.float()
    for chunk in chunks():
        if chunk.dtype == torch.float64:
            d = chunk - mean
            gram += d.T @ d
        else:
            d = chunk.float() - mean32
            gram += (d.T @ d).double()
        fourth += float(d.square().sum(1, dtype=torch.float64).square().sum())
    emp = gram / n
    trace = float(torch.diagonal(emp).sum())
    mu = trace / c
    shrinkage = 0.0
    if c > 1:
        delta_ = float(emp.square().sum())
        beta = (fourth / n - delta_) / (c * n)
        delta = (delta_ - 2.0 * mu * trace + c * mu * mu) / c
        beta = min(beta, delta)
        shrinkage = 0.0 if beta == 0 or delta <= 0 else beta / delta
    cov = (1.0 - shrinkage) * emp
    cov.diagonal().add_(shrinkage * mu)
    return mean, cov, shrinkage


def whitener(cov: torch.Tensor, what: str = "the features") -> torch.Tensor:
    """``W`` (C, r) with ``||(x - mean) @ W|| ==`` the Mahalanobis distance under ``cov``.

    ``W = U diag(1 / sqrt(lambda))`` over the eigenpairs of ``cov`` above the pseudo-inverse cut-off
    (as ``scipy.linalg.pinvh``); a norm of whitened coordinates stays non-negative and accurate where
    ``d^T P d`` with an explicit precision matrix cancels. ``r`` is the dimension of the Gaussian.
    """
    evals, evecs = torch.linalg.eigh(cov.double())
    top = float(evals.max()) if evals.numel() else 0.0
    if top <= 0.0:
        raise DetectorError(f"{what} do not vary over the training images; train on more varied good images")
    keep = evals > top * cov.shape[0] * _EPS64
    return (evecs[:, keep] / evals[keep].sqrt()).contiguous()


# -- the detector ------------------------------------------------------------------------------------
class GaussianVariant(str, enum.Enum):
    mvg = "mvg"
    l2 = "l2"
    sed = "sed"
    pca = "pca"
    npca = "npca"


#: the paper's best setting of ``variance_kept`` for each reduction ("PCA 99%", "NPCA 1%")
DEFAULT_VARIANCE_KEPT = {GaussianVariant.pca: 0.99, GaussianVariant.npca: 0.01}


@dataclass
class GaussianConfig(DetectorConfig):
    #: distance to the fitted Gaussian: mvg (Mahalanobis, the paper), l2, sed, pca, npca
    variant: GaussianVariant = GaussianVariant.mvg
    #: pca / npca only: fraction of the variance the kept components explain; None uses the paper's
    #: best choice per variant, 0.99 for pca and 0.01 for npca ("NPCA 1%")
    variance_kept: float | None = bounded(None, low=0, high=1, low_open=True)
    #: sed only: added to every per-dimension variance. 0 (default) refuses constant dimensions with an
    #: error instead of silently dividing by zero; 1e-6 is a reasonable guard for ReLU features
    variance_epsilon: float = bounded(0.0, low=0)


@register_detector
class GaussianAD(Detector):
    name = "gaussian"
    accepts_float16 = True
    config_class = GaussianConfig
    localizes = False
    # The paper fits one Gaussian per level and sums the distances: every stage end.
    default_nodes = NodeRule(every_stage=True)

    config: GaussianConfig

    def __init__(self, config: GaussianConfig | None = None, **params: object) -> None:
        super().__init__(config, **params)
        #: per node (in FeatureBatch order): mean of the pooled features (C,), float64
        self.means_: list[torch.Tensor] | None = None
        #: per node: (C,) per-dimension scale (l2, sed) or (C, D) whitening matrix (mvg, pca, npca)
        self.transforms_: list[torch.Tensor] | None = None

    def validate_config(self) -> None:
        c = self.config
        reduces = c.variant in (GaussianVariant.pca, GaussianVariant.npca)
        if c.variance_kept is not None and not reduces:
            raise DetectorError(
                "variance_kept applies to variant pca or npca only; drop it or change the variant"
            )
        if c.variance_epsilon > 0 and c.variant is not GaussianVariant.sed:
            raise DetectorError("variance_epsilon applies to variant sed only; drop it or use variant=sed")

    @property
    def variance_kept(self) -> float:
        """The fraction of variance pca / npca keep (the configured one or the paper's default)."""
        v = self.config.variance_kept
        return v if v is not None else DEFAULT_VARIANCE_KEPT.get(self.config.variant, 1.0)

    # -- fit --
    def fit(self, train: FeatureBatch) -> GaussianAD:
        if len(train) < 2:
            raise DetectorError("Gaussian AD needs at least two training images to estimate a covariance")
        if not train.nodes:
            raise DetectorError("no feature nodes given")
        means, transforms = [], []
        for node, x in train.items():
            pooled = global_pool(x.float()).double()
            means.append(pooled.mean(0))
            transforms.append(self._fit_transform(node, pooled))
        self.means_, self.transforms_ = means, transforms
        return self

    def _fit_transform(self, node: str, x: torch.Tensor) -> torch.Tensor:
        variant = self.config.variant
        what = f"the pooled features of node {node!r}"
        if variant is GaussianVariant.l2:
            return torch.ones(x.shape[1], dtype=torch.float64)
        if variant is GaussianVariant.sed:
            var = x.var(0) + self.config.variance_epsilon
            constant = int((var <= 0).sum())
            if constant:
                raise DetectorError(
                    f"{constant} of {x.shape[1]} dimensions of {what} are constant, so the standardized "
                    "Euclidean distance is undefined; set variance_epsilon > 0 (e.g. 1e-6) or use variant mvg"
                )
            return var.rsqrt()
        if variant is GaussianVariant.mvg:
            return whitener(ledoit_wolf(x)[1], what)
        components = self._principal_components(x, what)
        projected = (x - x.mean(0)) @ components.T
        return components.T @ whitener(ledoit_wolf(projected)[1], what)

    def _principal_components(self, x: torch.Tensor, what: str) -> torch.Tensor:
        """Rows: the kept principal directions (k, C) for pca (largest variance) or npca (smallest)."""
        n, c = x.shape
        _, s, vt = torch.linalg.svd(x - x.mean(0), full_matrices=False)
        var = s.square() / (n - 1)
        if float(var[0]) <= 0.0:
            raise DetectorError(
                f"{what} do not vary over the training images; train on more varied good images"
            )
        # Directions the training data never spans (C >= n leaves C - n + 1 of them) have no variance
        # estimate at all; a Gaussian restricted to them is degenerate, so npca chooses among the rest.
        spanned = var > var[0] * max(n, c) * _EPS64
        var, vt = var[spanned], vt[spanned]
        ratio = var / var.sum()
        target = self.variance_kept
        if self.config.variant is GaussianVariant.pca:
            k = _count_to_reach(torch.cumsum(ratio, 0), target)
            return vt[:k]
        k = _count_to_reach(torch.cumsum(ratio.flip(0), 0), target)
        return vt[vt.shape[0] - k :]

    # -- score --
    def node_scores(self, test: FeatureBatch) -> np.ndarray:
        """Distances per node, ``(n_nodes, N)``, float64; :meth:`score` sums them over the nodes."""
        self._check_fitted("means_")
        assert self.means_ is not None and self.transforms_ is not None
        if len(test.nodes) != len(self.means_):
            raise DetectorError(
                f"this Gaussian was fitted on {len(self.means_)} node(s) but got {len(test.nodes)}; "
                "score with the nodes it was fitted on"
            )
        out = np.empty((len(self.means_), len(test)), dtype=np.float64)
        for i, ((node, x), mean, transform) in enumerate(
            zip(test.items(), self.means_, self.transforms_, strict=True)
        ):
            pooled = global_pool(x.float()).double()
            if pooled.shape[1] != mean.shape[0]:
                raise DetectorError(
                    f"node {node!r} has {pooled.shape[1]} channels but was fitted with {mean.shape[0]}; "
                    "score with the nodes it was fitted on"
                )
            d = pooled - mean
            z = d * transform if transform.ndim == 1 else d @ transform
            out[i] = z.square().sum(1).sqrt().numpy()
        return out

    def score(self, test: FeatureBatch) -> Scores:
        return Scores(self.node_scores(test).sum(0).astype(np.float32), None)

    def module(self, nodes: Sequence[str]) -> nn.Module:
        from stratad.detectors.modules import GaussianModule

        self._check_fitted("means_")
        assert self.means_ is not None and self.transforms_ is not None
        return GaussianModule(self, nodes, self.means_, self.transforms_)

    # -- working points --
    def dimension(self, node: int = 0) -> int:
        """Degrees of freedom of node ``node``'s Gaussian (kept components for pca / npca)."""
        self._check_fitted("transforms_")
        assert self.transforms_ is not None
        if not 0 <= node < len(self.transforms_):
            raise DetectorError(
                f"node index {node} is out of range: this model has {len(self.transforms_)} node(s)"
            )
        t = self.transforms_[node]
        return int(t.shape[0] if t.ndim == 1 else t.shape[1])

    def threshold(self, fpr: float, node: int | None = None) -> float:
        """Distance exceeded by a fraction ``fpr`` of normal images: ``sqrt(chi2.ppf(1 - fpr, df=D))``.

        Defined per node (``node`` = index in the fitted node order; may be omitted for a single node)
        and only for the Mahalanobis variants mvg, pca and npca.
        """
        self._check_fitted("transforms_")
        assert self.transforms_ is not None
        if self.config.variant in (GaussianVariant.l2, GaussianVariant.sed):
            raise DetectorError(
                f"variant {self.config.variant.value} does not give Mahalanobis distances, so no chi-square "
                "threshold exists; use variant mvg, pca or npca, or a threshold from validation images"
            )
        if not 0.0 < fpr < 1.0:
            raise DetectorError(f"fpr must lie strictly between 0 and 1, got {fpr}")
        if node is None:
            if len(self.transforms_) > 1:
                raise DetectorError(
                    f"this model sums {len(self.transforms_)} correlated nodes, whose sum has no chi-square "
                    "law; pass node=<index> and compare with node_scores()[index]"
                )
            node = 0
        from stratad.metrics import chi2_threshold

        return float(chi2_threshold(self.dimension(node), fpr))

    def observed_fpr(self, scores_of_good: np.ndarray, fpr: float, node: int | None = None) -> float:
        """Fraction of good images whose distance exceeds :meth:`threshold` (should be close to ``fpr``)."""
        scores = np.asarray(scores_of_good, dtype=np.float64).reshape(-1)
        if scores.size == 0:
            raise DetectorError("observed_fpr needs the scores of at least one good image")
        return float(np.mean(scores > self.threshold(fpr, node)))

    # -- state --
    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted("means_")
        assert self.means_ is not None and self.transforms_ is not None
        state: dict[str, torch.Tensor] = {}
        for i, (mean, transform) in enumerate(zip(self.means_, self.transforms_, strict=True)):
            state[f"mean.{i}"] = mean
            state[f"transform.{i}"] = transform
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        count = sum(1 for k in state if k.startswith("mean."))
        if count == 0 or any(f"transform.{i}" not in state or f"mean.{i}" not in state for i in range(count)):
            raise DetectorError(
                "Gaussian AD state is incomplete: expected mean.<i> and transform.<i> per node"
            )
        self.means_ = [state[f"mean.{i}"].double().contiguous() for i in range(count)]
        self.transforms_ = [state[f"transform.{i}"].double().contiguous() for i in range(count)]


def _count_to_reach(cumulative: torch.Tensor, target: float) -> int:
    """Smallest k with ``cumulative[k - 1] >= target`` (the whole range if rounding never reaches it)."""
    return min(
        int(torch.searchsorted(cumulative, torch.tensor([target], dtype=cumulative.dtype))) + 1,
        int(cumulative.numel()),
    )
