"""The traced extractor a saved model carries: identical scores, no timm / torchvision at predict time,
and the rebuilt backbone whenever the trace is missing, unreadable or stale."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from stratad.backbones.traced import TRACED_KEY, TracedExtractor, trace_extractor
from stratad.data import load_dataset
from stratad.export.io import load_tensors, save_tensors
from stratad.pipeline import Pipeline


@pytest.fixture
def saved(tiny_mvtec: Path, tmp_path: Path) -> tuple[Pipeline, Path]:
    split = load_dataset(tiny_mvtec, "mvtec")
    pipe = Pipeline(nodes=["blocks.2", "blocks.3"], image_size=64, detector_params={"coreset_size": 50})
    pipe.fit(split.train)
    pipe.save(tmp_path / "m.stratad")
    return pipe, tmp_path / "m.stratad"


def test_a_loaded_model_scores_through_its_trace_exactly_as_the_backbone(
    saved: tuple[Pipeline, Path], tiny_mvtec: Path
) -> None:
    pipe, path = saved
    test = load_dataset(tiny_mvtec, "mvtec").test
    traced = Pipeline.load(path)
    assert isinstance(traced._scoring_extractor(), TracedExtractor)
    rebuilt = Pipeline.load(path)
    rebuilt._traced = None
    a, b, c = pipe.predict(test), traced.predict(test), rebuilt.predict(test)
    np.testing.assert_array_equal(a.image_scores, b.image_scores)
    np.testing.assert_array_equal(b.image_scores, c.image_scores)
    assert a.maps is not None and b.maps is not None
    np.testing.assert_array_equal(a.maps, b.maps)


def test_a_file_without_a_trace_still_loads_and_scores_the_same(
    saved: tuple[Pipeline, Path], tiny_mvtec: Path, tmp_path: Path
) -> None:
    pipe, path = saved
    tensors, meta = load_tensors(path)
    assert tensors[TRACED_KEY].dtype == torch.uint8
    del tensors[TRACED_KEY]
    meta = {k: v for k, v in meta.items() if k not in ("format_version", "tensors_sha256")}
    save_tensors(tmp_path / "plain.stratad", tensors, meta)
    plain = Pipeline.load(tmp_path / "plain.stratad")
    assert plain._traced is None
    test = load_dataset(tiny_mvtec, "mvtec").test[:3]
    np.testing.assert_array_equal(plain.predict(test).image_scores, pipe.predict(test).image_scores)


def test_a_refit_or_other_nodes_do_not_use_a_stale_trace(
    saved: tuple[Pipeline, Path], tiny_mvtec: Path
) -> None:
    _, path = saved
    loaded = Pipeline.load(path)
    loaded.config.nodes = ["blocks.3.1.add"]
    assert not isinstance(loaded._scoring_extractor(), TracedExtractor)
    refit = Pipeline.load(path)
    refit.fit(load_dataset(tiny_mvtec, "mvtec").train[:4])
    assert refit._traced is None


class _Noisy(torch.nn.Module):
    """Random output on every call: its trace cannot reproduce it."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"n": x + torch.rand_like(x)}


def test_a_trace_that_does_not_reproduce_the_extractor_is_not_kept() -> None:
    assert trace_extractor(_Noisy(), ["n"], 8) is None


PREDICT = """
import sys
from stratad.runtime import configure_runtime
configure_runtime()
from stratad.workflows import predict_to_folder
predict_to_folder(sys.argv[1], sys.argv[2], sys.argv[3], maps="none")
print(sorted(m for m in ("timm", "torchvision", "torch._dynamo") if m in sys.modules))
"""


def test_predict_with_a_traced_model_imports_neither_timm_nor_torchvision(
    saved: tuple[Pipeline, Path], tiny_mvtec: Path, tmp_path: Path
) -> None:
    _, path = saved
    folder = tiny_mvtec / "test" / "spot"
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", PREDICT, str(path), str(folder), str(out)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def _scores(folder: Path) -> list[list[str]]:
    with open(folder / "scores.csv", encoding="utf-8") as handle:
        return [row for row in csv.reader(line for line in handle if not line.startswith("#"))]


def test_the_command_exits_fast_with_its_output_and_status(
    saved: tuple[Pipeline, Path], tiny_mvtec: Path, tmp_path: Path
) -> None:
    """`python -m stratad` ends with os._exit (stratad._entry.fast_exit): stdout to a pipe is still
    flushed, the exit status is kept, and the files are the same as with an ordinary exit."""
    _, path = saved
    folder = tiny_mvtec / "test" / "spot"
    runs = {}
    for fast in ("1", "0"):
        out = tmp_path / f"out{fast}"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "stratad",
                "predict",
                "--model",
                str(path),
                str(folder),
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "STRATAD_FAST_EXIT": fast},
        )
        assert proc.returncode == 0, proc.stderr
        assert "scored 4 images" in proc.stderr
        runs[fast] = _scores(out)
    assert runs["1"][1:] == [[c.replace("out0", "out1") for c in row] for row in runs["0"][1:]]
    # Standard output to a pipe is block-buffered: the fast exit flushes it.
    listed = subprocess.run(
        [sys.executable, "-m", "stratad", "nodes", "efficientnet_lite0", "--count"],
        capture_output=True,
        text=True,
    )
    assert listed.returncode == 0 and listed.stdout.strip() == "151", listed.stderr
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "stratad",
            "predict",
            "--model",
            str(tmp_path / "no.stratad"),
            str(folder),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [f"error: model file not found: {tmp_path / 'no.stratad'}"]


def test_a_loaded_model_saves_its_trace_again_without_the_backbone(
    saved: tuple[Pipeline, Path], tmp_path: Path
) -> None:
    _, path = saved
    loaded = Pipeline.load(path)
    loaded.save(tmp_path / "again.stratad")
    assert loaded._backbone is None and loaded._extractor is None  # timm never built
    first, _ = load_tensors(path)
    second, _ = load_tensors(tmp_path / "again.stratad")
    assert torch.equal(first[TRACED_KEY], second[TRACED_KEY])


def test_a_trace_this_torch_cannot_run_falls_back_to_the_backbone(
    saved: tuple[Pipeline, Path], tiny_mvtec: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe, path = saved

    def broken(self: TracedExtractor, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise RuntimeError("unknown operator in this torch")

    monkeypatch.setattr(TracedExtractor, "__call__", broken)
    loaded = Pipeline.load(path)
    assert loaded._traced is None
    test = load_dataset(tiny_mvtec, "mvtec").test[:3]
    np.testing.assert_array_equal(loaded.predict(test).image_scores, pipe.predict(test).image_scores)
