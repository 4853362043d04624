"""What the CLI commands do, as plain functions that tests and benchmarks call too."""

from __future__ import annotations

import csv
import enum
import hashlib
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stratad._progress import Reporter
from stratad.errors import StratadError

if TYPE_CHECKING:
    from stratad.data.datasets import DataSource

SCORES_FILE = "scores.csv"
SCORE_COLUMNS = (
    "image",
    "score",
    "map",
    "map_min",
    "map_max",
    "overlay",
    "normalized_score",
    "decision",
    "defect_area",
    "mask",
)


class MapFormat(str, enum.Enum):
    """How ``predict`` writes each anomaly map (at the image's own size)."""

    #: no map file
    none = "none"
    #: 16-bit grey PNG; the float map is ``map_min + value / 65535 * (map_max - map_min)`` with the two
    #: numbers of its row in scores.csv (quantisation step ``(map_max - map_min) / 65535``)
    png16 = "png16"
    #: float32 NumPy array
    npy = "npy"


def encode_png16(anomaly_map: np.ndarray) -> tuple[bytes, float, float]:
    """16-bit PNG bytes of a float map scaled to its own range, and that range (min, max)."""
    from stratad.report.overlay import encode_png

    low, high = float(anomaly_map.min()), float(anomaly_map.max())
    span = high - low
    scaled = np.zeros(anomaly_map.shape, np.float64) if span <= 0 else (anomaly_map - low) / span
    return encode_png(np.rint(scaled * 65535.0).astype(np.uint16)), low, high


def read_png16_map(path: str | Path, map_min: float, map_max: float) -> np.ndarray:
    """The float32 map written by ``predict --maps png16`` (``map_min`` / ``map_max`` from scores.csv)."""
    import cv2

    values = cv2.imdecode(np.frombuffer(Path(path).read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    if values is None or values.dtype != np.uint16:
        raise StratadError(f"{path} is not a 16-bit map written by `stratad predict --maps png16`")
    return (map_min + values.astype(np.float64) / 65535.0 * (map_max - map_min)).astype(np.float32)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def display_path(path: str | Path) -> str:
    """A path as text that any UTF-8 writer accepts: bytes that are not UTF-8 (a Latin-1 file name
    such as ``caf\\xe9.jpg``) are shown as ``\\xe9`` escapes instead of crashing the writer."""
    return os.fsencode(os.fspath(path)).decode("utf-8", errors="backslashreplace")


def output_names(paths: Sequence[Path], root: Path) -> list[Path]:
    """Output path stem of each input, relative to the input ``root`` with its extension kept
    (``sub/a.jpg``), so ``a.jpg`` and ``a.png`` or two sub-folders' ``a.png`` never share outputs."""
    names: list[Path] = []
    for path in paths:
        try:
            names.append(path.relative_to(root) if root != path else Path(path.name))
        except ValueError:
            names.append(Path(path.name))
    if len(set(names)) != len(names):  # only possible for inputs given outside one root
        seen: dict[Path, int] = {}
        unique = []
        for name in names:
            seen[name] = seen.get(name, 0) + 1
            unique.append(name if seen[name] == 1 else name.with_name(f"{name.name}~{seen[name]}"))
        names = unique
    return names


def _header(model: Path, model_sha256: str, source: Path) -> list[str]:
    from stratad import __version__

    return [
        f"# stratad {__version__} predict",
        f"# model: {display_path(model.resolve())} sha256={model_sha256}",
        f"# input: {display_path(source.resolve())}",
        "# columns: image (input path), score (image anomaly score, full float precision), "
        "map (the map file at the image's size: 16-bit PNG whose 0..65535 spans map_min..map_max, or "
        "float32 .npy), overlay (heatmap overlay file); with thresholds (fit --calibrate): "
        "normalized_score (0.5 at the image threshold), decision (good / defective: score > threshold), "
        "defect_area (fraction of the image's pixels over the pixel threshold; 0 for an image judged good), "
        "mask (binary PNG of them)",
    ]


def _previous_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        return [line.rstrip("\n") for line in handle if line.startswith("#")]


def load_model(path: Path, device: str | None = None) -> Any:
    """A ``.stratad`` pipeline, or an exported ``.onnx`` model run with onnxruntime."""
    if path.suffix.lower() == ".onnx":
        from stratad.inference import OnnxModel

        if device not in (None, "cpu"):
            raise StratadError("an .onnx model runs on the CPU here (onnxruntime); drop --device")
        return OnnxModel(path)
    from stratad.pipeline import Pipeline

    return Pipeline.load(path, device=device)


class OverlayFormat(str, enum.Enum):
    """How ``predict`` writes each heatmap overlay (at the image's own size)."""

    #: JPEG at quality 90: ~6 ms per 900 x 900 overlay, against ~30 ms as PNG
    jpg = "jpg"
    #: lossless PNG
    png = "png"
    #: no overlay
    none = "none"


#: Decoded images kept in memory for the overlays, so that they are not read twice (beyond this,
#: an image is read again when its overlay is drawn).
HELD_IMAGES_MB = 512


@dataclass
class PredictSummary:
    n_images: int
    out: Path
    scores: np.ndarray


@dataclass
class _Scored:
    row: list[str]
    score: float
    small_map: np.ndarray | None
    rgb: np.ndarray | None
    normalized: float | None = None
    defective: bool | None = None


def predict_to_folder(
    model: str | Path,
    source: str | Path,
    out: str | Path,
    device: str | None = None,
    progress: Callable[[int], None] | None = None,
    maps: MapFormat | str = MapFormat.png16,
    overlays: OverlayFormat | str | bool = OverlayFormat.jpg,
    recursive: bool = False,
    reporter: Reporter | None = None,
) -> PredictSummary:
    """Score an image or a folder of images (``recursive``: the whole tree) with a saved model and
    write, into ``out``: per image its map at the image's own size (``maps``: a 16-bit PNG
    ``<name>.map.png`` with its range in scores.csv, a float32 ``<name>.npy``, or none) and a heatmap
    overlay (``<name>.overlay.jpg`` or ``.png``: the image at its own resolution with the heatmap,
    the predicted defects outlined, the decision and a colour bar), with thresholds (``fit
    --calibrate``) a binary defect mask ``<name>.mask.png``, all named after the input with its
    relative path and extension (``sub/a.jpg.npy``), and ``scores.csv``, whose header says which
    model and input produced it and whose rows are appended as images are scored (a crash keeps
    what was scored; the overlay column is filled once every overlay is written). A folder holding
    another model's or another input's predictions is refused. ``progress`` is called
    with the number of images scored; ``reporter`` (the command line) shows a bar over all images.

    Each image is decoded once, by the worker that scores it, which also writes its map; the
    workers overlap one another's decoding, network and encoding (:meth:`Pipeline.imap_images`).
    Overlays share one colour scale over the run, so they are drawn when every map is known.
    """
    from stratad.data import images_in, read_image_rgb
    from stratad.decisions import decide
    from stratad.export.io import check_output_folder
    from stratad.report.overlay import encode_png

    model, source, out = Path(model), Path(source).expanduser(), Path(out)
    fmt = MapFormat(maps)
    overlay_fmt = OverlayFormat(
        (OverlayFormat.jpg if overlays else OverlayFormat.none) if isinstance(overlays, bool) else overlays
    )
    paths = images_in(source, recursive=recursive)
    check_output_folder(out)
    pipe = load_model(model, device)
    header = _header(model, file_sha256(model), source)
    scores_path = out / SCORES_FILE
    if scores_path.is_file() and _previous_header(scores_path)[1:3] != header[1:3]:
        raise StratadError(
            f"{out} holds predictions of another model or input ({scores_path}); use another --out "
            "folder or delete it"
        )
    root = source if source.is_dir() else source.parent
    names = output_names(paths, root)
    bit_depth = pipe.config.bit_depth
    held = _Budget(HELD_IMAGES_MB * 2**20)

    calibration = getattr(pipe, "calibration_", None)

    def score(index: int) -> _Scored:
        path, name = paths[index], names[index]
        rgb = read_image_rgb(path, bit_depth)
        image_score, small = pipe.score_image(rgb)
        need_full = small is not None and (
            fmt is not MapFormat.none or (calibration is not None and calibration.pixel_threshold is not None)
        )
        decision = decide(calibration, float(image_score[0]), small if need_full else None, rgb.shape[:2])
        row = [display_path(path), repr(float(image_score[0])), "", "", "", "", "", "", "", ""]
        if decision.normalized is not None:
            row[6] = repr(decision.normalized)
            row[7] = "defective" if decision.defective else "good"
        if small is not None:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            if fmt is not MapFormat.none:
                assert decision.anomaly_map is not None
                row[2:5] = _write_map(out, name, decision.anomaly_map, fmt)
            if decision.mask is not None:
                mask_path = out / name.with_name(f"{name.name}.mask.png")
                _write_bytes(mask_path, encode_png(decision.mask.astype(np.uint8) * 255))
                row[8], row[9] = repr(decision.defect_area), display_path(mask_path.relative_to(out))
        if overlay_fmt is OverlayFormat.none:  # nothing is drawn later: keep nothing per image
            return _Scored(row, decision.score, None, None)
        keep = small is not None and held.take(rgb.nbytes)
        return _Scored(
            row, decision.score, small, rgb if keep else None, decision.normalized, decision.defective
        )

    reporter = reporter or Reporter()
    scored: list[_Scored] = []
    with (
        reporter.bar("scoring", len(paths)) as advance,
        open(scores_path, "w", newline="", encoding="utf-8") as handle,
    ):
        handle.write("\n".join(header) + "\n")
        writer = csv.writer(handle)
        writer.writerow(SCORE_COLUMNS)
        handle.flush()
        for result in pipe.imap_images(score, range(len(paths))):
            writer.writerow(result.row)
            handle.flush()  # a crash keeps every row written so far
            scored.append(result)
            advance(1)
            if progress is not None:
                progress(1)
    if overlay_fmt is not OverlayFormat.none and scored[0].small_map is not None:
        _write_overlays(paths, names, scored, bit_depth, out, overlay_fmt, calibration)
        # Only now do the overlays exist: the rows name them (a crash before this keeps the rows
        # without overlay names, never names of missing files).
        for item, name in zip(scored, names, strict=True):
            item.row[5] = display_path(name.with_name(f"{name.name}.overlay.{overlay_fmt.value}"))
        _write_scores(scores_path, header, [item.row for item in scored])
    return PredictSummary(len(paths), out, np.array([s.score for s in scored], dtype=np.float32))


def _write_scores(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """scores.csv, whole and atomically."""
    buffer = io.StringIO(newline="")
    buffer.write("\n".join(header) + "\n")
    writer = csv.writer(buffer)
    writer.writerow(SCORE_COLUMNS)
    writer.writerows(rows)
    _write_bytes(path, buffer.getvalue().encode("utf-8"))


class _Budget:
    """A byte budget shared by threads."""

    def __init__(self, limit: int) -> None:
        import threading

        self.left, self._lock = limit, threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if n > self.left:
                return False
            self.left -= n
            return True


def _write_map(out: Path, name: Path, full: np.ndarray, fmt: MapFormat) -> list[str]:
    """Write one map at the image's size; the scores.csv cells ``map``, ``map_min``, ``map_max``."""
    if fmt is MapFormat.npy:
        map_path = out / name.with_name(name.name + ".npy")
        _save_npy(map_path, full.astype(np.float32))
        return [display_path(map_path.relative_to(out)), "", ""]
    map_path = out / name.with_name(name.name + ".map.png")
    data, low, high = encode_png16(full)
    _write_bytes(map_path, data)
    return [display_path(map_path.relative_to(out)), repr(low), repr(high)]


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    _write_bytes(path, buffer.getvalue())


def _write_bytes(path: Path, data: bytes) -> None:
    from stratad.export.io import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _write_overlays(
    paths: Sequence[Path],
    names: Sequence[Path],
    scored: Sequence[_Scored],
    bit_depth: int | None,
    out: Path,
    fmt: OverlayFormat,
    calibration: Any = None,
) -> None:
    """Overlays share one colour scale over the run, so their colours compare across images. Two
    threads: decoding, resizing and encoding (OpenCV) release the GIL. Images kept from scoring are
    not read again."""
    from concurrent.futures import ThreadPoolExecutor

    from stratad.data import read_image_rgb
    from stratad.pipeline import resize_map
    from stratad.report.overlay import decision_overlay, encode_image

    maps = [s.small_map for s in scored if s.small_map is not None]
    vmin = float(min(m.min() for m in maps))
    vmax = float(max(m.max() for m in maps))

    def write(index: int) -> None:
        item = scored[index]
        assert item.small_map is not None
        rgb = item.rgb if item.rgb is not None else read_image_rgb(paths[index], bit_depth)
        item.rgb = None  # freed as soon as it is drawn
        full = resize_map(item.small_map, rgb.shape[:2])
        pixel_t = None if calibration is None else calibration.pixel_threshold
        overlay = decision_overlay(
            rgb,
            full,
            vmin,
            vmax,
            score=item.score,
            normalized=item.normalized,
            defective=item.defective,
            mask=None if pixel_t is None or not item.defective else full > pixel_t,
            pixel_threshold=pixel_t,
        )
        name = names[index]
        _write_bytes(
            out / name.with_name(f"{name.name}.overlay.{fmt.value}"), encode_image(overlay, fmt.value)
        )

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(write, range(len(scored))))


def write_synthetic_set(
    train: DataSource | Sequence[Any], kind: str, n: int, image_size: int, out: str | Path, seed: int = 0
) -> list[Path]:
    """``n`` synthetic defects of ``kind`` made from the good ``train`` images (resized to
    ``image_size``; a :class:`DataSource` gives its training split and its seed), written as
    ``out/images/<kind>_<i>.png`` with exact masks in ``out/masks/``. Targets and sources are drawn by
    :func:`stratad.synth.make_synthetic_set` (every image used as target equally often, the source
    another image). Folders are made with the first file."""
    from stratad.data.datasets import DataSource
    from stratad.data.io import detect_bit_depth, read_image_resized
    from stratad.report.overlay import write_png
    from stratad.synth import build_defect, make_synthetic_set

    if n < 1:
        raise StratadError(f"--n must be at least 1, got {n}")
    if image_size < 32:
        raise StratadError(f"--image-size must be at least 32 pixels, got {image_size}")
    build_defect(kind)  # an unknown kind fails before any image is read
    if isinstance(train, DataSource):
        seed = train.seed
        train = train.load().train
    bit_depth = detect_bit_depth(_record_path(r) for r in train)
    images = [read_image_resized(_record_path(r), image_size, bit_depth) for r in train]
    defects = make_synthetic_set(images, kind, n, np.random.default_rng(seed))
    written = []
    for i, made in enumerate(defects):
        image_path = Path(out) / "images" / f"{kind}_{i:04d}.png"
        write_png(image_path, made.image)
        write_png(Path(out) / "masks" / f"{kind}_{i:04d}.png", (made.mask.astype(np.uint8) * 255))
        written.append(image_path)
    return written


def _record_path(record: Any) -> Path:
    return Path(getattr(record, "path", record))
