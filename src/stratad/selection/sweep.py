"""Score every candidate node with one detector: the engine behind `stratad select` and `stratad sweep`.

The feature-selection paper fits one model per node from scratch and names that cost its main
limitation. Here:
- nodes are grouped into chunks whose features (float16, maps average-pooled to at most
  ``max_grid`` x ``max_grid`` inside the forward pass, right after each node runs) fit a memory
  budget (by default half of the free RAM: one chunk for all of EfficientNet-Lite0); each chunk
  costs ONE pass of every image through the backbone, pruned at the chunk's deepest node, and
  images are decoded only once; identity nodes share their input's cached tensor and are scored once;
- unless ``exact``, every node is fitted with the detector's ``sweep_params`` (PatchCore: a 32-d
  projection while choosing the coreset) and pixel metrics see every ``pixel_stride``-th row and
  column, cheaper approximations whose node ranking was measured against the exact one
  (``benchmarks/sweep_fidelity.py``); an ``exact`` sweep also caches every node at its own
  resolution in float32 (``max_grid`` ignored), as a fitted pipeline sees it;
- the per-node fit / score / metrics work of a chunk runs in ``workers`` forked processes that share
  the chunk's features copy-on-write;
- each finished node is appended to ``nodes.csv`` at once, so a killed sweep resumes where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stratad.detectors.base import Scores, build_detector, build_seeded_detector
from stratad.errors import StratadError
from stratad.features.types import FeatureBatch
from stratad.metrics import PixelTruth
from stratad.pipeline import postprocess_maps, resize_map
from stratad.selection.config import (
    COMBINATION_SEPARATOR,
    NodeResult,
    SweepConfig,
    candidate_nodes,
    result_columns,
)


@dataclass
class EvalSet:
    """Images uint8 (M, 3, S, S); labels (M,); masks: bool arrays at S x S or at original sizes."""

    images: torch.Tensor
    labels: np.ndarray
    #: one mask per image of ``pixel_images`` (every image when that is None)
    masks: Sequence[np.ndarray]
    #: indices of the images that enter the pixel metrics (defects without ground truth leave them)
    pixel_images: np.ndarray | None = None


def load_uint8_images(
    paths: Sequence[Any],
    size: int,
    progress: Callable[[int], None] | None = None,
    bit_depth: int | None = None,
) -> torch.Tensor:
    from stratad.data.io import read_image_resized, uint8_batch

    out = []
    for p in paths:
        out.append(read_image_resized(getattr(p, "path", p), size, bit_depth))
        if progress is not None:
            progress(1)
    return uint8_batch(out)


def read_header(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        return next(csv.reader(handle), None)


def read_results(path: Path, fpr_limit: float = 0.3) -> dict[str, NodeResult]:
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {r["node"]: NodeResult.from_row(r, fpr_limit) for r in rows}


class CachedFeatures(nn.Module):
    """What the sweep caches of a node: its map average-pooled to at most ``max_grid`` x
    ``max_grid`` (``max_grid=0``: at its own resolution; pooled nodes unchanged), as ``dtype``
    (float16 unless exact) in the layout the backbone produced (channels-last on the CPU, which the
    patch detectors pool fastest). Always a new tensor."""

    def __init__(self, max_grid: int, dtype: torch.dtype = torch.float16) -> None:
        super().__init__()
        self.max_grid = max_grid
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.max_grid
        if x.ndim == 4 and g > 0 and (x.shape[-2] > g or x.shape[-1] > g):
            x = F.adaptive_avg_pool2d(x, (min(x.shape[-2], g), min(x.shape[-1], g)))
        return x.to(self.dtype, copy=True)


def cached_features(cfg: SweepConfig) -> CachedFeatures:
    """How a sweep caches node features: an ``exact`` sweep keeps every node at its own resolution
    in float32, as a fitted pipeline sees it (so single nodes and the default pair are scored on
    the same footing as ``fit``); otherwise maps are pooled to ``max_grid`` and cast to float16."""
    return CachedFeatures(0, torch.float32) if cfg.exact else CachedFeatures(cfg.max_grid)


def plan_chunks(sizes: dict[str, int], budget_bytes: int) -> list[list[str]]:
    """Consecutive nodes (graph order) grouped so that each group's cached bytes fit the budget."""
    chunks: list[list[str]] = []
    current: list[str] = []
    used = 0
    for node, nbytes in sizes.items():
        if current and used + nbytes > budget_bytes:
            chunks.append(current)
            current, used = [], 0
        current.append(node)
        used += nbytes
    if current:
        chunks.append(current)
    return chunks


def sweep_detector_params(cfg: SweepConfig) -> dict[str, Any]:
    """The options every candidate node is fitted with (see ``SweepConfig.exact``)."""
    from stratad.detectors import detector_class

    if cfg.exact:
        return dict(cfg.detector_params)
    return {**detector_class(cfg.detector).sweep_params, **cfg.detector_params}


def pooled_exact(cfg: SweepConfig) -> SweepConfig:
    """``cfg`` with the detector's exact options and every pixel scored, but node maps still pooled to
    ``max_grid`` in float16: the reference of the benchmarks' real-test sweeps over hundreds of nodes,
    where ``exact`` (every node at its own resolution) is infeasible on a CPU (a stride-2 node of 571
    MTD images hands 9.4 M patches to the coreset)."""
    from dataclasses import replace

    from stratad.detectors import detector_class

    cls = detector_class(cfg.detector)
    defaults = cls.config_class()
    exact_options = {key: getattr(defaults, key) for key in cls.sweep_params}
    return replace(cfg, exact=False, pixel_stride=1, detector_params={**exact_options, **cfg.detector_params})


def effective_pixel_stride(cfg: SweepConfig) -> int:
    """Row and column step of the pixels that the metrics see: 1 for an ``exact`` sweep."""
    if cfg.pixel_stride < 1:
        raise StratadError(f"pixel_stride must be >= 1 (1 = every pixel), got {cfg.pixel_stride}")
    return 1 if cfg.exact else cfg.pixel_stride


def available_memory_mb() -> int:
    """Memory the system can give without swapping (Linux MemAvailable; else total / 2)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**21)
    except (ValueError, OSError, AttributeError):  # pragma: no cover  (non-POSIX)
        return 4096


def memory_budget_bytes(cfg: SweepConfig) -> int:
    if cfg.memory_budget_mb < 0:
        raise StratadError(f"the memory budget must be >= 0 MB (0 = automatic), got {cfg.memory_budget_mb}")
    mb = cfg.memory_budget_mb or max(512, available_memory_mb() // 2)
    return mb * 2**20


@dataclass
class ChunkContext:
    """What scoring a node of a chunk needs: the settings, the evaluation set, its labelled defect
    regions and the chunk's cached features (``train[node]``, ``test[node]``)."""

    config: SweepConfig
    evaluation: EvalSet
    truth: PixelTruth | None
    train: dict[str, torch.Tensor]
    test: dict[str, torch.Tensor]


@dataclass
class CandidatePredictions:
    """One candidate's outputs on the evaluation set: image scores (M,), and the maps of the images
    that enter the pixel metrics on the lattice of the sweep (``pixel_stride``), beside their masks."""

    image_scores: np.ndarray
    maps: list[np.ndarray] | None
    fit_s: float
    score_s: float


def _predict_node(context: ChunkContext, node: str) -> CandidatePredictions:
    """Fit one candidate (a node, or a combination of nodes: one detector on all) and score the
    evaluation set through the one inference path."""
    cfg = context.config
    ev = context.evaluation
    nodes = candidate_nodes(node)
    train = {n: context.train[n] for n in nodes}
    test = {n: context.test[n] for n in nodes}
    size = (cfg.image_size, cfg.image_size)
    det = build_seeded_detector(cfg.detector, sweep_detector_params(cfg), cfg.seed)
    if cfg.device and hasattr(det, "train_device"):  # a trained detector trains on the sweep's device
        det.train_device = cfg.device
    if not det.accepts_float16:
        train = {n: f.float() for n, f in train.items()}
        test = {n: f.float() for n, f in test.items()}
    t0 = time.perf_counter()
    det.fit(FeatureBatch(train, size))
    t1 = time.perf_counter()
    image_scores, raw_maps = det.module(nodes)(test)  # the one inference path
    scores = Scores(image_scores.numpy(), None if raw_maps is None else raw_maps.numpy())
    t2 = time.perf_counter()
    full = None
    if scores.maps is not None:
        step = effective_pixel_stride(cfg)
        maps = postprocess_maps(scores.maps, cfg.image_size, cfg.smoothing_sigma)
        if ev.pixel_images is not None:
            maps = maps[ev.pixel_images]
        if all(tuple(mask.shape) == maps.shape[1:] for mask in ev.masks):
            full = list(np.ascontiguousarray(maps[:, ::step, ::step]))
        else:
            full = [resize_map(m, mask.shape)[::step, ::step] for m, mask in zip(maps, ev.masks, strict=True)]
    return CandidatePredictions(scores.image_scores, full, t1 - t0, t2 - t1)


def _score_node(context: ChunkContext, node: str) -> NodeResult:
    """Fit and evaluate one candidate (see :func:`_predict_node`)."""
    from stratad.metrics import aupro_key, evaluate

    cfg = context.config
    ev = context.evaluation
    pred = _predict_node(context, node)
    if pred.maps is not None:
        assert context.truth is not None
        metrics = evaluate(
            ev.labels, pred.image_scores, context.truth, pred.maps, fpr_limit=cfg.fpr_limit,
            pixel_images=ev.pixel_images,
        )  # fmt: skip
    else:
        metrics = evaluate(ev.labels, pred.image_scores, fpr_limit=cfg.fpr_limit)
    return NodeResult(
        node=node,
        image_auroc=metrics["image_auroc"],
        pixel_auroc=metrics.get("pixel_auroc"),
        aupro=metrics.get(aupro_key(cfg.fpr_limit)),
        p_h=metrics.get("p_h"),
        fit_s=round(pred.fit_s, 3),
        score_s=round(pred.score_s, 3),
        fpr_limit=cfg.fpr_limit,
    )


def predict_candidates(
    cfg: SweepConfig, train_images: torch.Tensor, evaluation: EvalSet, candidates: Sequence[str]
) -> dict[str, CandidatePredictions]:
    """Per-image outputs of a few candidates on the evaluation set, fitted exactly as the sweep fits
    them (one backbone pass over the union of their nodes)."""
    from stratad.backbones import build_backbone, list_nodes

    backbone = build_backbone(cfg.backbone, weights=cfg.weights, seed=cfg.seed)
    wanted = {n for c in candidates for n in candidate_nodes(c)}
    union = [i.name for i in list_nodes(backbone, image_size=cfg.image_size) if i.name in wanted]
    feats = _extract_chunk(backbone, union, cfg, train_images, evaluation)
    context = ChunkContext(cfg, evaluation, None, feats["train"], feats["test"])
    return {c: _predict_node(context, c) for c in candidates}


# The chunk a forked worker scores, handed over by the pool initializer (the fork shares its memory
# copy-on-write; nothing is pickled). Set only inside worker processes.
_WORKER_CONTEXT: list[ChunkContext] = []


def _worker_init(context: ChunkContext) -> None:
    _WORKER_CONTEXT[:] = [context]
    one_thread()


def one_thread() -> None:
    """One thread for torch, NumPy's BLAS (the coreset loop) and faiss in this process: in worker
    processes the workers themselves are the parallelism, and threads would spin against each other."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(1)
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def run_sweep(
    cfg: SweepConfig,
    train_images: torch.Tensor,
    evaluation: EvalSet,
    out_dir: Path,
    progress: Callable[[str, int, int], None] | None = None,
    relative_rf: dict[str, float] | None = None,
    settings: dict[str, Any] | None = None,
    extra: Sequence[str] = (),
    backbone: Any = None,
    memo: FeatureMemo | None = None,
) -> list[NodeResult]:
    """Fit ``cfg.detector`` on ``train_images`` for every node, evaluate on ``evaluation``; ``extra``:
    node combinations scored too (besides the default one, ``cfg.with_default``). ``backbone``: the
    one ``cfg`` builds, when the caller has it already; ``memo``: features of earlier sweeps over
    subsets of these images (successive halving), reused and added to when the nodes fit in one
    chunk.

    Results go to ``out_dir/nodes.csv`` (one row per finished node, appended as it finishes). The
    folder is stamped (``sweep.json``) with every setting that changes a row, ``settings`` from the
    caller (e.g. the defect kind) and digests of the data and of the backbone weights; a folder
    stamped otherwise is refused, naming what differs. The stamp is written only after every
    argument has been checked.
    """
    from stratad.backbones import build_backbone, list_nodes, resolve_nodes

    budget = memory_budget_bytes(cfg)  # bad settings fail before anything is written
    resolve_workers(cfg.workers)
    check_sweep_config(cfg)
    probe = build_detector(cfg.detector, **sweep_detector_params(cfg))
    det_cls = type(probe)
    # The masks are the same for every node: label their defect regions once.
    step = effective_pixel_stride(cfg)
    truth = PixelTruth.from_masks(evaluation.masks, stride=step) if det_cls.localizes else None
    if backbone is None:
        backbone = build_backbone(cfg.backbone, weights=cfg.weights, seed=cfg.seed)
    candidates = resolve_nodes(backbone, cfg.nodes)
    stamp = sweep_stamp(cfg, train_images, evaluation, backbone, settings or {})
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_resumable(out_dir, stamp)
    infos = {i.name: i for i in list_nodes(backbone, image_size=cfg.image_size)}
    if det_cls.localizes:
        skipped = [n for n in candidates if infos[n].height == 0]
        candidates = [n for n in candidates if infos[n].height > 0]
    else:
        skipped = []
    if not candidates:
        raise StratadError("no candidate node has a spatial output for this detector")
    combinations = list(
        dict.fromkeys(c for c in [*default_candidates(cfg, backbone), *extra] if c not in candidates)
    )
    results_path = out_dir / "nodes.csv"
    done = read_results(results_path, cfg.fpr_limit)
    todo = [n for n in candidates if n not in done]
    combinations_todo = [c for c in combinations if c not in done]
    n_candidates = len(candidates) + len(combinations)
    n_images = len(train_images) + len(evaluation.images)

    def cached_bytes(node: str) -> int:
        info = infos[node]
        cache = cached_features(cfg)
        cap = cache.max_grid or max(info.height, info.width)  # 0: the node's own resolution
        grid = min(info.height, cap) * min(info.width, cap) if info.height else 1
        return n_images * info.channels * grid * cache.dtype.itemsize

    chunks = plan_chunks({n: cached_bytes(n) for n in todo}, budget)
    combination_nodes = [n for n in infos if any(n in candidate_nodes(c) for c in combinations_todo)]
    # One chunk (the usual case): the combinations' nodes ride along in its backbone pass.
    ride_along = len(chunks) == 1 and bool(combinations_todo)
    if len(chunks) > 1 or cfg.device != "cpu":
        # A memo would hold every chunk at once; on a GPU, kernels chosen per batch shape may give an
        # image other last bits in another batch, so reused features are exact on the CPU only.
        memo = None
    workers = cfg.workers
    if cfg.device != "cpu" and hasattr(probe, "train_device"):
        workers = 1  # a trained detector trains on the GPU, which a forked worker cannot use
    new_file = not results_path.exists()
    finished = n_candidates - len(todo) - len(combinations_todo)
    with open(results_path, "a", newline="") as handle:
        columns = result_columns(cfg.fpr_limit)
        missing = set(columns) - set(read_header(results_path) or columns)
        if missing:
            raise StratadError(
                f"{results_path} lacks the columns {', '.join(sorted(missing))}; use another --out folder"
            )
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="raise")
        if new_file:
            writer.writeheader()
            handle.flush()
        for index, chunk in enumerate(chunks, 1):
            part = f" (chunk {index}/{len(chunks)})" if len(chunks) > 1 else ""
            done_before = finished

            def extracting(images_done: int, part: str = part, done_before: int = done_before) -> None:
                if progress is not None:
                    label = f"features of {images_done}/{n_images} images{part}"
                    progress(label, done_before, n_candidates)

            riders = [n for n in combination_nodes if n not in chunk] if ride_along else []
            wanted = [n for n in infos if n in chunk or n in riders]  # graph order
            feats = _extract_chunk(backbone, wanted, cfg, train_images, evaluation, extracting, memo)
            context = ChunkContext(cfg, evaluation, truth, feats["train"], feats["test"])
            aliases = _identical_nodes(chunk, context.train, context.test)
            unique = [n for n in chunk if n not in aliases]
            for result in _with_aliases(_map_nodes(context, unique, workers), aliases):
                _describe(result, infos, relative_rf)
                writer.writerow({k: csv_cell(v) for k, v in result.row().items()})
                handle.flush()
                finished += 1
                if progress is not None:
                    progress(result.node, finished, n_candidates)
            if not ride_along:
                del context, feats  # the chunk's features go before the next chunk is extracted
        if combinations_todo:  # with the chunk's features, or one more pass over their nodes
            if not ride_along:
                feats = _extract_chunk(backbone, combination_nodes, cfg, train_images, evaluation, memo=memo)
                context = ChunkContext(cfg, evaluation, truth, feats["train"], feats["test"])
            for combination in combinations_todo:
                result = _describe(_score_node(context, combination), infos, None)
                writer.writerow({k: csv_cell(v) for k, v in result.row().items()})
                handle.flush()
                finished += 1
                if progress is not None:
                    progress(result.node, finished, n_candidates)
            del context, feats
    rows = read_results(results_path, cfg.fpr_limit)
    if skipped:
        (out_dir / "skipped_nodes.txt").write_text("\n".join(skipped) + "\n")
    return [rows[n] for n in [*candidates, *combinations] if n in rows]


def default_candidates(cfg: SweepConfig, backbone: Any) -> list[str]:
    """With ``cfg.with_default``: the detector's default nodes on this backbone as one candidate
    name (``blocks.2.1.add+blocks.4.2.add`` for PatchCore on EfficientNet-Lite0); else none."""
    if not cfg.with_default:
        return []
    from stratad.backbones import resolve_nodes
    from stratad.backbones.stages import stage_info
    from stratad.detectors import detector_class

    rule = detector_class(cfg.detector).default_nodes
    nodes = resolve_nodes(backbone, rule.resolve(*stage_info(backbone), backbone=cfg.backbone))
    return [COMBINATION_SEPARATOR.join(nodes)]


def _describe(result: NodeResult, infos: dict[str, Any], relative_rf: dict[str, float] | None) -> NodeResult:
    """Shape columns of a row: a node's own; a combination's summed channels, largest map, finest
    stride (and no single receptive field)."""
    parts = [infos[n] for n in candidate_nodes(result.node)]
    result.channels = sum(p.channels for p in parts)
    result.height, result.width = max(p.height for p in parts), max(p.width for p in parts)
    result.stride = min(p.stride for p in parts)
    result.relative_rf = None if relative_rf is None or len(parts) > 1 else relative_rf.get(result.node)
    return result


class FeatureMemo:
    """Per-image features of the nodes of earlier sweeps, keyed by the image's position in the full
    training and evaluation sets (``keys``: those positions for the sweep at hand). On the CPU a
    backbone pass gives an image the same features in any batch, so a reused feature equals a
    recomputed one (``run_sweep`` uses no memo on other devices)."""

    def __init__(self) -> None:
        self.keys: tuple[np.ndarray, np.ndarray] | None = None
        self.features: dict[str, dict[str, dict[int, torch.Tensor]]] = {"train": {}, "test": {}}
        #: images whose backbone pass was saved so far
        self.reused = 0

    def keep_only(self, nodes: set[str]) -> None:
        for by_node in self.features.values():
            for node in [n for n in by_node if n not in nodes]:
                del by_node[node]


def _extract_chunk(
    backbone: Any,
    chunk: list[str],
    cfg: SweepConfig,
    train_images: torch.Tensor,
    evaluation: EvalSet,
    progress: Callable[[int], None] | None = None,
    memo: FeatureMemo | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """One backbone pass per image for all nodes of the chunk; float16 features, maps capped. With a
    ``memo``, images whose features it holds for every node of the chunk skip the pass, and the
    features of the others are added to it.

    Each node's array is allocated once and filled batch by batch, so the chunk never exists twice
    in memory (a concatenation at the end would double the peak).
    """
    from stratad.backbones import NodeExtractor

    extractor = NodeExtractor(backbone, chunk, device=cfg.device, reduce=cached_features(cfg))
    feats: dict[str, dict[str, torch.Tensor]] = {}
    done = 0
    for r, (role, images) in enumerate((("train", train_images), ("test", evaluation.images))):
        filled: dict[str, torch.Tensor] = {}
        keys = None if memo is None or memo.keys is None else memo.keys[r]
        known = memo.features[role] if memo is not None else {}
        reuse = np.zeros(len(images), dtype=bool)
        if keys is not None and all(n in known for n in chunk):
            reuse = np.array([all(int(k) in known[n] for n in chunk) for k in keys], dtype=bool)
        todo = np.flatnonzero(~reuse)
        for start in range(0, len(todo), cfg.batch_size):
            rows = todo[start : start + cfg.batch_size]
            out = extractor(images[torch.from_numpy(rows)].float() / 255.0)
            first_of: dict[int, str] = {}
            for n in chunk:
                part = out[n]
                shared = first_of.setdefault(id(part), n)
                if shared != n:  # an identity node: the very tensor of an earlier node, cached once
                    filled[n] = filled[shared]
                    continue
                if n not in filled:
                    layout = torch.channels_last if part.ndim == 4 else torch.contiguous_format
                    filled[n] = torch.empty(
                        (len(images), *part.shape[1:]), dtype=part.dtype, memory_format=layout
                    )
                filled[n][torch.from_numpy(rows)] = part
            done += len(rows)
            if progress is not None:
                progress(done)
        if reuse.any():
            assert keys is not None
            for n in chunk:
                if n not in filled:  # every image of this role was known
                    sample = known[n][int(keys[0])]
                    layout = torch.channels_last if sample.ndim == 3 else torch.contiguous_format
                    filled[n] = torch.empty(
                        (len(images), *sample.shape), dtype=sample.dtype, memory_format=layout
                    )
                for i in np.flatnonzero(reuse):
                    filled[n][i] = known[n][int(keys[i])]
            done += int(reuse.sum())
            if memo is not None:
                memo.reused += int(reuse.sum())
            if progress is not None:
                progress(done)
        if keys is not None and memo is not None:
            for n in chunk:
                by_key = known.setdefault(n, {})
                for pos, key in enumerate(keys.tolist()):
                    by_key.setdefault(key, filled[n][pos])
        feats[role] = filled
    return feats


def _identical_nodes(
    chunk: list[str], train: dict[str, torch.Tensor], test: dict[str, torch.Tensor]
) -> dict[str, str]:
    """Nodes whose features equal an earlier node's (identity modules such as timm's ``aa``, ``se``
    or ``drop_path`` placeholders, an add of zeros): scored once, reported under both names."""
    aliases: dict[str, str] = {}
    seen: dict[tuple[Any, ...], list[str]] = {}
    for node in chunk:
        a = train[node]
        key = (tuple(a.shape), float(a[:1].float().sum()))
        for earlier in seen.get(key, []):
            same_objects = train[earlier] is a and test[earlier] is test[node]
            if same_objects or (torch.equal(train[earlier], a) and torch.equal(test[earlier], test[node])):
                aliases[node] = earlier
                break
        else:
            seen.setdefault(key, []).append(node)
    return aliases


def _with_aliases(results: Iterator[NodeResult], aliases: dict[str, str]) -> Iterator[NodeResult]:
    waiting: dict[str, list[str]] = {}
    for alias, source in aliases.items():
        waiting.setdefault(source, []).append(alias)
    for result in results:
        yield result
        for alias in waiting.get(result.node, []):
            yield replace(result, node=alias, same_as=result.node, fit_s=0.0, score_s=0.0)


def resolve_workers(workers: int) -> int:
    if workers < 0:
        raise StratadError(f"workers must be >= 0 (0 = one per CPU core), got {workers}")
    return workers or max(1, min(4, os.cpu_count() or 1))


def _score_in_worker(node: str) -> NodeResult:
    return _score_node(_WORKER_CONTEXT[0], node)


def _map_nodes(context: ChunkContext, chunk: list[str], workers: int) -> Any:
    workers = resolve_workers(workers)
    if workers <= 1 or len(chunk) == 1 or "fork" not in mp.get_all_start_methods():
        return (_score_node(context, node) for node in chunk)
    ctx = mp.get_context("fork")
    pool = ctx.Pool(min(workers, len(chunk)), initializer=_worker_init, initargs=(context,))

    def results() -> Any:
        try:
            yield from pool.imap(_score_in_worker, chunk)
        finally:
            pool.terminate()
            pool.join()

    return results()


def csv_cell(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def check_sweep_config(cfg: SweepConfig) -> None:
    """Settings no sweep can use, refused before any work."""
    from stratad.data.io import check_bit_depth

    if cfg.image_size < 32:
        raise StratadError(f"image size must be at least 32 pixels, got {cfg.image_size}")
    if cfg.batch_size < 1:
        raise StratadError(f"batch size must be at least 1, got {cfg.batch_size}")
    if cfg.max_grid < 0:
        raise StratadError(
            f"--max-grid must be at least 0 (0 = every node at its own resolution), got {cfg.max_grid}"
        )
    if not cfg.nodes or any(not n.strip() for n in cfg.nodes):
        raise StratadError("no nodes given: pass 'all', a comma list or glob patterns")
    if cfg.pairs < 0 or cfg.pairs == 1:
        raise StratadError(f"--pairs must be 0 (no pairs) or at least 2, got {cfg.pairs}")
    if not 0.0 < cfg.fpr_limit <= 1.0:
        raise StratadError(f"the AU-PRO FPR limit must lie in (0, 1], got {cfg.fpr_limit}")
    check_bit_depth(cfg.bit_depth)
    effective_pixel_stride(cfg)


def _digest_arrays(arrays: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        arr = np.ascontiguousarray(a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a))
        digest.update(f"{arr.dtype}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def sweep_stamp(
    cfg: SweepConfig, train_images: torch.Tensor, evaluation: EvalSet, backbone: Any, settings: dict[str, Any]
) -> dict[str, Any]:
    """Everything a row of ``nodes.csv`` depends on. Run-time knobs (workers, batch size, device,
    memory budget) and the extra default candidate are left out: they change the speed or add a row,
    never a row."""
    from stratad.export.io import tensors_digest

    detector = build_detector(cfg.detector, **sweep_detector_params(cfg))
    stamp = {
        **asdict(cfg),
        "workers": None,
        "batch_size": None,
        "device": None,
        "memory_budget_mb": None,
        # Extra candidates only add rows; a row of a node does not depend on them.
        "with_default": None,
        "pairs": None,
        "pixel_stride": effective_pixel_stride(cfg),
        # --exact ignores --max-grid: every node at its own resolution (0), in float32
        "max_grid": cached_features(cfg).max_grid,
        "fit_params": sweep_detector_params(cfg),
        # the detector's every option, defaults included (a changed default changes rows), and the
        # device a trained detector trains on
        "detector_config": asdict(detector.config),
        "train_device": cfg.device if hasattr(detector, "train_device") else None,
        "weights_sha256": tensors_digest(backbone.model.state_dict()),
        "n_train": len(train_images),
        "n_eval": len(evaluation.images),
        "data_sha256": _digest_arrays(
            [train_images, evaluation.images, evaluation.labels, *evaluation.masks]
            + ([] if evaluation.pixel_images is None else [evaluation.pixel_images])
        ),
        **settings,
    }
    return json.loads(json.dumps(stamp, default=str))


#: Stamp keys that never change a row (folders stamped with any value of them resume).
_ROW_NEUTRAL = {"with_default", "pairs"}

_STAMP_NAMES = {
    "data_sha256": "the data (images, labels or masks)",
    "weights_sha256": "the backbone weights",
    "fit_params": "the detector options",
    "detector_config": "the detector options (defaults included)",
    "detector_params": "the detector options",
}


def read_stamp(path: Path) -> dict[str, Any] | None:
    """The JSON object a folder was stamped with (None when there is none); a damaged stamp is an error."""
    if not path.is_file():
        return None
    try:
        previous = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        previous = None
    if not isinstance(previous, dict):
        raise StratadError(f"{path} is damaged; use another --out folder or delete it")
    return previous


def _check_resumable(out_dir: Path, stamp: dict[str, Any]) -> None:
    """A sweep folder belongs to one configuration; resuming with other settings would mix results."""
    path = out_dir / "sweep.json"
    previous = read_stamp(path)
    if previous is not None:
        keys = sorted(set(stamp) | set(previous), key=lambda k: (k in _STAMP_NAMES, k))  # digests last
        differ = [k for k in keys if k not in _ROW_NEUTRAL and stamp.get(k) != previous.get(k)]
        if differ:
            named = []
            for key in differ:
                if key in _STAMP_NAMES:
                    named.append(_STAMP_NAMES[key])
                else:
                    named.append(f"{key} ({previous.get(key)!r} there, {stamp.get(key)!r} now)")
            raise StratadError(
                f"{out_dir} holds a run with other settings: {'; '.join(dict.fromkeys(named))}; "
                "use another --out folder or delete it"
            )
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(stamp, indent=2))
    os.replace(tmp, path)
