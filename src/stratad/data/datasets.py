"""Dataset layouts (MVTec AD, plain folders, MTD) -> deterministic train / test record lists."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stratad.data.io import IMAGE_SUFFIXES, is_image_file
from stratad.errors import DataError, MaskError


@dataclass(frozen=True)
class ImageRecord:
    """One image on disk; ``label`` is 0 for good, 1 for defective; ``mask_path`` None means empty."""

    path: Path
    label: int = 0
    defect_type: str = "good"
    mask_path: Path | None = None


@dataclass
class DatasetSplit:
    name: str
    train: list[ImageRecord]
    test: list[ImageRecord] = field(default_factory=list)

    def describe(self) -> str:
        bad = sum(r.label for r in self.test)
        return f"{self.name}: {len(self.train)} train, {len(self.test)} test ({bad} defective)"


class MissingMasks(str, enum.Enum):
    """What to do with a defective test image that has no mask file."""

    #: refuse before any work, naming the image (a silent empty mask would bias every pixel metric)
    error = "error"
    #: keep the image for the image metrics, leave it out of the pixel metrics (reported as a count)
    exclude = "exclude"


def pixel_records(
    records: list[ImageRecord], policy: MissingMasks | str = MissingMasks.error
) -> tuple[list[int], list[ImageRecord]]:
    """Indices of the records that enter the pixel metrics, and the defective records without a mask
    (empty unless ``policy`` is ``exclude``; with ``error`` a missing mask raises :class:`MaskError`)."""
    missing = [r for r in records if r.label and r.mask_path is None]
    if missing and MissingMasks(policy) is MissingMasks.error:
        more = f" and {len(missing) - 1} other defective images" if len(missing) > 1 else ""
        raise MaskError(
            f"no mask found for the defective image {missing[0].path}{more}; add the masks, or pass "
            "--missing-masks exclude to leave such images out of the pixel metrics"
        )
    keep = [i for i, r in enumerate(records) if not (r.label and r.mask_path is None)]
    return keep, missing


def record_mask(
    record: ImageRecord, image_hw: tuple[int, int] | None = None, size: int | None = None
) -> np.ndarray:
    """THE mask loader: the ground truth of ``record`` as bool (H, W) at its image's resolution
    (``image_hw``, read from the image header when None), or resized to ``size`` x ``size`` (nearest
    neighbour after binarising). Good images get an empty mask; a defective image without a mask is
    an error (see :func:`pixel_records` for leaving such images out)."""
    from PIL import Image

    from stratad.data.io import image_size_of, read_mask

    if record.mask_path is None:
        if record.label:
            raise MaskError(f"no mask found for the defective image {record.path}")
        hw = (size, size) if size is not None else (image_hw or image_size_of(record.path))
        return np.zeros(hw, dtype=bool)
    mask = read_mask(record.mask_path, expected_hw=image_hw or image_size_of(record.path))
    if size is None or mask.shape == (size, size):
        return mask
    pil = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(pil) > 127


class DatasetKind(str, enum.Enum):
    auto = "auto"
    mvtec = "mvtec"
    folder = "folder"
    mtd = "mtd"


def list_images(folder: Path, exclude_suffixes: tuple[str, ...] = ()) -> list[Path]:
    """Sorted image files directly inside ``folder`` (not recursive)."""
    return sorted(
        p for p in folder.iterdir() if is_image_file(p) and p.suffix.lower() not in exclude_suffixes
    )


def seeded_split(items: list[Path], fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """Sort, shuffle with numpy's default_rng(seed), first ``fraction`` for training."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"the training fraction must lie in (0, 1), got {fraction}")
    ordered = sorted(items, key=lambda p: p.name)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[i] for i in perm]
    cut = round(fraction * len(shuffled))
    return shuffled[:cut], shuffled[cut:]


def _require_folder(root: Path) -> None:
    if not root.exists():
        raise DataError(f"data folder not found: {root}")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")


def load_mtd(root: Path, seed: int = 0, train_fraction: float = 0.6) -> DatasetSplit:
    """Magnetic Tile Defect layout: MT_<class>/Imgs/<name>.jpg with <name>.png masks.

    Protocol (documented in the README): sort the Free file names, shuffle them with
    ``numpy.random.default_rng(seed)``, the first 60% train; the remaining Free images and every
    image of the five defect classes are the test set.
    """
    _require_folder(root)
    free_dir = root / "MT_Free" / "Imgs"
    if not free_dir.is_dir():
        raise DataError(f"{root} is not an MTD folder: {free_dir} is missing")
    free = list_images(free_dir, exclude_suffixes=(".png",))
    if not free:
        raise DataError(f"no images in {free_dir}")
    train_paths, test_free = seeded_split(free, train_fraction, seed)
    test = [ImageRecord(p, 0, "Free") for p in test_free]
    for cls_dir in sorted(root.glob("MT_*")):
        name = cls_dir.name.removeprefix("MT_")
        if name == "Free" or not (cls_dir / "Imgs").is_dir():
            continue
        for img in list_images(cls_dir / "Imgs", exclude_suffixes=(".png",)):
            mask = img.with_suffix(".png")
            test.append(ImageRecord(img, 1, name, mask if mask.is_file() else None))
    return DatasetSplit(
        f"mtd(seed={seed}, train={train_fraction:g})", [ImageRecord(p) for p in train_paths], test
    )


def _mvtec_category_root(root: Path, category: str | None) -> Path:
    if (root / "train").is_dir():
        return root
    categories = sorted(p.name for p in root.iterdir() if (p / "train").is_dir())
    if not categories:
        raise DataError(f"{root} is not in MVTec AD layout: no train/ folder in it or its sub-folders")
    if category is None:
        if len(categories) == 1:
            return root / categories[0]
        raise DataError(
            f"{root} holds several categories; pick one with --category ({', '.join(categories)})"
        )
    if category not in categories:
        raise DataError(f"category {category!r} not found in {root}; available: {', '.join(categories)}")
    return root / category


def load_mvtec(root: Path, category: str | None = None) -> DatasetSplit:
    """MVTec AD: train/good, test/<defect>/, ground_truth/<defect>/<name>_mask.png."""
    _require_folder(root)
    cat = _mvtec_category_root(root, category)
    good_dir = cat / "train" / "good"
    if not good_dir.is_dir():
        raise DataError(f"{good_dir} is missing")
    train = [ImageRecord(p) for p in list_images(good_dir)]
    if not train:
        raise DataError(f"no images in {good_dir}")
    test: list[ImageRecord] = []
    test_dir = cat / "test"
    if test_dir.is_dir():
        for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            for img in list_images(defect_dir):
                if defect_dir.name == "good":
                    test.append(ImageRecord(img))
                    continue
                mask = _find_mask(cat / "ground_truth" / defect_dir.name, img)
                test.append(ImageRecord(img, 1, defect_dir.name, mask))
    return DatasetSplit(f"mvtec/{cat.name}", train, test)


def _find_mask(mask_dir: Path, image: Path) -> Path | None:
    """``<stem>_mask.png`` (MVTec AD), the image's own file name, ``<stem>.png``, ``<stem>_mask<ext>``,
    then any image file named ``<stem>`` or ``<stem>_mask`` with another image extension."""
    for name in (
        f"{image.stem}_mask.png",
        image.name,
        f"{image.stem}.png",
        f"{image.stem}_mask{image.suffix}",
    ):
        candidate = mask_dir / name
        if candidate.is_file():
            return candidate
    if mask_dir.is_dir():
        for candidate in sorted(mask_dir.iterdir()):
            if candidate.stem in (image.stem, f"{image.stem}_mask") and is_image_file(candidate):
                return candidate
    return None


def load_folder(root: Path, seed: int = 0, train_fraction: float = 0.8) -> DatasetSplit:
    """Plain layout: ``good/`` plus optional defect folders ``<defect>/`` with masks in ``<defect>/masks/``.

    Without defect folders every good image trains. With them, the good images are split like MTD
    (seeded shuffle, ``train_fraction`` for training) and the rest joins the test set.
    """
    _require_folder(root)
    good_dir = root / "good"
    if not good_dir.is_dir():
        raise DataError(f"{root} has no good/ folder (plain layout: good/ and optional defect folders)")
    good = list_images(good_dir)
    if not good:
        raise DataError(f"no images in {good_dir}")
    defect_dirs = sorted(p for p in root.iterdir() if p.is_dir() and p.name not in ("good", "masks"))
    defects: list[ImageRecord] = []
    for d in defect_dirs:
        for img in list_images(d):
            defects.append(ImageRecord(img, 1, d.name, _find_mask(d / "masks", img)))
    if not defects:
        return DatasetSplit(f"folder/{root.name}", [ImageRecord(p) for p in good], [])
    train_paths, test_good = seeded_split(good, train_fraction, seed)
    test = [ImageRecord(p) for p in test_good] + defects
    return DatasetSplit(f"folder/{root.name}", [ImageRecord(p) for p in train_paths], test)


def load_labelled_folder(root: Path) -> list[ImageRecord]:
    """Every image of a labelled folder (a validation set): ``good/`` plus defect folders
    ``<defect>/`` with optional masks in ``<defect>/masks/`` (the plain layout, without a split)."""
    _require_folder(root)
    good_dir = root / "good"
    if not good_dir.is_dir():
        raise DataError(f"{root} has no good/ folder (a labelled folder: good/ and defect folders)")
    records = [ImageRecord(p) for p in list_images(good_dir)]
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in ("good", "masks")):
        records += [ImageRecord(img, 1, d.name, _find_mask(d / "masks", img)) for img in list_images(d)]
    return records


def detect_kind(root: Path) -> DatasetKind:
    if (root / "MT_Free").is_dir():
        return DatasetKind.mtd
    if (root / "good").is_dir():
        return DatasetKind.folder
    if (root / "train").is_dir() or any((p / "train").is_dir() for p in root.iterdir() if p.is_dir()):
        return DatasetKind.mvtec
    raise DataError(
        f"cannot tell the layout of {root}: expected MVTec AD (train/, test/), a plain folder (good/) or MTD"
    )


def load_dataset(
    root: str | Path,
    kind: DatasetKind | str = DatasetKind.auto,
    category: str | None = None,
    seed: int = 0,
    train_fraction: float | None = None,
) -> DatasetSplit:
    path = Path(root).expanduser()
    _require_folder(path)
    kind = DatasetKind(kind)
    if kind is DatasetKind.auto:
        kind = detect_kind(path)
    if train_fraction is not None and kind is DatasetKind.mvtec:
        raise DataError(
            f"{path} is in MVTec AD layout, whose train/ and test/ folders are the split; "
            "drop --train-fraction"
        )
    loaders: dict[DatasetKind, Callable[[], DatasetSplit]] = {
        DatasetKind.mtd: lambda: load_mtd(path, seed, 0.6 if train_fraction is None else train_fraction),
        DatasetKind.mvtec: lambda: load_mvtec(path, category),
        DatasetKind.folder: lambda: load_folder(
            path, seed, 0.8 if train_fraction is None else train_fraction
        ),
    }
    return loaders[kind]()


@dataclass(frozen=True, kw_only=True)
class DataSource:
    """Where a dataset lies and how it is split: what ``--data``, ``--dataset``, ``--category``,
    ``--seed`` and ``--train-fraction`` say on the command line."""

    root: Path
    kind: DatasetKind = DatasetKind.auto
    category: str | None = None
    seed: int = 0
    train_fraction: float | None = None

    def load(self) -> DatasetSplit:
        return load_dataset(self.root, self.kind, self.category, self.seed, self.train_fraction)


def images_in(path: str | Path, recursive: bool = False) -> list[Path]:
    """Images to predict on: one file, or every image directly inside a folder (``recursive``: in
    the whole tree, e.g. MVTec AD's ``test/<defect>/000.png``), sorted by relative path."""
    source = Path(path).expanduser()
    if source.is_file():
        if source.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{source} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
        return [source]
    _require_folder(source)
    found = sorted(p for p in source.rglob("*") if is_image_file(p)) if recursive else list_images(source)
    if not found:
        raise DataError(f"no images in {source}")
    return found
