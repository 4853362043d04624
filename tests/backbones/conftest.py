"""Random-init backbones shared by the backbone tests (building them is the slow part)."""

from __future__ import annotations

import pytest

from stratad.backbones import Backbone, build_backbone


@pytest.fixture(scope="session")
def resnet18() -> Backbone:
    return build_backbone("resnet18", weights="random", seed=0)


@pytest.fixture(scope="session")
def lite0_random() -> Backbone:
    return build_backbone("efficientnet_lite0", weights="random", seed=0)
