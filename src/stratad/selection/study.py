"""The extractor study's grid (Heckler et al.): categories x backbones x image sizes x nodes, one
detector, every node evaluated on each category's REAL test split, in one table ``study.csv`` that
``stratad analyze`` reads.

The grid is cut into tasks: one (category, backbone, size) and one chunk of its nodes each. A task
loads its category, runs one backbone pass over the chunk's nodes and scores them: an ordinary
resumable sweep in ``<out>/<category>/<backbone>/<size>/chunk<k>`` (``nodes.csv`` + stamp). Tasks run
in local worker processes, or as Ray tasks (``ray`` address, or ``"local"`` for a Ray instance on this
machine) that declare the CPUs and memory they need, so a cluster places them where they fit. Every
task runs with one thread either way, so both give the same numbers. The driver collects results as
they finish and rewrites ``study.csv`` in grid order after each, atomically; a killed driver (or
task) started again finds every finished node in the task folders and computes only the rest.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from stratad.errors import StratadError
from stratad.selection.config import SweepConfig, result_columns

#: What a study table holds beside a sweep row's columns (timings left out: they differ run to run).
STUDY_KEYS = ("category", "backbone", "image_size", "chunk")
TIMING_COLUMNS = ("fit_s", "score_s")
STUDY_FILE = "study.csv"


@dataclass(frozen=True)
class StudyTask:
    """One (category, backbone, image size) and one chunk of its nodes."""

    category: str
    backbone: str
    image_size: int
    chunk: int
    nodes: tuple[str, ...]
    #: what the task declares to Ray (:func:`task_memory_bytes`)
    memory_bytes: int = 0

    def folder(self, out: Path) -> Path:
        return out / self.category / self.backbone / str(self.image_size) / f"chunk{self.chunk}"


@dataclass
class StudyConfig:
    """The grid and how each cell is swept."""

    root: Path
    categories: list[str] = field(default_factory=list)  # empty: every category under root
    backbones: list[str] = field(default_factory=lambda: ["efficientnet_lite0"])
    sizes: list[int] = field(default_factory=lambda: [256])
    #: node names, globs, ``all``, ``stages`` (each backbone's stage ends) or ``rf4`` (4 nodes evenly
    #: spaced in relative receptive field, the study's sampling), also mixed
    nodes: list[str] = field(default_factory=lambda: ["stages"])
    #: nodes per task (a task costs one backbone pass; smaller chunks spread wider)
    chunk_nodes: int = 16
    sweep: SweepConfig = field(default_factory=SweepConfig)
    rf: bool = True

    def stamp(self) -> dict[str, Any]:
        return json.loads(json.dumps({**asdict(self), "root": str(self.root)}, default=str))


def study_categories(root: Path, wanted: Sequence[str]) -> list[str]:
    """The MVTec-layout categories under ``root`` (folders with ``train/``), or ``wanted`` checked."""
    if not root.is_dir():
        raise StratadError(f"study root {root} is not a folder")
    found = sorted(p.name for p in root.iterdir() if (p / "train").is_dir())
    if not found:
        raise StratadError(f"{root} holds no MVTec-layout category (a folder with train/good and test/)")
    missing = [c for c in wanted if c not in found]
    if missing:
        raise StratadError(f"no category {', '.join(missing)} in {root}; available: {', '.join(found)}")
    return list(wanted) or found


def plan_study(cfg: StudyConfig) -> list[StudyTask]:
    """Every task of the grid, in grid order (categories, backbones, sizes, chunks)."""
    from stratad.backbones import build_backbone, list_nodes, resolve_nodes

    if cfg.chunk_nodes < 1:
        raise StratadError(f"--chunk-nodes must be at least 1, got {cfg.chunk_nodes}")
    if not cfg.sizes or any(s < 32 for s in cfg.sizes):
        raise StratadError(f"image sizes must be at least 32 pixels, got {cfg.sizes}")
    from stratad.data.datasets import DataSource
    from stratad.selection.sweep import cached_features

    categories = study_categories(cfg.root, cfg.categories)
    n_images = {}
    for category in categories:
        split = DataSource(root=cfg.root, category=category).load()
        n_images[category] = len(split.train) + len(split.test)
    cache = cached_features(cfg.sweep)
    tasks = []
    for backbone_name in cfg.backbones:
        backbone = build_backbone(backbone_name, weights=cfg.sweep.weights, seed=cfg.sweep.seed)
        requested = [
            m for n in cfg.nodes if n != RF_SAMPLE for m in (backbone.stages if n == "stages" else [n])
        ]
        nodes = resolve_nodes(backbone, requested) if requested else []
        for size in cfg.sizes:
            infos = {i.name: i for i in list_nodes(backbone, image_size=size) if i.height > 0}
            sampled = rf_sample(backbone, size, list(infos)) if RF_SAMPLE in cfg.nodes else []
            chosen = [n for n in infos if n in nodes or n in sampled]  # graph order, this size's own
            chunks = [chosen[i : i + cfg.chunk_nodes] for i in range(0, len(chosen), cfg.chunk_nodes)]
            for category in categories:
                for k, chunk in enumerate(chunks):
                    per_image = sum(
                        infos[n].channels
                        * min(infos[n].height, cache.max_grid or infos[n].height)
                        * min(infos[n].width, cache.max_grid or infos[n].width)
                        * cache.dtype.itemsize
                        for n in chunk
                    )
                    memory = task_memory_bytes(per_image * n_images[category])
                    tasks.append(StudyTask(category, backbone_name, size, k, tuple(chunk), memory))
    order = {c: i for i, c in enumerate(categories)}
    return sorted(
        tasks, key=lambda t: (order[t.category], cfg.backbones.index(t.backbone), t.image_size, t.chunk)
    )


#: ``--nodes rf4``: 4 nodes evenly spaced in relative receptive field (the study's layer sampling)
RF_SAMPLE = "rf4"


def rf_sample(backbone: Any, image_size: int, nodes: list[str]) -> list[str]:
    """4 of ``nodes`` evenly spaced in relative receptive field at ``image_size`` (cached per weights)."""
    from stratad.backbones import relative_receptive_field
    from stratad.backbones.receptive import default_cache_dir
    from stratad.selection.oracle import rf_sampler

    rf = relative_receptive_field(
        backbone, nodes, image_size=image_size, cache_dir=default_cache_dir() / "receptive_fields"
    )
    return rf_sampler({n: rf[n] for n in nodes if n in rf}, 4)


def task_memory_bytes(feature_bytes: int) -> int:
    """What a task declares to Ray: 1.5 GB for Python, torch, the backbone, the decoded images and one
    detector (measured: ~1.2 GB for a Lite0 sweep of MTD), plus twice its cached features (the
    cache and one node's float32 copy while it is fitted)."""
    return int(1.5 * 2**30 + 2 * feature_bytes)


def run_task(task: StudyTask, cfg: StudyConfig, out: Path) -> list[dict[str, Any]]:
    """Sweep one task's nodes on its category's real test split (one thread); its rows, tagged."""
    from stratad.data.datasets import DataSource
    from stratad.selection.select import real_test_set
    from stratad.selection.sweep import one_thread, run_sweep

    one_thread()  # in a local process as in a Ray worker: the same kernels, the same numbers
    split = DataSource(root=cfg.root, category=task.category).load()
    sweep = replace(
        cfg.sweep,
        backbone=task.backbone,
        image_size=task.image_size,
        nodes=list(task.nodes),
        label=task.category,
        workers=1,
        with_default=False,
    )
    if sweep.bit_depth is None:
        from stratad.data.io import detect_bit_depth

        sweep.bit_depth = detect_bit_depth(r.path for r in split.train)
    relative_rf = None
    if cfg.rf:
        from stratad.backbones import build_backbone, relative_receptive_field
        from stratad.backbones.receptive import default_cache_dir

        relative_rf = relative_receptive_field(
            build_backbone(task.backbone, weights=sweep.weights, seed=sweep.seed),
            list(task.nodes),
            image_size=task.image_size,
            cache_dir=default_cache_dir() / "receptive_fields",
        )
    train_images, evaluation, _ = real_test_set(split.train, split.test, sweep, "exclude")
    rows = run_sweep(sweep, train_images, evaluation, task.folder(out), relative_rf=relative_rf)
    return [
        {
            "category": task.category,
            "backbone": task.backbone,
            "image_size": task.image_size,
            "chunk": task.chunk,
            **r.row(),
        }
        for r in rows
    ]


def study_columns(fpr_limit: float) -> list[str]:
    return [*STUDY_KEYS, *(c for c in result_columns(fpr_limit) if c not in TIMING_COLUMNS)]


def write_study_table(path: Path, rows: Sequence[dict[str, Any]], fpr_limit: float) -> None:
    """``study.csv``: one row per (category, backbone, size, node), in grid order, atomically."""
    from stratad.export.io import atomic_write
    from stratad.selection.sweep import csv_cell

    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=study_columns(fpr_limit), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_cell(v) for k, v in row.items()})
    text = buffer.getvalue()
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _check_study_folder(out: Path, cfg: StudyConfig) -> None:
    """A study folder belongs to one grid: the same settings resume it, others are refused."""
    from stratad.selection.sweep import read_stamp

    path = out / "study.json"
    stamp = cfg.stamp()
    previous = read_stamp(path)
    if previous is not None:
        differ = sorted(k for k in set(stamp) | set(previous) if stamp.get(k) != previous.get(k))
        if differ:
            raise StratadError(
                f"{out} holds a study with other settings ({', '.join(differ)}); use another --out folder"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    from stratad.export.io import atomic_write

    text = json.dumps(stamp, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def run_study(
    cfg: StudyConfig,
    out: str | Path,
    ray_address: str | None = None,
    workers: int = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every task of the grid (module docstring) and write ``<out>/study.csv``; its rows.

    ``ray_address``: None for local processes (``workers``, 0 = one per core), ``"local"`` for a Ray
    instance started on this machine, or the address of a running cluster (``ray start --head``).
    """
    from stratad.selection.sweep import check_sweep_config, resolve_workers

    out = Path(out)
    check_sweep_config(replace(cfg.sweep, nodes=["all"]))
    resolve_workers(workers)
    tasks = plan_study(cfg)
    if not tasks:
        raise StratadError("the study grid is empty: no node with a spatial output was requested")
    _check_study_folder(out, cfg)
    results: dict[int, list[dict[str, Any]]] = {}

    def finished(index: int, rows: list[dict[str, Any]]) -> None:
        results[index] = rows
        done = [row for i in sorted(results) for row in results[i]]
        write_study_table(out / STUDY_FILE, done, cfg.sweep.fpr_limit)
        if progress is not None:
            t = tasks[index]
            progress(f"{t.category} {t.backbone}@{t.image_size} chunk {t.chunk}", len(results), len(tasks))

    if ray_address is None:
        _run_in_processes(tasks, cfg, out, workers, finished)
    else:
        _run_on_ray(tasks, cfg, out, ray_address, finished)
    return [row for i in range(len(tasks)) for row in results[i]]


def _run_in_processes(
    tasks: list[StudyTask], cfg: StudyConfig, out: Path, workers: int, finished: Callable[..., None]
) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from stratad.selection.sweep import resolve_workers

    # Fresh interpreters, as Ray's workers are: nothing inherited from the driver changes a result.
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(resolve_workers(workers), mp_context=context)
    try:
        futures = {pool.submit(run_task, task, cfg, out): i for i, task in enumerate(tasks)}
        for future in as_completed(futures):
            index = futures[future]
            try:
                rows = future.result()
            except Exception as exc:
                raise _task_failed(tasks[index], exc) from None
            finished(index, rows)
    finally:  # on a failure (or Ctrl-C) the queued tasks are dropped, not run first
        pool.shutdown(wait=False, cancel_futures=True)


def _run_on_ray(
    tasks: list[StudyTask], cfg: StudyConfig, out: Path, address: str, finished: Callable[..., None]
) -> None:
    try:
        import ray
    except ImportError:
        raise StratadError("--ray needs the ray package: pip install 'ray>=2.9'") from None
    started_here = not ray.is_initialized()
    if started_here:
        if address == "local":
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        largest = max(task.memory_bytes for task in tasks)
        per_node = [n.get("Resources", {}).get("memory", 0) for n in ray.nodes() if n.get("Alive")]
        if per_node and largest > max(per_node):  # Ray would wait for such a machine forever
            raise StratadError(
                f"a study task needs {largest / 2**30:.1f} GB and the largest Ray machine offers "
                f"{max(per_node) / 2**30:.1f} GB; use a smaller --chunk-nodes or --max-grid"
            )
        remote = ray.remote(run_task)
        pending = {
            remote.options(num_cpus=1, memory=task.memory_bytes).remote(task, cfg, out): i
            for i, task in enumerate(tasks)
        }
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                index = pending.pop(ref)
                try:
                    rows = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # the task's own exception, with Ray's trace
                    raise _task_failed(tasks[index], exc.cause or exc) from None
                except ray.exceptions.RayError as exc:  # a crashed worker, out of memory, a lost object
                    raise _task_failed(tasks[index], exc) from None
                finished(index, rows)
    finally:
        if started_here:
            ray.shutdown()


def _task_failed(task: StudyTask, exc: BaseException) -> StratadError:
    """One line naming the task and its error (a worker's traceback stays in the worker)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    kind = "" if isinstance(exc, StratadError) else f"{type(exc).__name__}: "
    where = f"{task.category} {task.backbone}@{task.image_size} chunk {task.chunk}"
    return StratadError(f"study task {where} failed: {kind}{text}")


def read_study_rows(path: Path, metric: str = "p_h") -> list[dict[str, Any]]:
    """The rows of a ``study.csv`` as ``analyze`` uses them (category, backbone, image_size tagged)."""
    with open(path, newline="") as handle:
        rows = [
            {**r, "image_size": int(r["image_size"])}
            for r in csv.DictReader(handle)
            if r.get(metric) not in (None, "") and not math.isnan(float(r[metric])) and not r.get("same_as")
        ]
    return rows
