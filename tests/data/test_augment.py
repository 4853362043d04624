from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stratad.data import load_dataset
from stratad.data.augment import Augmentation, augmented_batch, parse_augmentations
from stratad.errors import StratadError
from stratad.pipeline import Pipeline


def test_each_augmentation_adds_one_copy() -> None:
    images = torch.rand(2, 3, 8, 8)
    kinds = parse_augmentations(["hflip", "rot90", "jitter"])
    out = augmented_batch(images, kinds, torch.Generator().manual_seed(0))
    assert out.shape == (8, 3, 8, 8)
    assert torch.equal(out[:2], images)
    assert torch.equal(out[2:4], images.flip(-1))
    assert torch.equal(out[4:6], torch.rot90(images, 1, dims=(-2, -1)))
    assert not torch.equal(out[6:], images) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    again = augmented_batch(images, [Augmentation.jitter], torch.Generator().manual_seed(0))
    assert torch.equal(
        again[2:], augmented_batch(images, [Augmentation.jitter], torch.Generator().manual_seed(0))[2:]
    )
    with pytest.raises(StratadError, match="unknown augmentation 'blur'"):
        parse_augmentations(["blur"])


def test_pipeline_fits_on_augmented_copies(tiny_mvtec: Path) -> None:
    split = load_dataset(tiny_mvtec, "mvtec")
    pipe = Pipeline(nodes=["blocks.3"], detector="dn2", image_size=64, train_augmentations=["hflip", "vflip"])
    pipe.fit(split.train)
    assert pipe.detector.state_dict()["bank"].shape[0] == 3 * len(split.train)
