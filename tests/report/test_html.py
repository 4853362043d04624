"""``stratad report``: the page renders in a real headless Chromium without console errors or network
requests, pages its panels worst first, and says what an uncalibrated or image-only model cannot show;
sweep pages sort their node table. Bad input is one line."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from stratad.data.datasets import DataSource
from stratad.errors import StratadError
from stratad.metrics import trapezoid
from stratad.report import html
from stratad.report.html import PANEL_LONG_SIDE, metric_rows, render_model_report, render_sweep_report
from stratad.workflows.report import report_to_folder, sweep_report_to_folder
from tests.browser import chromium_page
from tests.conftest import make_mvtec
from tests.report.conftest import ODD_NAME, SETTINGS, ReportCase


def _open(b: Any, index: Path) -> list[str]:
    """Load ``index``; return the list that collects every URL the page requests."""
    requests: list[str] = []
    b.page.on("request", lambda r: requests.append(r.url))
    b.page.goto(index.as_uri())
    b.page.wait_for_load_state("load")
    return requests


def _names(b: Any) -> list[str]:
    return b.page.locator(".panel .name").all_text_contents()


def _embedded(index: Path) -> dict[str, Any]:
    text = index.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="panel-data">(.*?)</script>', text, re.S)
    assert found is not None
    return json.loads(found.group(1))


def test_model_report_pages_worst_first_in_a_browser(calibrated_report: ReportCase) -> None:
    case = calibrated_report
    n = len(case.split.test)
    assert n == 12
    with chromium_page() as b:
        requests = _open(b, case.index)
        # page 1: the page_size worst images, in score order
        assert _names(b) == case.worst_first[:5]
        assert b.page.locator(".panel .rank").all_text_contents() == [f"#{k}" for k in range(1, 6)]
        assert b.page.locator("#pages").text_content() == "3"
        b.page.click("#next")
        assert _names(b) == case.worst_first[5:10]
        b.page.click("#last")
        assert _names(b) == case.worst_first[10:]  # the rest: 2 panels
        b.page.fill("#page", "1")
        b.page.dispatch_event("#page", "change")
        assert _names(b) == case.worst_first[:5]
        # the HTML in a file name is shown as text, never parsed
        assert f"good/{ODD_NAME}" in case.worst_first
        assert b.page.locator(".panel b").count() == 0
        # histogram, ROC and PRO curve, all decoded
        plots = b.page.locator("img.plot")
        assert plots.count() == 3
        assert all(w > 300 for w in plots.evaluate_all("els => els.map(e => e.naturalWidth)"))
        # the first panel's four images load once scrolled to (lazy) and are real images
        first = b.page.locator(".panel").first
        first.scroll_into_view_if_needed()
        b.page.wait_for_function(
            "() => [...document.querySelectorAll('.panel:first-child img')]"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
        assert first.locator("img").count() == 4
        # filtering by ground truth: 5 defective images, one page
        b.page.select_option("#filter", "defective")
        assert b.page.locator(".panel").count() == 5
        assert set(b.page.locator(".panel .label").all_text_contents()) == {"defective: spot"}
        assert b.errors == []
    assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests
    text = case.index.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text


def test_model_report_files_and_numbers(calibrated_report: ReportCase) -> None:
    case = calibrated_report
    panels = sorted(p.name for p in (case.index.parent / "panels").iterdir())
    n = len(case.split.test)
    assert len(panels) == 4 * n
    assert panels[:4] == ["00000_input.jpg", "00000_mask.png", "00000_overlay.jpg", "00000_truth.png"]
    data = _embedded(case.index)
    assert data["page_size"] == 5 and data["calibrated"] is True
    scores = [float(p["score"]) for p in data["panels"]]
    assert scores == sorted(scores, reverse=True)
    # decisions follow the stored threshold; a calibrated model's mask column is an image
    from stratad.pipeline import Pipeline

    pipe = Pipeline.load(case.model)
    threshold = pipe.calibration_.image_threshold
    flagged = int((pipe.predict(case.split.test).image_scores > threshold).sum())
    assert [p["decision"] for p in data["panels"]] == ["defective"] * flagged + ["good"] * (n - flagged)
    assert data["panels"][0]["cells"][3] == {"src": "panels/00000_mask.png", "note": None}
    text = case.index.read_text(encoding="utf-8")
    assert "FPR at it (good images)" in text and "TPR at it (defect pixels)" in text


def test_metric_table_rows_are_the_evaluate_numbers() -> None:
    metrics = {
        "image_auroc": 0.9,
        "f1_max": 0.8,
        "pixel_auroc": 0.95,
        "aupro_30": 0.7,
        "p_h": 2 * 0.9 * 0.7 / 1.6,
        "pixel_f1_max": 0.5,
        "at_threshold": {
            "image_threshold": 1.25,
            "image": {"fpr": 1 / 3, "tpr": 0.8, "n_good": 6, "n_defective": 5},
            "pixel_threshold": 2.5,
            "pixel": {"fpr": 0.25, "tpr": None, "n_good": 100, "n_defective": 0},
        },
        "n_test_images": 11,
        "n_defective": 5,
    }
    rows = dict(metric_rows(metrics))
    assert rows["image AUROC"] == "0.9000"
    assert rows["AU-PRO (FPR ≤ 0.3)"] == "0.7000"
    assert rows["P_h (image AUROC, AU-PRO)"] == "0.7875"
    assert rows["image threshold"] == "1.25"
    assert rows["  FPR at it (good images)"] == "0.3333 (of 6)"
    assert rows["  TPR at it (defective images)"] == "0.8000 (of 5)"
    assert rows["  TPR at it (defect pixels)"] == "–"  # no defect pixel: no rate, not 0
    assert rows["test images"] == "11 (5 defective)"
    image_only = dict(metric_rows({"image_auroc": 1.0, "f1_max": 1.0}))
    assert list(image_only) == ["image AUROC", "image F1-max"]


def test_uncalibrated_report_of_big_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No thresholds: no decision, the mask column says so; 500 px images shrink to panel size; the
    title is escaped; a second, smaller report in the same folder leaves no stale panel behind."""
    from stratad.evaluation import evaluate_pipeline
    from stratad.pipeline import Pipeline, Prediction

    category = make_mvtec(tmp_path / "mvtec", n_train=4, n_good=3, n_bad=3, size=500)
    split = DataSource(root=category).load()
    pipe = Pipeline(**SETTINGS).fit(split.train)
    metrics, prediction = evaluate_pipeline(pipe, split.test)
    out = tmp_path / "report"
    index = render_model_report(
        pipe, split.test, prediction, metrics, out, title="<script>alert(1)</script> widget"
    )
    text = index.read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt; widget" in text and "<script>alert" not in text
    # the drawn PRO curve is the one AU-PRO integrates; over PRO_MAX_PIXELS, drawn at the network size
    fprs, pros, size = html.pro_points(split.test, prediction, range(len(split.test)))
    assert size is None
    assert trapezoid(fprs, pros, x_max=0.3) / 0.3 == pytest.approx(metrics["aupro_30"], abs=1e-9)
    monkeypatch.setattr(html, "PRO_MAX_PIXELS", 64 * 64 * len(split.test))
    fprs, pros, size = html.pro_points(split.test, prediction, range(len(split.test)))
    assert size == 64
    assert trapezoid(fprs, pros, x_max=0.3) / 0.3 == pytest.approx(metrics["aupro_30"], abs=0.03)
    with Image.open(out / "panels" / "00000_input.jpg") as img:
        assert img.size == (PANEL_LONG_SIDE, PANEL_LONG_SIDE)
    with Image.open(out / "panels" / "00000_overlay.jpg") as img:
        assert img.size == (PANEL_LONG_SIDE, PANEL_LONG_SIDE)
    with chromium_page() as b:
        _open(b, index)
        assert b.page.locator(".panel").count() == 6  # page_size 48 > 6 images: one page
        assert b.page.locator("#pages").text_content() == "1"
        notes = b.page.locator(".panel .note").all_text_contents()
        assert notes == ["no thresholds (fit --calibrate)"] * 6
        assert b.page.locator(".panel .verdict").count() == 0
        assert b.page.locator("#metrics").text_content().count("threshold") == 0
        assert b.errors == []
    # again with 4 of the images (both labels): only their panels are left
    keep = [0, 1, 3, 4]
    assert {split.test[i].label for i in keep} == {0, 1}
    part = Prediction(
        [prediction.paths[i] for i in keep],
        prediction.image_scores[keep],
        None if prediction.maps is None else prediction.maps[keep],
        [prediction.original_sizes[i] for i in keep],
    )
    render_model_report(pipe, [split.test[i] for i in keep], part, metrics, out, title="again")
    assert len(list((out / "panels").iterdir())) == 3 * 4  # input, truth, overlay; no mask


def test_image_only_detector_report(tmp_path: Path) -> None:
    """No maps: no PRO curve, the overlay and mask columns say why; a non-UTF-8 file name is shown
    escaped instead of failing the page."""
    from stratad.evaluation import evaluate_pipeline
    from stratad.pipeline import Pipeline

    category = make_mvtec(tmp_path / "mvtec", n_train=6, n_good=3, n_bad=3)
    latin1 = os.fsdecode(b"caf\xe9.png")  # a file name that is not UTF-8
    shutil.copy(category / "test" / "good" / "000.png", category / "test" / "good" / latin1)
    split = DataSource(root=category).load()
    pipe = Pipeline(detector="dn2", nodes=["blocks.3"], image_size=64).fit(split.train)
    metrics, prediction = evaluate_pipeline(pipe, split.test)
    assert prediction.maps is None
    index = render_model_report(pipe, split.test, prediction, metrics, tmp_path / "r", title="dn2")
    with chromium_page() as b:
        _open(b, index)
        assert b.page.locator("img.plot").evaluate_all("els => els.map(e => e.alt)") == [
            "score histogram",
            "image ROC curve",
        ]
        notes = b.page.locator(".panel").first.locator(".note").all_text_contents()
        assert notes == ["no map (image scores only)", "no thresholds (fit --calibrate)"]
        b.page.select_option("#filter", "good")
        assert "good/caf\\xe9.png" in _names(b)
        assert b.errors == []


def _sweep_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "sweep.json").write_text(
        json.dumps({"label": "widget", "backbone": "net", "image_size": 64, "detector": "patchcore"})
    )
    (folder / "nodes.csv").write_text(
        "node,channels,stride,relative_rf,image_auroc,aupro_30,p_h,same_as\n"
        "b.1,16,4,0.1,0.70,0.50,0.583333,\n"
        "b.2,24,8,0.3,0.90,0.80,0.847059,\n"
        "b.2.id,24,8,0.3,0.90,0.80,0.847059,b.2\n"
        "b.3,40,16,0.7,0.95,0.60,0.735484,\n"
        "b.2+b.3,64,8,,0.97,0.75,0.845722,\n"
    )
    (folder / "selected.json").write_text(json.dumps({"node": "b.2", "criterion": "p_h", "value": 0.847059}))
    return folder


def test_sweep_report_sorts_its_node_table(tmp_path: Path) -> None:
    index = sweep_report_to_folder(_sweep_folder(tmp_path / "sel"), tmp_path / "out")
    assert index == tmp_path / "out" / "index.html"
    with chromium_page() as b:
        requests = _open(b, index)
        rows = b.page.locator("#nodes tbody tr")
        assert rows.count() == 5  # one row per node of nodes.csv, twin and combination included

        def first_column() -> list[str]:
            return b.page.locator("#nodes tbody tr td:first-child").all_text_contents()

        # best first by the selection's criterion (p_h); equal values keep the file's order
        assert [n.strip() for n in first_column()] == ["b.2", "b.2.id", "b.2+b.3", "b.3", "b.1"]
        assert b.page.locator("#nodes tr.chosen td:first-child").all_text_contents() == ["b.2"]
        b.page.click("#nodes th:text-is('node')")  # text: ascending
        assert first_column() == ["b.1", "b.2", "b.2+b.3", "b.2.id", "b.3"]
        b.page.click("#nodes th:text-is('image_auroc')")  # numbers: descending first
        assert first_column()[0] == "b.2+b.3"
        b.page.click("#nodes th:text-is('image_auroc')")
        assert first_column()[0] == "b.1"
        b.page.click("#nodes th:text-is('relative_rf')")  # an empty cell sorts last either way
        assert first_column()[-1] == "b.2+b.3"
        # p_h, image_auroc and aupro_30 against relative receptive field
        assert b.page.locator("img.plot").count() == 3
        assert "chosen node" in b.page.locator("#facts").text_content()
        assert b.errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests)


def test_sweep_report_of_a_select_over_sizes(tmp_path: Path) -> None:
    folder = tmp_path / "sel"
    for size, best in ((64, 0.6), (128, 0.8)):
        _sweep_folder(folder / f"size_{size}")
        (folder / f"size_{size}" / "selected.json").unlink()
        text = (folder / f"size_{size}" / "nodes.csv").read_text().replace("0.847059", str(best))
        (folder / f"size_{size}" / "nodes.csv").write_text(text)
    (folder / "selected.json").write_text(json.dumps({"image_size": 128, "node": "b.2"}))
    index = render_sweep_report(folder, tmp_path / "out")
    text = index.read_text(encoding="utf-8")
    assert text.count("<tr class=") == 10
    chosen = re.findall(r'<tr class="chosen">\s*<td[^>]*>(.*?)</td>\s*<td[^>]*>(.*?)</td>', text)
    assert chosen == [("128", "b.2")]  # the chosen node at the chosen size only


def test_bad_input_is_one_line(tmp_path: Path, calibrated_report: ReportCase) -> None:
    case = calibrated_report

    def one_line(call: Any, match: str) -> None:
        with pytest.raises(StratadError, match=match) as info:
            call()
        assert "\n" not in str(info.value)

    (tmp_path / "empty").mkdir()
    one_line(lambda: sweep_report_to_folder(tmp_path / "empty", tmp_path / "o1"), "holds no nodes.csv")
    assert not (tmp_path / "o1").exists()  # said before anything is written
    one_line(lambda: sweep_report_to_folder(tmp_path / "nowhere", tmp_path / "o1"), "is not a folder")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "nodes.csv").write_text("a,b\n1,2\n")
    one_line(lambda: sweep_report_to_folder(tmp_path / "junk", tmp_path / "o1"), "holds no node rows")
    one_line(
        lambda: report_to_folder(case.model, DataSource(root=tmp_path / "nowhere"), tmp_path / "o2"),
        "not found",
    )
    (tmp_path / "file").write_text("x")
    one_line(lambda: report_to_folder(case.model, case.source, tmp_path / "file"), "is a file")
    one_line(lambda: report_to_folder(case.model, case.source, tmp_path / "o3", page_size=0), "--page-size")
    one_line(
        lambda: report_to_folder(case.model, case.source, tmp_path / "o4", missing_masks="maybe"),
        "--missing-masks",
    )
    one_line(lambda: report_to_folder(tmp_path / "file", case.source, tmp_path / "o5"), "file")


def test_screenshot_of_the_report(calibrated_report: ReportCase, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    with chromium_page(width=1280, height=900) as b:
        _open(b, calibrated_report.index)
        b.page.screenshot(path=str(shot))
        assert b.errors == []
    with Image.open(shot) as img:
        assert img.format == "PNG" and img.size == (1280, 900)
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 20  # not a blank page: header, tables, plots
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
