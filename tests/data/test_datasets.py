from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stratad.data import images_in, load_dataset, load_image, read_image_rgb, read_mask, seeded_split
from stratad.errors import DataError, ImageReadError, MaskError


def test_mvtec_layout(tiny_mvtec: Path) -> None:
    split = load_dataset(tiny_mvtec.parent)  # auto-detected, single category
    assert len(split.train) == 8
    assert sum(r.label for r in split.test) == 4
    bad = [r for r in split.test if r.label == 1]
    assert all(r.mask_path is not None and r.mask_path.name.endswith("_mask.png") for r in bad)


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "good").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="no images"):
        images_in(tmp_path / "good")


def test_folder_layout_split_is_deterministic(tmp_path: Path) -> None:
    (tmp_path / "good").mkdir()
    (tmp_path / "scratch" / "masks").mkdir(parents=True)
    for i in range(10):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "good" / f"{i}.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "scratch" / "a.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp_path / "scratch" / "masks" / "a.png")
    a = load_dataset(tmp_path, "folder", seed=3)
    b = load_dataset(tmp_path, "folder", seed=3)
    assert [r.path for r in a.train] == [r.path for r in b.train]
    assert len(a.train) == 8 and len(a.test) == 3
    assert {r.path for r in a.train}.isdisjoint({r.path for r in a.test})
    assert a.test[-1].mask_path is not None


def test_seeded_split_follows_protocol() -> None:
    items = [Path(f"{c}.jpg") for c in "edcba"]
    train, test = seeded_split(items, 0.6, 0)
    ordered = sorted(items, key=lambda p: p.name)
    perm = np.random.default_rng(0).permutation(5)
    assert train == [ordered[i] for i in perm[:3]]
    assert test == [ordered[i] for i in perm[3:]]


def test_grayscale_is_replicated_and_resized(tmp_path: Path) -> None:
    gray = (np.arange(20 * 30) % 256).astype(np.uint8).reshape(20, 30)
    Image.fromarray(gray).save(tmp_path / "g.png")
    tensor, hw = load_image(tmp_path / "g.png", 32)
    assert tensor.shape == (3, 32, 32) and hw == (20, 30)
    assert np.allclose(tensor[0].numpy(), tensor[2].numpy())
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0


def test_corrupt_image_is_one_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageReadError, match=r"broken\.png"):
        read_image_rgb(bad)


def test_mask_binarised_and_size_checked(tmp_path: Path) -> None:
    mask = np.array([[0, 127, 128, 255]], np.uint8)
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png").tolist() == [[False, False, True, True]]
    with pytest.raises(MaskError, match="4x1 but its image is 8x8"):
        read_mask(tmp_path / "m.png", expected_hw=(8, 8))


def test_mtd_split(mtd_root: Path) -> None:
    split = load_dataset(mtd_root, "mtd")
    assert len(split.train) == round(0.6 * 952)
    assert len(split.test) == 952 - len(split.train) + 115 + 85 + 57 + 32 + 103
    assert all(r.path.suffix == ".jpg" for r in split.train + split.test)
    assert {r.path for r in split.train}.isdisjoint({r.path for r in split.test})


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_png_decoding_gives_pillows_pixels(tmp_path: Path, mode: str) -> None:
    """8-bit RGB and grey PNGs take OpenCV's faster decoder; every mode reads as Pillow reads it."""
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    image = image.convert(mode) if mode == "RGBA" else image.convert("RGB").convert(mode)
    image.save(tmp_path / "x.png")
    expected = np.asarray(Image.open(tmp_path / "x.png").convert("RGB"))
    np.testing.assert_array_equal(read_image_rgb(tmp_path / "x.png"), expected)
