"""Dense self-supervised pretraining of backbones: PixPro and DS2 (:mod:`stratad.pretrain.dense`)."""

from __future__ import annotations

from stratad.pretrain.dense import Method, PretrainConfig, PretrainResult, pretrain

__all__ = ["Method", "PretrainConfig", "PretrainResult", "pretrain"]
