"""The HTML report: one self-contained page a person reads in a browser without any network.

``stratad report`` (and ``evaluate --report``) write :func:`render_model_report`: the metric table,
the score histogram (good vs defective, threshold marked), the image ROC and the PRO curve as inline
PNGs, and one panel per test image (input | ground truth | heatmap overlay | predicted mask), worst
first. Panel images are small files in ``panels/`` next to the page, loaded lazily, and a few lines
of plain JavaScript show one page of panels at a time, so a test set of thousands of images opens as
fast as one of ten. ``stratad select`` / ``sweep`` folders get :func:`render_sweep_report`: the
sortable table of nodes and performance against relative receptive field.

Nothing is fetched from anywhere: styles and scripts are inline, plots are ``data:`` URIs, panels are
relative paths. Templates are Jinja2 with autoescaping; data handed to scripts goes through
``tojson`` (which escapes ``<``, ``>``, ``&``) and is put into the page with ``textContent`` only, so
a file name such as ``<img onerror=...>.png`` is shown as text, never run.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stratad.errors import StratadError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from stratad.data.datasets import ImageRecord
    from stratad.pipeline import Prediction

#: Long side of the images of a panel, in pixels: a 4 x 384 px row fills a wide screen, and a
#: 1024 px MVTec image shrinks to a ~20 kB JPEG instead of ~200 kB, which keeps paging fast.
PANEL_LONG_SIDE = 384
#: The PRO curve is drawn up to this false-positive rate, the limit of AU-PRO in the table.
PRO_FPR_LIMIT = 0.3
#: Above this many pixels (all test images at their own size) the PRO curve is drawn from the maps
#: at the network size and the masks resized to it: the same curve within a pixel's rounding, at a
#: fraction of the memory (the sort behind it holds every pixel score).
PRO_MAX_PIXELS = 20_000_000
#: Points of a drawn curve beyond which it is resampled (matplotlib gets slow, the PNG does not gain).
_MAX_CURVE_POINTS = 4000
#: Panel files written by this module (and their temporaries); only these are ever removed.
_PANEL_FILE = re.compile(r"^\d{5,}_(input|truth|overlay|mask)\.(jpg|png)$")
_PANEL_TEMP = re.compile(r"^\.\d{5,}_(input|truth|overlay|mask)\.(jpg|png)\.\d+\.tmp$")
_CELLS = ("input", "truth", "overlay", "mask")


def display_text(path: str | Path) -> str:
    """A path as text for the page: bytes that are not UTF-8 in a file name become ``\\xe9`` escapes
    instead of failing the UTF-8 page."""
    return os.fsencode(os.fspath(path)).decode("utf-8", errors="backslashreplace")


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool | str):
        return str(value)
    return format(float(value), spec)


def check_page_size(page_size: int) -> int:
    """``--page-size``: panels on one page of the report, at least 1."""
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise StratadError(f"--page-size must be a whole number of at least 1, got {page_size!r}")
    return page_size


# -- plots ---------------------------------------------------------------------------------------------
def _png_data_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure() -> tuple[Figure, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.8, 2.9), layout="constrained")
    return fig, fig.subplots()


def score_histogram(labels: np.ndarray, scores: np.ndarray, threshold: float | None) -> str:
    """PNG ``data:`` URI: histograms of the good and the defective images' scores on shared bins, the
    image threshold as a vertical line when the model is calibrated."""
    fig, ax = _figure()
    finite = scores[np.isfinite(scores)]
    values = np.append(finite, threshold) if threshold is not None else finite
    bins = np.histogram_bin_edges(values, bins=int(np.clip(len(finite) // 4, 10, 40)))
    for label, name, colour in ((0, "good", "#2a9d4b"), (1, "defective", "#d03030")):
        part = scores[(labels == label) & np.isfinite(scores)]
        if part.size:
            ax.hist(part, bins=bins, alpha=0.6, color=colour, label=f"{name} ({part.size})")
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label="threshold")
    ax.set_xlabel("image score")
    ax.set_ylabel("images")
    ax.set_title("score histogram")
    ax.legend(fontsize=8)
    return _png_data_uri(fig)


def roc_plot(
    labels: np.ndarray, scores: np.ndarray, auroc: float | None, point: tuple[float, float] | None
) -> str:
    """PNG ``data:`` URI: the image-level ROC curve (sklearn's, tie-grouped), the observed (FPR, TPR)
    at the image threshold marked."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = _figure()
    label = "ROC" if auroc is None else f"ROC (AUROC {auroc:.4f})"
    ax.plot(fpr, tpr, color="#1f5fbf", linewidth=1.5, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":")
    if point is not None:
        ax.plot([point[0]], [point[1]], "o", color="black", markersize=6, label="at the threshold")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false-positive rate (good images)")
    ax.set_ylabel("true-positive rate (defective images)")
    ax.set_title("image ROC")
    ax.legend(fontsize=8, loc="lower right")
    return _png_data_uri(fig)


def pro_points(
    records: Sequence[ImageRecord], prediction: Prediction, keep: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """The PRO curve's breakpoints (FPR, PRO) over the records in ``keep`` (those with ground
    truth), with the official semantics of :mod:`stratad.metrics.pixel`; and the network size the
    curve was computed at when the images hold more than :data:`PRO_MAX_PIXELS` pixels (else None)."""
    from stratad.data.datasets import record_mask
    from stratad.metrics.pixel import pro_curve_breakpoints, truth_and_maps

    assert prediction.maps is not None
    total = sum(prediction.original_sizes[i][0] * prediction.original_sizes[i][1] for i in keep)
    if total <= PRO_MAX_PIXELS:
        size = None
        masks = [record_mask(records[i], prediction.original_sizes[i]) for i in keep]
        maps = [prediction.map_at_original_size(i) for i in keep]
    else:
        size = int(prediction.maps.shape[-1])
        masks = [record_mask(records[i], prediction.original_sizes[i], size=size) for i in keep]
        maps = [prediction.maps[i] for i in keep]
    truth, checked = truth_and_maps(masks, maps)
    fprs, pros = pro_curve_breakpoints(truth, checked)
    return fprs, pros, size


def pro_plot(
    fprs: np.ndarray, pros: np.ndarray, aupro: float | None, pixel_fpr: float | None, note: str = ""
) -> str:
    """PNG ``data:`` URI: the PRO curve up to :data:`PRO_FPR_LIMIT` (interpolated at the limit, as
    AU-PRO integrates it), the observed pixel FPR at the pixel threshold as a vertical line."""
    limit = PRO_FPR_LIMIT
    inside = fprs <= limit
    x, y = fprs[inside], pros[inside]
    if x[-1] < limit:
        after = int(np.searchsorted(fprs, limit, side="right"))
        x0, x1, y0, y1 = fprs[after - 1], fprs[after], pros[after - 1], pros[after]
        x, y = np.append(x, limit), np.append(y, y0 + (y1 - y0) * (limit - x0) / (x1 - x0))
    if x.size > _MAX_CURVE_POINTS:  # keep the shape: sample the steps evenly in FPR
        keep = np.unique(np.searchsorted(x, np.linspace(0, limit, _MAX_CURVE_POINTS), side="right") - 1)
        x, y = x[keep], y[keep]
    fig, ax = _figure()
    label = "PRO" if aupro is None else f"PRO (AU-PRO {aupro:.4f})"
    ax.plot(x, y, color="#7a3db8", linewidth=1.5, label=label)
    if pixel_fpr is not None and pixel_fpr <= limit:
        ax.axvline(pixel_fpr, color="black", linestyle="--", linewidth=1.2, label="pixel threshold")
    ax.set_xlim(0, limit)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false-positive rate (defect-free pixels)")
    ax.set_ylabel("per-region overlap")
    ax.set_title("PRO curve" + (f" {note}" if note else ""))
    ax.legend(fontsize=8, loc="lower right")
    return _png_data_uri(fig)


# -- panels --------------------------------------------------------------------------------------------
def _panel_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, PANEL_LONG_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _shrink(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Area-averaged downscale (no aliasing on fine texture); unchanged at the same size."""
    import cv2

    if image.shape[:2] == hw:
        return image
    return cv2.resize(image, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)


def _mask_image(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A bool mask as a white-on-black uint8 image at the panel size; a panel pixel is white when any
    image pixel under it is, so a one-pixel scratch stays visible after shrinking."""
    return np.where(_shrink(mask.astype(np.uint8) * 255, hw) > 0, 255, 0).astype(np.uint8)


def _write(path: Path, data: bytes) -> None:
    from stratad.export.io import atomic_write

    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def _write_panel_file(path: Path, data: bytes) -> None:
    """Write then rename, as :func:`stratad.export.io.atomic_write` does, without its scan of the
    folder for stale temporary files at every write: with thousands of panels that scan made writing
    them quadratic (8000 files: 17 s). Stale temporaries are removed once per report instead
    (:func:`_remove_stale_panels`)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _draw_panel(
    rank: int,
    record: ImageRecord,
    score: float,
    small_map: np.ndarray | None,
    calibration: Any,
    bit_depth: int | None,
    scale: tuple[float, float],
    folder: Path,
) -> dict[str, Any]:
    """Write the four images of one panel into ``folder`` and return what the page shows of it."""
    from stratad.data.datasets import record_mask
    from stratad.data.io import read_image_rgb
    from stratad.decisions import decide
    from stratad.pipeline import resize_map
    from stratad.report.overlay import encode_image, heatmap_overlay

    rgb = read_image_rgb(record.path, bit_depth)
    height, width = rgb.shape[:2]
    decision = decide(calibration, score, small_map, (height, width))
    hw = _panel_size(height, width)
    small_rgb = _shrink(rgb, hw)
    del rgb
    cells: dict[str, dict[str, str | None]] = {}

    def put(cell: str, image: np.ndarray, fmt: str) -> None:
        name = f"{rank:05d}_{cell}.{fmt}"
        _write_panel_file(folder / name, encode_image(image, fmt))
        cells[cell] = {"src": f"{folder.name}/{name}", "note": None}

    put("input", small_rgb, "jpg")
    if record.label and record.mask_path is None:
        cells["truth"] = {"src": None, "note": "no mask"}
    else:
        put("truth", _mask_image(record_mask(record, (height, width)), hw), "png")
    if small_map is None:
        cells["overlay"] = {"src": None, "note": "no map (image scores only)"}
    else:
        put("overlay", heatmap_overlay(small_rgb, resize_map(small_map, hw), *scale), "jpg")
    if decision.mask is not None:
        put("mask", _mask_image(decision.mask, hw), "png")
    elif calibration is None:
        cells["mask"] = {"src": None, "note": "no thresholds (fit --calibrate)"}
    elif small_map is None:
        cells["mask"] = {"src": None, "note": "no map (image scores only)"}
    else:
        cells["mask"] = {"src": None, "note": "no pixel threshold"}
    verdict = None if decision.defective is None else ("defective" if decision.defective else "good")
    path = Path(record.path)
    return {
        "rank": rank + 1,
        "name": display_text(Path(path.parent.name) / path.name),
        "path": display_text(path),
        "label": "defective" if record.label else "good",
        "defect_type": record.defect_type,
        "score": _fmt(decision.score, ".5g"),
        "normalized": None if decision.normalized is None else _fmt(decision.normalized, ".3f"),
        "decision": verdict,
        "correct": None if decision.defective is None else bool(decision.defective) == bool(record.label),
        "area": None if decision.defect_area is None else _fmt(100.0 * decision.defect_area, ".2f") + " %",
        "height": hw[0],
        "width": hw[1],
        "cells": [cells[c] for c in _CELLS],
    }


def _remove_stale_panels(folder: Path, written: set[str]) -> None:
    """Panel files of an earlier report in the same folder (more images then) that this one does not
    use, and temporaries of a killed run; any other file is left alone."""
    for path in folder.iterdir():
        stale = _PANEL_FILE.match(path.name) and path.name not in written
        if stale or _PANEL_TEMP.match(path.name):
            path.unlink(missing_ok=True)


# -- metric table --------------------------------------------------------------------------------------
def _rate(side: dict[str, Any] | None, key: str, count: str) -> str:
    if not side or side.get(key) is None:
        return "–"
    return f"{side[key]:.4f} (of {side[count]})"


def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The metric table: (name, value) rows of what ``evaluate`` computed, the observed rates at the
    stored thresholds included."""
    aupro_keys = sorted(k for k in metrics if k.startswith("aupro_"))
    rows = [("image AUROC", _fmt(metrics.get("image_auroc"))), ("image F1-max", _fmt(metrics.get("f1_max")))]
    if "pixel_auroc" in metrics:
        rows.append(("pixel AUROC", _fmt(metrics["pixel_auroc"])))
        for key in aupro_keys:
            limit = key.removeprefix("aupro_").replace("p", ".")
            rows.append((f"AU-PRO (FPR ≤ {float(limit) / 100:g})", _fmt(metrics[key])))
        rows.append(("P_h (image AUROC, AU-PRO)", _fmt(metrics.get("p_h"))))
        rows.append(("pixel F1-max", _fmt(metrics.get("pixel_f1_max"))))
    at = metrics.get("at_threshold")
    if at:
        rows.append(("image threshold", _fmt(at.get("image_threshold"), ".6g")))
        rows.append(("  FPR at it (good images)", _rate(at.get("image"), "fpr", "n_good")))
        rows.append(("  TPR at it (defective images)", _rate(at.get("image"), "tpr", "n_defective")))
        if at.get("pixel_threshold") is not None:
            rows.append(("pixel threshold", _fmt(at["pixel_threshold"], ".6g")))
            rows.append(("  FPR at it (defect-free pixels)", _rate(at.get("pixel"), "fpr", "n_good")))
            rows.append(("  TPR at it (defect pixels)", _rate(at.get("pixel"), "tpr", "n_defective")))
            masks = (at.get("pixel") or {}).get("masks")
            if masks:  # the panels' masks: pixels over the threshold in images judged defective only
                counts = {**masks, "n_good": at["pixel"]["n_good"], "n_defective": at["pixel"]["n_defective"]}
                rows.append(("  FPR of the drawn masks", _rate(counts, "fpr", "n_good")))
                rows.append(("  TPR of the drawn masks", _rate(counts, "tpr", "n_defective")))
    if "n_test_images" in metrics:
        rows.append(
            ("test images", f"{metrics['n_test_images']} ({metrics.get('n_defective', '?')} defective)")
        )
    if metrics.get("n_excluded_from_pixel_metrics"):
        rows.append(("left out of pixel metrics (no mask)", str(metrics["n_excluded_from_pixel_metrics"])))
    return rows


def _model_rows(pipeline: Any, metrics: dict[str, Any]) -> list[tuple[str, str]]:
    info = pipeline.describe() if hasattr(pipeline, "describe") else metrics
    rows = [
        ("dataset", str(metrics["dataset"])) if "dataset" in metrics else None,
        ("backbone", str(info.get("backbone"))) if info.get("backbone") else None,
        ("nodes", ", ".join(info.get("nodes") or [])) if info.get("nodes") else None,
        ("detector", str(info.get("detector"))) if info.get("detector") else None,
        ("input size", f"{info['image_size']} px") if info.get("image_size") else None,
    ]
    calibration = getattr(pipeline, "calibration_", None)
    rows.append(
        ("thresholds", calibration.describe() if calibration is not None else "none (fit --calibrate)")
    )
    return [r for r in rows if r is not None]


# -- rendering -----------------------------------------------------------------------------------------
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.DictLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _write_page(path: Path, template: str, **context: Any) -> Path:
    text = _environment().get_template(template).render(**context)
    # a file name that is not UTF-8 (a surrogate escape) shows as \udce9 instead of failing the page
    _write(path, text.encode("utf-8", errors="backslashreplace"))
    return path


def render_model_report(
    pipeline: Any,
    records: Sequence[ImageRecord],
    prediction: Prediction,
    metrics: dict[str, Any],
    out: str | Path,
    *,
    title: str,
    page_size: int = 48,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write ``out/index.html`` and its panel images ``out/panels/`` for a scored test set (``records``
    in the order of ``prediction``, ``metrics`` from :func:`stratad.evaluation.evaluate_pipeline`);
    return the page's path. Panels are sorted by image score, highest (worst) first, ``page_size`` to
    a page; every overlay shares one colour scale (the smallest and largest map value of the run), so
    colours compare across images. ``progress(1)`` after each panel. The page is written last, so a
    killed run never leaves a page pointing at missing panels."""
    from concurrent.futures import ThreadPoolExecutor

    from stratad.data.datasets import pixel_records
    from stratad.export.io import check_output_folder
    from stratad.metrics import aupro_key

    check_page_size(page_size)
    if len(records) != len(prediction.paths) or len(records) == 0:
        raise StratadError(
            f"the report needs one prediction per image: {len(records)} images, "
            f"{len(prediction.paths)} predictions"
        )
    out = check_output_folder(out)
    folder = out / "panels"
    folder.mkdir(exist_ok=True)
    calibration = getattr(pipeline, "calibration_", None)
    bit_depth = getattr(getattr(pipeline, "config", None), "bit_depth", None)
    scores = np.asarray(prediction.image_scores, dtype=np.float64)
    labels = np.array([r.label for r in records], dtype=np.int64)
    # Worst first; NaN scores (should not happen) last; equal scores by path, so the order is stable.
    order = sorted(
        range(len(records)), key=lambda i: (-np.nan_to_num(scores[i], nan=-np.inf), str(records[i].path))
    )
    maps = prediction.maps
    scale = (float(maps.min()), float(maps.max())) if maps is not None else (0.0, 1.0)

    def draw(rank: int) -> dict[str, Any]:
        i = order[rank]
        small = None if maps is None else maps[i]
        return _draw_panel(rank, records[i], float(scores[i]), small, calibration, bit_depth, scale, folder)

    panels: list[dict[str, Any]] = []
    with ThreadPoolExecutor(2) as pool:  # decoding, resizing and encoding (OpenCV) release the GIL
        for panel in pool.map(draw, range(len(order))):
            panels.append(panel)
            if progress is not None:
                progress(1)

    at = metrics.get("at_threshold") or {}
    threshold = calibration.image_threshold if calibration is not None else None
    plots: list[dict[str, str]] = [
        {
            "src": score_histogram(labels, scores, threshold),
            "alt": "score histogram",
            "caption": "Image scores of good and defective test images"
            + ("; dashed: the image threshold." if threshold is not None else "."),
        }
    ]
    if labels.min() != labels.max():
        image_at = at.get("image") or {}
        point = (
            (image_at["fpr"], image_at["tpr"])
            if image_at.get("fpr") is not None and image_at.get("tpr") is not None
            else None
        )
        plots.append(
            {
                "src": roc_plot(labels, scores, metrics.get("image_auroc"), point),
                "alt": "image ROC curve",
                "caption": "Image-level ROC" + ("; dot: the image threshold." if point else "."),
            }
        )
    keep = pixel_records(list(records), "exclude")[0] if maps is not None else []
    if keep and labels[keep].max() == 1:
        fprs, pros, size = pro_points(records, prediction, keep)
        aupro = metrics.get(aupro_key(PRO_FPR_LIMIT))
        pixel_fpr = (at.get("pixel") or {}).get("fpr")
        note = f"(maps at {size}×{size})" if size else ""  # many pixels: see PRO_MAX_PIXELS
        plots.append(
            {
                "src": pro_plot(fprs, pros, aupro, pixel_fpr, note),
                "alt": "PRO curve",
                "caption": f"Per-region overlap up to FPR {PRO_FPR_LIMIT:g}"
                + (f", from the maps at the network size, {size}×{size}" if size else "")
                + (
                    "; dashed: the pixel threshold."
                    if pixel_fpr is not None and pixel_fpr <= PRO_FPR_LIMIT
                    else "."
                ),
            }
        )
    _remove_stale_panels(folder, {Path(c["src"]).name for p in panels for c in p["cells"] if c["src"]})
    data = {
        "page_size": page_size,
        "calibrated": calibration is not None,
        "panels": panels,
    }
    return _write_page(
        out / "index.html",
        "model.html",
        title=title,
        metric_rows=metric_rows(metrics),
        model_rows=_model_rows(pipeline, metrics),
        plots=plots,
        data=data,
        n_images=len(panels),
        n_defective=int(labels.sum()),
        page_size=page_size,
        colour_scale=None if maps is None else {"vmin": _fmt(scale[0], ".4g"), "vmax": _fmt(scale[1], ".4g")},
        pixel_threshold=None
        if calibration is None or calibration.pixel_threshold is None or maps is None
        else _threshold_position(calibration.pixel_threshold, scale),
    )


def _threshold_position(threshold: float, scale: tuple[float, float]) -> dict[str, str] | None:
    """Where the pixel threshold sits on the colour bar (percent from the left), when on it."""
    low, high = scale
    if not high > low or not low <= threshold <= high:
        return None
    return {"value": _fmt(threshold, ".4g"), "percent": f"{100.0 * (threshold - low) / (high - low):.2f}"}


# -- sweep / select folders ----------------------------------------------------------------------------
def _read_nodes_csv(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise StratadError(f"cannot read {path}: {exc}") from None
    if not rows or "node" not in rows[0]:
        raise StratadError(f"{path} holds no node rows; is it the nodes.csv of `stratad sweep` or `select`?")
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise StratadError(f"{path} is damaged (not JSON); run the sweep again or delete it") from None
    return value if isinstance(value, dict) else {}


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def sweep_rows(folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of ``folder/nodes.csv`` (or of each ``folder/size_<S>/nodes.csv`` of a ``select
    --sizes`` run, tagged with ``image_size``) and the column names, in file order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StratadError(f"{folder} is not a folder; give the --out folder of `stratad sweep` or `select`")
    sized = sorted(
        (int(p.name.removeprefix("size_")), p)
        for p in folder.glob("size_*")
        if p.name.removeprefix("size_").isdigit() and (p / "nodes.csv").is_file()
    )
    if (folder / "nodes.csv").is_file():
        rows: list[dict[str, Any]] = list(_read_nodes_csv(folder / "nodes.csv"))
        columns = list(rows[0])
    elif sized:
        rows, columns = [], ["image_size"]
        for size, sub in sized:
            part = _read_nodes_csv(sub / "nodes.csv")
            columns += [c for c in part[0] if c not in columns]
            rows += [{"image_size": str(size), **r} for r in part]
    else:
        raise StratadError(
            f"{folder} holds no nodes.csv; give the --out folder of `stratad sweep` or `stratad select`"
        )
    return rows, columns


#: Columns shown with 4 decimals (the rest as written); sizes and counts stay integers.
_METRIC_COLUMNS = re.compile(r"^(image_auroc|pixel_auroc|aupro_.*|p_h|relative_rf|f1_max|pixel_f1_max)$")


def render_sweep_report(folder: str | Path, out: str | Path) -> Path:
    """Write ``out/index.html`` for a ``stratad sweep`` or ``select`` folder: the table of nodes (sortable
    by any column, best first by the selection criterion), the node chosen (``selected.json``) marked,
    and the chosen metrics against each node's relative receptive field. Returns the page's path."""
    import tempfile

    from stratad.export.io import check_output_folder
    from stratad.report.plots import performance_vs_receptive_field
    from stratad.selection.config import COMBINATION_SEPARATOR

    folder, out = Path(folder), Path(out)
    rows, columns = sweep_rows(folder)
    selected = _read_json(folder / "selected.json")
    stamp = _read_json(folder / "sweep.json") or selected.get("sweep") or {}
    if not stamp and "image_size" in columns:
        stamp = _read_json(folder / f"size_{rows[0]['image_size']}" / "sweep.json")
    criterion = str(
        selected.get("criterion") or ("p_h" if any(r.get("p_h") for r in rows) else "image_auroc")
    )
    sort_key = (
        criterion
        if criterion in columns
        else next((c for c in ("p_h", "image_auroc") if c in columns), "node")
    )
    chosen = str(selected.get("node") or "")
    chosen_size = str(selected.get("image_size") or "")
    backbone = str(stamp.get("backbone") or "backbone")
    for r in rows:
        r.setdefault("image_size", stamp.get("image_size", ""))

    def best_first(row: dict[str, Any]) -> float:
        value = _number(row.get(sort_key))
        return math.inf if value is None else -value

    if sort_key != "node":
        rows.sort(key=best_first)  # stable: equal values keep the file's order

    table = []
    for r in rows:
        cells = []
        for c in columns:
            raw = r.get(c, "")
            value = _number(raw)
            text = _fmt(value) if value is not None and _METRIC_COLUMNS.match(c) else (raw or "")
            cells.append({"text": text, "sort": "" if value is None else repr(value)})
        is_chosen = r["node"] == chosen and (not chosen_size or str(r.get("image_size")) == chosen_size)
        table.append({"cells": cells, "chosen": is_chosen, "twin": bool(r.get("same_as"))})

    plotted = [
        {**r, "backbone": backbone}
        for r in rows
        if COMBINATION_SEPARATOR not in r["node"] and not r.get("same_as")
    ]
    metrics = [
        m for m in ["p_h", "image_auroc", *[c for c in columns if c.startswith("aupro_")]] if m in columns
    ]
    plots = []
    with tempfile.TemporaryDirectory() as tmp:
        for metric in metrics:
            if not any(
                _number(r.get(metric)) is not None and _number(r.get("relative_rf")) is not None
                for r in plotted
            ):
                continue
            png = performance_vs_receptive_field(plotted, Path(tmp) / f"{metric}.png", metric=metric)
            plots.append(
                {
                    "src": "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii"),
                    "alt": f"{metric} vs relative receptive field",
                    "caption": f"{metric} of each node against its relative receptive field",
                }
            )
    facts = [
        (name, _fmt(selected[key], ".4f") if isinstance(selected.get(key), float) else str(selected[key]))
        for name, key in (
            ("chosen node", "node"),
            ("criterion", "criterion"),
            ("value", "value"),
            ("input size", "image_size"),
            ("synthetic defects", "defects"),
            ("validation split", "split"),
        )
        if selected.get(key) not in (None, "")
    ]
    for name, key in (("dataset", "label"), ("backbone", "backbone"), ("detector", "detector")):
        if stamp.get(key):
            facts.append((name, str(stamp[key])))
    title = f"nodes of {backbone}" + (f" on {stamp['label']}" if stamp.get("label") else "")
    return _write_page(
        check_output_folder(out) / "index.html",
        "sweep.html",
        title=title,
        source=display_text(folder),
        columns=columns,
        sort_column=columns.index(sort_key),
        sort_descending=sort_key != "node",
        table=table,
        facts=facts,
        plots=plots,
    )


# -- templates -----------------------------------------------------------------------------------------
_BASE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>
:root { --fg: #1d1f23; --muted: #5d6470; --line: #d9dde3; --bg: #f6f7f9; --good: #1f7a3f; --bad: #b42323; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: var(--bg); }
header { background: #22303f; color: #fff; padding: 14px 24px; }
header h1 { margin: 0; font-size: 20px; font-weight: 600; word-break: break-all; }
header p { margin: 4px 0 0; color: #c9d3de; font-size: 13px; }
main { padding: 16px 24px 40px; max-width: 1700px; margin: 0 auto; }
section { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 14px 18px;
  margin-bottom: 16px; }
h2 { font-size: 16px; margin: 0 0 10px; }
table { border-collapse: collapse; }
td, th { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.facts td:first-child { color: var(--muted); white-space: pre; }
.columns { display: flex; gap: 28px; flex-wrap: wrap; align-items: flex-start; }
.columns > div { flex: 0 1 auto; } .columns > div:last-child { flex: 1 1 420px; }
.plots { display: flex; gap: 16px; flex-wrap: wrap; }
.plots figure { margin: 0; }
.plots figcaption { width: 0; min-width: 100%; }
.plots img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; margin-top: 3px; }
.good { color: var(--good); } .defective { color: var(--bad); }
</style>
</head>
<body>
<header><h1>{{ title }}</h1><p>{% block subtitle %}{% endblock %}</p></header>
<main>
{% block body %}{% endblock %}
</main>
{% block script %}{% endblock %}
</body>
</html>
"""

_MODEL = """{% extends "base.html" %}
{% block subtitle %}
{{ n_images }} test images ({{ n_defective }} defective), worst first; written by stratad
{% endblock %}
{% block body %}
<section class="columns">
  <div>
    <h2>Metrics</h2>
    <table class="facts" id="metrics">
    {% for name, value in metric_rows %}
      <tr><td>{{ name }}</td><td class="num">{{ value }}</td></tr>
    {% endfor %}
    </table>
  </div>
  <div>
    <h2>Model</h2>
    <table class="facts" id="model">
    {% for name, value in model_rows %}
      <tr><td>{{ name }}</td><td>{{ value }}</td></tr>
    {% endfor %}
    </table>
  </div>
</section>
<section>
  <h2>Curves</h2>
  <div class="plots">
  {% for plot in plots %}
    <figure>
      <img class="plot" src="{{ plot.src }}" alt="{{ plot.alt }}">
      <figcaption>{{ plot.caption }}</figcaption>
    </figure>
  {% endfor %}
  </div>
</section>
<section id="images">
  <h2>Images</h2>
  <div class="controls">
    <label>show <select id="filter">
      <option value="all">all images</option>
      <option value="defective">defective (ground truth)</option>
      <option value="good">good (ground truth)</option>
      {% if data.calibrated %}<option value="wrong">wrong decisions</option>{% endif %}
    </select></label>
    <span class="pager">
      <button type="button" id="first" title="first page">«</button>
      <button type="button" id="prev" title="previous page (←)">‹</button>
      <span>page <input id="page" type="number" min="1" value="1"> of <span id="pages">1</span></span>
      <button type="button" id="next" title="next page (→)">›</button>
      <button type="button" id="last" title="last page">»</button>
    </span>
    <span id="range" class="muted"></span>
    {% if colour_scale %}
    <span class="scale" title="one colour scale for every overlay of this report">
      <span>{{ colour_scale.vmin }}</span>
      <span class="bar">
      {% if pixel_threshold %}
        <span class="tick" style="left: {{ pixel_threshold.percent }}%"
          title="pixel threshold {{ pixel_threshold.value }}"></span>
      {% endif %}
      </span>
      <span>{{ colour_scale.vmax }}</span>
      {% if pixel_threshold %}
      <span class="muted">(| pixel threshold {{ pixel_threshold.value }})</span>
      {% endif %}
    </span>
    {% endif %}
  </div>
  <div class="heads">
    <span>input</span><span>ground truth</span><span>heatmap overlay</span><span>predicted mask</span>
  </div>
  <div id="panels"></div>
  <noscript><p>Panels need JavaScript (no network access is made).</p></noscript>
</section>
<style>
.controls { display: flex; gap: 18px; align-items: center; flex-wrap: wrap; margin-bottom: 10px;
  position: sticky; top: 0; background: #fff; padding: 6px 0; z-index: 2;
  border-bottom: 1px solid var(--line); }
.controls input { width: 4.5em; }
.controls button { min-width: 2.2em; }
.muted { color: var(--muted); }
.scale { display: inline-flex; gap: 6px; align-items: center; font-size: 12px; }
.scale .bar { position: relative; display: inline-block; width: 160px; height: 12px; border: 1px solid #888;
  background: linear-gradient(to right, #00007f 0%, #0000ff 12.5%, #00ffff 37.5%, #ffff00 62.5%,
    #ff0000 87.5%, #7f0000 100%); }
.scale .tick { position: absolute; top: -4px; width: 2px; height: 18px; background: #000;
  outline: 1px solid #fff; }
.heads, .cells { display: grid; grid-template-columns: repeat(4, minmax(0, 1fr)); gap: 8px; }
.heads { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em;
  margin: 4px 0; }
.panel { border-top: 1px solid var(--line); padding: 10px 0 12px; }
.panel .info { display: flex; gap: 14px; flex-wrap: wrap; align-items: baseline; margin-bottom: 6px; }
.panel .rank { color: var(--muted); min-width: 3em; }
.panel .name { font-weight: 600; word-break: break-all; }
.panel .verdict { font-weight: 600; text-transform: uppercase; }
.panel .wrong { background: #ffe7a8; padding: 0 5px; border-radius: 3px; font-size: 12px; }
.panel figure { margin: 0; }
.panel img { display: block; width: 100%; height: auto; max-width: 384px; background: #eee;
  outline: 1px solid var(--line); }
.panel .note { display: flex; align-items: center; justify-content: center; text-align: center;
  width: 100%; max-width: 384px; background: #eef0f3; color: var(--muted); font-size: 13px; padding: 8px; }
</style>
<script type="application/json" id="panel-data">{{ data|tojson }}</script>
{% endblock %}
{% block script %}
<script>
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("panel-data").textContent);
  var list = document.getElementById("panels");
  var filter = document.getElementById("filter");
  var pageInput = document.getElementById("page");
  var pageCount = document.getElementById("pages");
  var range = document.getElementById("range");
  var heads = ["input", "ground truth", "heatmap overlay", "predicted mask"];
  var shown = data.panels;
  var page = 0;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined && text !== null) { node.textContent = text; }
    return node;
  }
  function pages() { return Math.max(1, Math.ceil(shown.length / data.page_size)); }
  function cell(c, p, head) {
    var fig = el("figure");
    if (c.src) {
      var img = el("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.width = p.width;
      img.height = p.height;
      img.alt = head + " of " + p.name;
      img.src = c.src;
      fig.appendChild(img);
    } else {
      var note = el("div", "note", c.note);
      note.style.aspectRatio = p.width + " / " + p.height;
      fig.appendChild(note);
    }
    return fig;
  }
  function panel(p) {
    var box = el("article", "panel");
    box.dataset.rank = p.rank;
    box.dataset.score = p.score;
    var info = el("div", "info");
    info.appendChild(el("span", "rank", "#" + p.rank));
    var name = el("span", "name", p.name);
    name.title = p.path;
    info.appendChild(name);
    var truth = p.label === "good" ? "good" : "defective: " + p.defect_type;
    info.appendChild(el("span", "label " + p.label, truth));
    info.appendChild(el("span", "score", "score " + p.score));
    if (p.normalized !== null) { info.appendChild(el("span", "normalized", "normalised " + p.normalized)); }
    if (p.decision !== null) { info.appendChild(el("span", "verdict " + p.decision, p.decision)); }
    if (p.correct === false) {
      info.appendChild(el("span", "wrong", p.label === "good" ? "false alarm" : "missed"));
    }
    if (p.area !== null) { info.appendChild(el("span", "area", "defect area " + p.area)); }
    box.appendChild(info);
    var cells = el("div", "cells");
    for (var k = 0; k < p.cells.length; k++) { cells.appendChild(cell(p.cells[k], p, heads[k])); }
    box.appendChild(cells);
    return box;
  }
  function render() {
    page = Math.min(Math.max(page, 0), pages() - 1);
    var start = page * data.page_size;
    var end = Math.min(start + data.page_size, shown.length);
    var frag = document.createDocumentFragment();
    for (var i = start; i < end; i++) { frag.appendChild(panel(shown[i])); }
    list.replaceChildren(frag);
    pageInput.value = page + 1;
    pageInput.max = pages();
    pageCount.textContent = pages();
    range.textContent = shown.length
      ? "images " + (start + 1) + "–" + end + " of " + shown.length
      : "no image";
  }
  function go(to) {
    var before = page;
    page = to;
    render();
    if (page !== before) { document.getElementById("images").scrollIntoView(); }
  }
  filter.addEventListener("change", function () {
    var f = filter.value;
    shown = data.panels.filter(function (p) {
      return f === "all" || (f === "wrong" ? p.correct === false : p.label === f);
    });
    page = 0;
    render();
  });
  document.getElementById("first").addEventListener("click", function () { go(0); });
  document.getElementById("prev").addEventListener("click", function () { go(page - 1); });
  document.getElementById("next").addEventListener("click", function () { go(page + 1); });
  document.getElementById("last").addEventListener("click", function () { go(pages() - 1); });
  pageInput.addEventListener("change", function () {
    var n = parseInt(pageInput.value, 10);
    go(isNaN(n) ? page : n - 1);
  });
  document.addEventListener("keydown", function (e) {
    if (e.target && (e.target.tagName === "INPUT" || e.target.tagName === "SELECT")) { return; }
    if (e.key === "ArrowRight") { go(page + 1); } else if (e.key === "ArrowLeft") { go(page - 1); }
  });
  render();
})();
</script>
{% endblock %}
"""

_SWEEP = """{% extends "base.html" %}
{% block subtitle %}
{{ table|length }} nodes from {{ source }}; click a column to sort; written by stratad
{% endblock %}
{% block body %}
{% if facts %}
<section>
  <h2>Selection</h2>
  <table class="facts" id="facts">
  {% for name, value in facts %}
    <tr><td>{{ name }}</td><td>{{ value }}</td></tr>
  {% endfor %}
  </table>
</section>
{% endif %}
{% if plots %}
<section id="rf">
  <h2>Performance vs relative receptive field</h2>
  <div class="plots">
  {% for plot in plots %}
    <figure>
      <img class="plot" src="{{ plot.src }}" alt="{{ plot.alt }}">
      <figcaption>{{ plot.caption }}</figcaption>
    </figure>
  {% endfor %}
  </div>
</section>
{% endif %}
<section>
  <h2>Nodes</h2>
  <div class="scroll">
  <table id="nodes" data-sort-column="{{ sort_column }}"
    data-sort-descending="{{ 'true' if sort_descending else 'false' }}">
    <thead><tr>
    {% for c in columns %}<th data-column="{{ loop.index0 }}" title="sort by {{ c }}">{{ c }}</th>{% endfor %}
    </tr></thead>
    <tbody>
    {% for row in table %}
      <tr class="{{ 'chosen' if row.chosen }}{{ ' twin' if row.twin }}">
      {% for cell in row.cells %}
        <td{% if cell.sort %} class="num" data-sort="{{ cell.sort }}"{% endif %}>{{ cell.text }}</td>
      {% endfor %}
      </tr>
    {% endfor %}
    </tbody>
  </table>
  </div>
  <p class="legend">
    <span class="chosen-key">chosen node</span> · greyed: a twin (same output as the node in same_as)
  </p>
</section>
<style>
#nodes th { cursor: pointer; user-select: none; white-space: nowrap; position: sticky; top: 0;
  background: #fff; }
#nodes th.asc::after { content: " ▲"; } #nodes th.desc::after { content: " ▼"; }
#nodes tr.chosen td, .chosen-key { background: #fff1b8; font-weight: 600; }
#nodes tr.twin td { color: #9aa0a8; }
#nodes tbody tr:hover td { background: #eef4ff; }
.legend { color: #5d6470; font-size: 12px; }
.scroll { overflow-x: auto; }
#rf .plots figure { flex: 1 1 520px; max-width: 640px; }
#rf .plots img { width: 100%; }
</style>
{% endblock %}
{% block script %}
<script>
(function () {
  "use strict";
  var table = document.getElementById("nodes");
  var body = table.tBodies[0];
  var heads = table.tHead.rows[0].cells;
  var column = parseInt(table.dataset.sortColumn, 10);
  var descending = table.dataset.sortDescending === "true";
  function key(row) {
    var td = row.cells[column];
    return td.dataset.sort !== undefined ? parseFloat(td.dataset.sort) : td.textContent;
  }
  function sort() {
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      var xEmpty = x === "" || (typeof x === "number" && isNaN(x));
      var yEmpty = y === "" || (typeof y === "number" && isNaN(y));
      if (xEmpty || yEmpty) { return xEmpty === yEmpty ? 0 : (xEmpty ? 1 : -1); }
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      var order = x < y ? -1 : (x > y ? 1 : 0);
      return descending ? -order : order;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    for (var i = 0; i < heads.length; i++) {
      heads[i].classList.toggle("asc", i === column && !descending);
      heads[i].classList.toggle("desc", i === column && descending);
    }
  }
  for (var i = 0; i < heads.length; i++) {
    heads[i].addEventListener("click", function (e) {
      var c = parseInt(e.currentTarget.dataset.column, 10);
      var numeric = body.rows.length > 0 && body.rows[0].cells[c].dataset.sort !== undefined;
      descending = c === column ? !descending : numeric;
      column = c;
      sort();
    });
  }
  sort();
})();
</script>
{% endblock %}
"""

#: The page templates (Jinja2, autoescaped), kept here rather than as package data files.
TEMPLATES = {"base.html": _BASE, "model.html": _MODEL, "sweep.html": _SWEEP}
