"""Pipeline: backbone nodes -> detector -> full-resolution, smoothed anomaly maps.

This is what users fit, save, load and evaluate. Extraction runs every requested node in ONE
forward pass per batch; prediction streams batch by batch so memory stays flat on large folders.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stratad.backbones.traced import TRACED_KEY
from stratad.data.augment import augmented_batch, parse_augmentations
from stratad.data.datasets import ImageRecord
from stratad.data.io import check_bit_depth, detect_bit_depth, image_to_tensor, load_image, read_image_rgb
from stratad.detectors.base import (
    Detector,
    build_seeded_detector,
    config_to_dict,
    detector_class,
    detector_from_state,
)
from stratad.device import loadable_device, resolve_device
from stratad.errors import DetectorError, ModelFileError, StratadError
from stratad.export.io import load_tensors, save_tensors
from stratad.features.types import FeatureBatch
from stratad.metrics.thresholds import Calibration

PathLike = str | Path
ImageSource = PathLike | ImageRecord


@dataclass
class PipelineConfig:
    backbone: str = "efficientnet_lite0"
    nodes: list[str] = field(default_factory=list)
    detector: str = "patchcore"
    detector_params: dict[str, Any] = field(default_factory=dict)
    image_size: int = 256
    weights: str = "imagenet"
    seed: int = 0
    #: Gaussian smoothing of the upsampled map, in input pixels (PatchCore's sigma = 4)
    smoothing_sigma: float = 4.0
    batch_size: int = 16
    device: str = "cpu"
    #: > 0: encode every patch_size x patch_size patch at patch_stride on its own (the patch-level
    #: GDE protocol of CutPaste / DS2) instead of the whole image in one pass
    patch_size: int = 0
    patch_stride: int = 4
    #: extra transformed copies of the training images (hflip, vflip, rot90/180/270, jitter)
    train_augmentations: list[str] = field(default_factory=list)
    #: bits per sample of >8-bit images (12-bit camera data in 16-bit files: 12); None until fit,
    #: which takes the smallest depth holding every training image (see ``detect_bit_depth``)
    bit_depth: int | None = None


def check_config(c: PipelineConfig) -> None:
    """Pipeline settings that no fit could use: refused before any work (and in foreign model files)."""
    if c.image_size < 32:
        raise StratadError(f"image size must be at least 32 pixels, got {c.image_size}")
    if c.batch_size < 1:
        raise StratadError(f"batch size must be at least 1, got {c.batch_size}")
    if c.patch_size and not 0 < c.patch_size <= c.image_size:
        raise StratadError(f"patch size must lie in [1, {c.image_size}] (the image size), got {c.patch_size}")
    if c.patch_stride < 1:
        raise StratadError(f"patch stride must be at least 1, got {c.patch_stride}")
    if not (c.smoothing_sigma >= 0 and np.isfinite(c.smoothing_sigma)):
        raise StratadError(f"smoothing sigma must be a finite number >= 0, got {c.smoothing_sigma}")
    if any(not isinstance(n, str) or not n.strip() for n in c.nodes):
        raise StratadError("node names must be non-empty (see `stratad nodes`)")
    check_bit_depth(c.bit_depth)


@dataclass
class Prediction:
    """Scores of N images; ``maps`` (N, S, S) at the network input size, or None for image-level detectors."""

    paths: list[Path]
    image_scores: np.ndarray
    maps: np.ndarray | None
    original_sizes: list[tuple[int, int]]

    def map_at_original_size(self, i: int) -> np.ndarray:
        if self.maps is None:
            raise StratadError("this detector gives image scores only, no anomaly map")
        height, width = self.original_sizes[i]
        return resize_map(self.maps[i], (height, width))


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of one (h, w) map to (height, width)."""
    if anomaly_map.shape == tuple(size):
        return anomaly_map
    t = torch.from_numpy(np.ascontiguousarray(anomaly_map, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _smoothing_operator(n_in: int, size: int, sigma: float) -> torch.Tensor:
    """(size, n_in) matrix of one axis of :func:`postprocess_maps`: linear upsampling
    (``align_corners=False``), then the Gaussian filter with a mirror border (``abcd|dcba``)."""
    eye = torch.eye(n_in, dtype=torch.float64)[:, None]
    upsample = F.interpolate(eye, size=size, mode="linear", align_corners=False)[:, 0].T
    if sigma <= 0:
        return upsample
    radius = int(4.0 * sigma + 0.5)  # scipy's truncate=4 and cv2's kernel size for the same sigma
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    # Mirror any index back into [0, size): period 2 * size, the second half reversed.
    source = (torch.arange(size)[:, None] + taps.long()[None, :]) % (2 * size)
    source = torch.where(source >= size, 2 * size - 1 - source, source)
    blur = torch.zeros(size, size, dtype=torch.float64)
    blur.scatter_add_(1, source, kernel.expand(size, -1).contiguous())
    return blur @ upsample


def postprocess_maps(maps: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Bilinear upsampling of (N, h, w) maps to the input size, then Gaussian smoothing.

    PatchCore's official code uses sigma = 4 (in input pixels), with scipy's ``gaussian_filter``
    (kernel radius ``4 * sigma``, mirror border). Both steps are linear and separable, so each map
    becomes ``A_h @ map @ A_w.T`` with one precomputed (size, h) matrix per axis: the same filter to
    float32 rounding (tested against scipy), and ~10x faster than upsampling and then filtering,
    which matters when a feature-selection sweep smooths every node's maps.
    """
    t = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    rows = _smoothing_operator(t.shape[1], size, sigma).float()
    cols = rows if t.shape[2] == t.shape[1] else _smoothing_operator(t.shape[2], size, sigma).float()
    return torch.matmul(torch.matmul(rows, t), cols.T).numpy()


def _config_from_file(path: PathLike, meta: dict[str, Any]) -> PipelineConfig:
    from stratad._options import coerce_options

    raw = meta.get("config")
    if not isinstance(raw, dict):
        raise ModelFileError(f"{path} is damaged: it has no pipeline config")
    known = {f.name for f in fields(PipelineConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ModelFileError(
            f"{path} has settings this stratad does not know ({', '.join(unknown)}): it was made by a "
            "newer stratad or edited by hand"
        )
    missing = sorted(known - set(raw) - {"bit_depth"})  # bit_depth: new in format 2, None before
    if missing:
        raise ModelFileError(f"{path} is damaged: its config lacks {', '.join(missing)}")
    try:
        cfg = PipelineConfig(**coerce_options(PipelineConfig, raw, ModelFileError, "the pipeline"))
        if not isinstance(cfg.detector_params, dict):
            raise ModelFileError("detector_params is not an object")
        check_config(cfg)
    except StratadError as exc:
        raise ModelFileError(f"{path} holds an unusable config: {exc}") from None
    return cfg


def _path_of(item: ImageSource) -> Path:
    return item.path if isinstance(item, ImageRecord) else Path(item)


class Pipeline:
    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        nodes: Sequence[str] | str | None = None,
        detector: str = "patchcore",
        image_size: int = 256,
        weights: str = "imagenet",
        detector_params: dict[str, Any] | None = None,
        seed: int = 0,
        smoothing_sigma: float = 4.0,
        batch_size: int = 16,
        device: str = "cpu",
        patch_size: int = 0,
        patch_stride: int = 4,
        train_augmentations: Sequence[str] = (),
        bit_depth: int | None = None,
    ) -> None:
        requested = [nodes] if isinstance(nodes, str) else list(nodes or [])
        self.config = PipelineConfig(
            backbone,
            requested,
            detector,
            dict(detector_params or {}),
            image_size,
            weights,
            seed,
            smoothing_sigma,
            batch_size,
            device,
            patch_size,
            patch_stride,
            [a.value for a in parse_augmentations(train_augmentations)],
            bit_depth,
        )
        check_config(self.config)
        self.config.device = resolve_device(device)
        # Validate the detector name and options now, before any expensive work.
        self.detector: Detector = build_seeded_detector(detector, self.config.detector_params, seed)
        self._extractor: Any = None
        self._traced: Any = None
        self._backbone: Any = None
        self.fitted_ = False
        self.timings_: dict[str, float] = {}
        #: thresholds and normalisation (``fit --calibrate``), saved in the model file; None: scores only
        self.calibration_: Calibration | None = None
        #: content digests of the images this model has seen, by role (``fitted``, ``calibration``),
        #: saved in the model file: ``evaluate`` refuses a test set holding one of them
        self.seen_images_: dict[str, tuple[str, ...]] = {}

    # -- backbone and nodes --
    @property
    def backbone(self) -> Any:
        if self._backbone is None:
            from stratad.backbones import build_backbone

            self._backbone = build_backbone(
                self.config.backbone, weights=self.config.weights, seed=self.config.seed
            )
        return self._backbone

    @property
    def nodes(self) -> list[str]:
        if not self.config.nodes:
            from stratad.backbones.stages import stage_info

            rule = detector_class(self.config.detector).default_nodes
            self.config.nodes = rule.resolve(*stage_info(self.backbone), backbone=self.config.backbone)
        return self.config.nodes

    def _resolve(self) -> None:
        from stratad.backbones import resolve_nodes

        self.config.nodes = resolve_nodes(self.backbone, self.nodes)

    def prepare(self) -> Pipeline:
        """Build the backbone and resolve the nodes now, so bad names fail before any long work."""
        _ = self.extractor
        return self

    @property
    def extractor(self) -> Any:
        if self._extractor is None:
            from stratad.backbones import NodeExtractor

            self._resolve()
            self._extractor = NodeExtractor(self.backbone, self.config.nodes, device=self.config.device)
        return self._extractor

    # -- feature extraction --
    def _batches(self, items: Sequence[ImageSource]) -> Iterator[tuple[torch.Tensor, list[tuple[int, int]]]]:
        size = self.config.image_size
        for start in range(0, len(items), self.config.batch_size):
            chunk = items[start : start + self.config.batch_size]
            loaded = [load_image(_path_of(it), size, self.config.bit_depth) for it in chunk]
            yield torch.stack([t for t, _ in loaded]), [hw for _, hw in loaded]

    def iter_features(
        self,
        items: Sequence[ImageSource],
        progress: Callable[[int], None] | None = None,
        augment: bool = False,
    ) -> Iterator[tuple[FeatureBatch, list[tuple[int, int]]]]:
        extractor = self.extractor
        size = (self.config.image_size, self.config.image_size)
        kinds = parse_augmentations(self.config.train_augmentations) if augment else []
        generator = torch.Generator().manual_seed(self.config.seed)
        for images, original_sizes in self._batches(items):
            count = len(original_sizes)
            images = augmented_batch(images, kinds, generator)
            sizes = original_sizes * (1 + len(kinds))
            if self.config.patch_size:
                from stratad.features.patches import extract_patch_features

                feats = extract_patch_features(
                    extractor, images, self.config.patch_size, self.config.patch_stride
                )
            else:
                feats = extractor(images)
            yield FeatureBatch({n: feats[n] for n in self.config.nodes}, size), sizes
            if progress is not None:
                progress(count)

    def extract(
        self,
        items: Sequence[ImageSource],
        progress: Callable[[int], None] | None = None,
        augment: bool = False,
    ) -> FeatureBatch:
        if not items:
            raise StratadError("no images to extract features from")
        return FeatureBatch.concat([fb for fb, _ in self.iter_features(items, progress, augment)])

    # -- fit / predict --
    def fit(self, images: Sequence[ImageSource], progress: Callable[[int], None] | None = None) -> Pipeline:
        """Extract the training features (:meth:`training_features`), then fit the detector on them."""
        return self.fit_features(self.training_features(images, progress))

    def training_features(
        self, images: Sequence[ImageSource], progress: Callable[[int], None] | None = None
    ) -> FeatureBatch:
        """The features the detector is fitted on (with the training augmentations); the bit depth is
        detected from the images first when it is not set."""
        if not images:
            raise StratadError("no training images")
        t0 = time.perf_counter()
        if self.config.bit_depth is None:
            self.config.bit_depth = detect_bit_depth(_path_of(i) for i in images)
        train = self.extract(images, progress, augment=True)
        self.timings_ = {"extract_s": time.perf_counter() - t0}
        return train

    def fit_features(self, train: FeatureBatch) -> Pipeline:
        """Fit the detector on extracted features; a trained detector trains on the pipeline's device
        (``--device cuda``) and keeps its fitted state on the CPU."""
        t0 = time.perf_counter()
        if hasattr(self.detector, "train_device"):
            self.detector.train_device = self.config.device
        self.detector.fit(train)
        self.timings_ = {**getattr(self, "timings_", {}), "detector_fit_s": time.perf_counter() - t0}
        self._detector_module: Any = None
        self._traced = None  # a refit scores with the extractor it was fitted with
        self.fitted_ = True
        self.calibration_ = None  # thresholds of another fit do not hold for this one
        self.seen_images_ = {}
        return self

    def predict(
        self, images: Sequence[ImageSource], progress: Callable[[int], None] | None = None
    ) -> Prediction:
        """Scores and maps of images on disk; each worker of :meth:`score_images`' pool reads its
        image too, so decoding overlaps the other worker's forward pass."""
        if not self.fitted_:
            raise StratadError("the pipeline is not fitted: call fit() or load a saved model first")
        if not images:
            raise StratadError("no images to predict")

        def read_and_score(item: ImageSource) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
            rgb = read_image_rgb(_path_of(item), self.config.bit_depth)
            score, anomaly_map = self.score_image(rgb)
            if progress is not None:
                progress(1)
            return score, None if anomaly_map is None else anomaly_map[None], (rgb.shape[0], rgb.shape[1])

        results = self._map_images(read_and_score, list(images))
        maps = [r[1] for r in results if r[1] is not None]
        return Prediction(
            [_path_of(i) for i in images],
            np.concatenate([r[0] for r in results]).astype(np.float32),
            np.concatenate(maps) if maps else None,
            [r[2] for r in results],
        )

    def score_images(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """Image scores (N,) and smoothed maps (N, S, S) of images in [0, 1] at the network size.

        Each image passes the backbone and the detector on its own, with one thread: convolution and
        matrix-product kernels pick their algorithm by batch shape and thread count, so a batched
        image's score would differ in the 7th digit from the same image scored alone or among other
        images. The parallelism is across images instead (:meth:`_map_images`).
        """
        if int(images.shape[0]) == 0:
            raise StratadError("no images to score")
        results = self._map_images(lambda i: self._score_one(images[i : i + 1]), list(range(images.shape[0])))
        maps = [r[1] for r in results if r[1] is not None]
        return np.concatenate([r[0] for r in results]), (np.concatenate(maps) if maps else None)

    def imap_images(self, work: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        """``work(item) for item in items``, yielded in order as they finish,
        ``torch.get_num_threads()`` items at a time in a thread pool (torch, faiss, NumPy, OpenCV and
        Pillow release the GIL), every one with one intra-op thread.
        On the 2-vCPU machine this is also the fastest way to run single images
        (``benchmarks/bench_threads.py``, blocks.2 + blocks.4, passive OpenMP waiting): 164 images/s
        idle and 101 with the other core busy, against 79 / 92 for one image at a time with two
        intra-op threads (every small op puts the sleeping OpenMP threads to work and back to sleep)
        and 155 / 117 for the former batches of 16."""
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        if not items:
            return
        threads = torch.get_num_threads()
        workers = 1 if self.config.device != "cpu" else max(1, min(threads, len(items)))
        torch.set_num_threads(1)
        try:
            with threadpool_limits(1):
                # The first item in this thread: lazily built parts (extractor, kNN index) then exist
                # before other threads share them.
                yield work(items[0])
                if workers > 1 and len(items) > 1:
                    with ThreadPoolExecutor(
                        workers, initializer=torch.set_num_threads, initargs=(1,)
                    ) as pool:
                        yield from pool.map(work, items[1:])
                else:
                    yield from (work(item) for item in items[1:])
        finally:
            torch.set_num_threads(threads)

    def _map_images(self, work: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return list(self.imap_images(work, items))

    def score_image(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One decoded uint8 (H, W, 3) image: its score (1,) and its map at the network size (S, S)
        (None for image-only detectors), through the one inference path."""
        if not self.fitted_:
            raise StratadError("the pipeline is not fitted: call fit() or load a saved model first")
        score, anomaly_map = self._score_one(image_to_tensor(rgb, self.config.image_size)[None])
        return score, None if anomaly_map is None else anomaly_map[0]

    def _score_one(self, image: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """One image through the one inference path: extractor -> detector module -> map head."""
        if self.config.patch_size:
            from stratad.features.patches import extract_patch_features

            feats = extract_patch_features(
                self.extractor, image, self.config.patch_size, self.config.patch_stride
            )
        else:
            feats = self._scoring_extractor()(image)
        scores, maps = self.detector_module(feats)
        score = scores.numpy().astype(np.float32, copy=False).reshape(1)
        return score, (None if maps is None else self.postprocess_maps(maps.numpy()))

    def _scoring_extractor(self) -> Any:
        """The traced extractor a loaded model carries (:mod:`stratad.backbones.traced`) while it
        fits the configuration, else the extractor built from the backbone."""
        traced, c = self._traced, self.config
        if (
            traced is not None
            and c.device == "cpu"
            and traced.nodes == c.nodes
            and traced.image_size == c.image_size
        ):
            return traced
        return self.extractor

    @property
    def detector_module(self) -> Any:
        """The fitted detector as its inference module (:mod:`stratad.detectors.modules`), built once."""
        if getattr(self, "_detector_module", None) is None:
            self._detector_module = self.detector.module(self.config.nodes)
        return self._detector_module

    def postprocess_maps(self, maps: np.ndarray) -> np.ndarray:
        c = self.config
        if c.patch_size:
            from stratad.features.patches import patch_scores_to_image

            grid = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
            size = (c.image_size, c.image_size)
            return patch_scores_to_image(grid, c.patch_size, c.patch_stride, c.smoothing_sigma, size).numpy()
        return postprocess_maps(maps, c.image_size, c.smoothing_sigma)

    # -- persistence --
    def save(self, path: PathLike) -> None:
        if not self.fitted_:
            raise StratadError("refusing to save an unfitted pipeline")
        traced = self._trace()  # first: building the extractor may resolve the configured nodes
        config = asdict(self.config)
        config["detector_params"] = config_to_dict(self.detector.config)
        state = {f"detector.{k}": v for k, v in self.detector.state_dict().items()}
        if traced is not None:
            state[TRACED_KEY] = traced
        meta: dict[str, Any] = {"kind": "pipeline", "config": config}
        if self.calibration_ is not None:
            meta["calibration"] = self.calibration_.to_dict()
        if getattr(self, "seen_images_", None):
            meta["seen_images"] = {role: list(d) for role, d in self.seen_images_.items()}
        save_tensors(path, state, meta)

    def _trace(self) -> torch.Tensor | None:
        """The extractor as a TorchScript archive for the file (CPU models without patch features)."""
        if self.config.device != "cpu" or self.config.patch_size:
            return None
        scoring = self._scoring_extractor()
        if scoring is self._traced:  # a loaded model whose trace still fits: saved as it came
            return scoring.archive
        from stratad.backbones.traced import trace_extractor

        return trace_extractor(self.extractor, self.config.nodes, self.config.image_size)

    @classmethod
    def load(cls, path: PathLike, device: str | None = None) -> Pipeline:
        """A saved pipeline, on ``device`` (default: the one it was fitted on when this machine has
        it, else the CPU). Any damaged, hand-edited or foreign file is one :class:`ModelFileError`."""
        tensors, meta = load_tensors(path)
        if meta.get("kind") != "pipeline":
            raise ModelFileError(f"{path} holds no stratad pipeline (kind={meta.get('kind')!r})")
        cfg = _config_from_file(path, meta)
        cfg.device = loadable_device(cfg.device, device)
        pipe = cls.__new__(cls)
        pipe.config = cfg
        state = {k.removeprefix("detector."): v for k, v in tensors.items() if k.startswith("detector.")}
        try:
            pipe.detector = detector_from_state(cfg.detector, cfg.detector_params, state)
        except StratadError as exc:
            raise ModelFileError(f"{path}: {exc}") from None
        pipe._extractor = None
        pipe._backbone = None
        pipe._traced = None
        if TRACED_KEY in tensors and cfg.device == "cpu" and cfg.nodes:
            from stratad.backbones.traced import load_traced

            pipe._traced = load_traced(tensors[TRACED_KEY], cfg.nodes, cfg.image_size)
        pipe.fitted_ = True
        pipe.timings_ = {}
        pipe.calibration_ = None
        if "calibration" in meta:
            try:
                pipe.calibration_ = Calibration.from_dict(meta["calibration"])
            except StratadError as exc:
                raise ModelFileError(f"{path} holds an unusable calibration: {exc}") from None
        seen = meta.get("seen_images", {})
        if not isinstance(seen, dict) or not all(
            isinstance(v, list) and all(isinstance(d, str) for d in v) for v in seen.values()
        ):
            raise ModelFileError(f"{path} is damaged: its record of seen images is not lists of digests")
        pipe.seen_images_ = {str(role): tuple(d) for role, d in seen.items()}
        pipe._check_runs(path)
        return pipe

    def _check_runs(self, path: PathLike) -> None:
        """Score one blank image: a state whose shapes do not fit the backbone and nodes (a foreign or
        hand-made file) fails here, as one :class:`ModelFileError`, instead of deep inside a run."""
        size = self.config.image_size
        traced_in_use = self._traced is not None and self._scoring_extractor() is self._traced
        try:
            scores, maps = self.score_images(torch.full((1, 3, size, size), 0.5))
        except DetectorError as exc:
            raise ModelFileError(f"{path} does not fit its backbone and nodes: {exc}") from None
        except StratadError:  # missing weights, an unknown backbone: said as they are
            raise
        except Exception as exc:  # any kernel error means the stored state does not fit the network
            if traced_in_use:  # ... or that this torch cannot run the trace: check with the backbone
                self._traced = None
                return self._check_runs(path)
            text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"{path} does not fit its backbone and nodes ({text})") from None
        if not np.isfinite(scores).all() or (maps is not None and not np.isfinite(maps).all()):
            raise ModelFileError(f"{path} gives non-finite scores: its state is damaged")

    def describe(self) -> dict[str, Any]:
        return {
            "backbone": self.config.backbone,
            "weights": self.config.weights,
            "nodes": list(self.config.nodes),
            "detector": self.config.detector,
            "detector_params": config_to_dict(self.detector.config),
            "image_size": self.config.image_size,
            "calibration": None if self.calibration_ is None else self.calibration_.to_dict(),
        }
