"""Every bad input we know of, as a user meets it: one ``error:`` line, exit 1, no traceback.

The README's "Bad input" table is generated from :data:`CASES` and the messages these tests see;
``test_readme_table_is_current`` fails when it is stale. Regenerate it with
``STRATAD_WRITE_README=1 .venv/bin/python -m pytest tests/test_bad_input.py``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from stratad.export.io import load_tensors, save_tensors
from tests.clirun import error_line, stratad
from tests.conftest import make_mvtec

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- bad-input-table:start -->", "<!-- bad-input-table:end -->"
SMALL = ["--image-size", "64", "--no-progress"]


@dataclass
class Env:
    root: Path
    data: Path  # a clean tiny MVTec category
    model: Path  # PatchCore on blocks.2 fitted on it

    def p(self, *parts: str) -> str:
        return str(self.root.joinpath(*parts))


@dataclass(frozen=True)
class Case:
    command: str
    what: str  # what the user did, as it reads in the README table
    args: Callable[[Env], list[str]]
    needle: str  # must appear in the error line
    needs_no_cuda: bool = False


def _variant(env: Env, name: str, change: Callable[[Path], None]) -> Path:
    """A copy of the clean data set with one thing broken."""
    target = env.root / name
    if not target.exists():
        shutil.copytree(env.data, target)
        change(target)
    return target


def _no_mask(cat: Path) -> None:
    (cat / "ground_truth" / "spot" / "001_mask.png").unlink()


def _faint_mask(cat: Path) -> None:
    mask = np.asarray(Image.open(cat / "ground_truth" / "spot" / "001_mask.png")) // 3  # 255 -> 85
    Image.fromarray(mask.astype(np.uint8)).save(cat / "ground_truth" / "spot" / "001_mask.png")


def _small_mask(cat: Path) -> None:
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(cat / "ground_truth" / "spot" / "000_mask.png")


def _float_image(cat: Path) -> None:
    Image.fromarray(np.full((64, 64), 3.5, np.float32)).save(cat / "train" / "good" / "zz_float.tif")


def _corrupt_image(cat: Path) -> None:
    (cat / "train" / "good" / "zz_broken.png").write_bytes(b"\x89PNG broken")


def _other_content(cat: Path) -> None:
    for png in (cat / "train" / "good").glob("*.png"):
        Image.fromarray(255 - np.asarray(Image.open(png))).save(png)


def _twelve_bit_image(env: Env) -> str:
    path = env.root / "bright16" / "x.png"
    path.parent.mkdir(exist_ok=True)
    Image.fromarray(np.full((64, 64), 4000, np.uint16)).save(path)
    return str(path)


def _model_variant(env: Env, name: str, edit: Callable[[dict, dict], None]) -> str:
    """The fitted model re-saved (with a valid digest) after ``edit(tensors, meta)``."""
    tensors, meta = load_tensors(env.model)
    del meta["tensors_sha256"], meta["format_version"]  # save_tensors writes both anew
    edit(tensors, meta)
    target = env.root / f"{name}.stratad"
    save_tensors(target, tensors, meta)
    return str(target)


def _raw_model(env: Env, name: str, metadata: dict[str, str]) -> str:
    target = env.root / f"{name}.stratad"
    save_file({"detector.memory_bank": torch.zeros(4, 8)}, str(target), metadata=metadata)
    return str(target)


def _newer_format(env: Env) -> str:
    tensors, meta = load_tensors(env.model)
    meta["format_version"] = 99
    target = env.root / "newer.stratad"
    save_file(tensors, str(target), metadata={"stratad": json.dumps(meta)})
    return str(target)


def _byte_edit(env: Env, name: str, edit: Callable[[bytes], bytes]) -> str:
    target = env.root / f"{name}.stratad"
    target.write_bytes(edit(env.model.read_bytes()))
    return str(target)


def _flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x40])


def _set(section: str, key: str, value: object) -> Callable[[dict, dict], None]:
    def edit(tensors: dict, meta: dict) -> None:
        if section == "tensor":
            tensors[key] = value
        elif section == "config":
            meta["config"][key] = value
        else:
            del meta[key]

    return edit


def _predict(model: Callable[[Env], str]) -> Callable[[Env], list[str]]:
    return lambda e: ["predict", "--model", model(e), str(e.data / "test" / "spot"), "--out", e.p("o")]


def _fit(*extra: str, data: Callable[[Env], str] | None = None) -> Callable[[Env], list[str]]:
    return lambda e: [
        "fit",
        "--data",
        data(e) if data else str(e.data),
        "--out",
        e.p("never.stratad"),
        "--nodes",
        "blocks.2",
        *SMALL,
        *extra,
    ]


def _evaluate(data: Callable[[Env], str], *extra: str) -> Callable[[Env], list[str]]:
    return lambda e: ["evaluate", "--model", str(e.model), "--data", data(e), "--no-progress", *extra]


SELECT = ["--nodes", "blocks.1,blocks.2", "-p", "coreset_size=50", *SMALL, "--no-rf", "--workers", "1"]


CASES = [
    # -- data --
    Case(
        "fit",
        "a data folder that does not exist",
        lambda e: _fit(data=lambda e: e.p("nowhere"))(e),
        "not found",
    ),
    Case(
        "fit",
        "a corrupt image among the training images",
        _fit(data=lambda e: str(_variant(e, "corrupt", _corrupt_image))),
        "zz_broken.png",
    ),
    Case(
        "fit",
        "a float TIFF with values outside [0, 1]",
        _fit(data=lambda e: str(_variant(e, "float", _float_image))),
        "float image",
    ),
    Case("fit", "`--bit-depth 9`", _fit("--bit-depth", "9"), "bit depth must be one of"),
    Case(
        "evaluate",
        "a defective test image without a mask",
        _evaluate(lambda e: str(_variant(e, "nomask", _no_mask))),
        "no mask found for the defective image",
    ),
    Case(
        "evaluate",
        "a mask whose defect pixels are all <= 127 (not 0/1)",
        _evaluate(lambda e: str(_variant(e, "faint", _faint_mask))),
        "non-zero values only up to 85",
    ),
    Case(
        "evaluate",
        "a mask of another size than its image",
        _evaluate(lambda e: str(_variant(e, "smallmask", _small_mask))),
        "but its image is",
    ),
    Case(
        "predict",
        "a 12-bit image for a model fitted on 8-bit images",
        lambda e: ["predict", "--model", str(e.model), _twelve_bit_image(e), "--out", e.p("o12")],
        "above the 8-bit range",
    ),
    Case(
        "predict",
        "an input that is not an image file",
        lambda e: ["predict", "--model", str(e.model), str(e.model), "--out", e.p("o")],
        "is not an image file",
    ),
    Case(
        "predict",
        "a folder without images",
        lambda e: ["predict", "--model", str(e.model), str(e.data / "ground_truth"), "--out", e.p("o")],
        "no images",
    ),
    # -- options --
    Case("fit", "`-p projection_dim=-3`", _fit("-p", "projection_dim=-3"), "projection_dim"),
    Case("fit", "`-p node_dim=-1`", _fit("-p", "node_dim=-1"), "node_dim"),
    Case("fit", "`-p target_dim=-1`", _fit("-p", "target_dim=-1"), "target_dim"),
    Case("fit", "`-p coreset_size=lots`", _fit("-p", "coreset_size=lots"), "not a valid int"),
    Case("fit", "`-p coreset_fraction=nan`", _fit("-p", "coreset_fraction=nan"), "not a finite number"),
    Case("fit", "`-p coreset_sise=10` (a typo)", _fit("-p", "coreset_sise=10"), "did you mean coreset_size"),
    Case("fit", "`--nodes ,`", _fit("--nodes", ","), "names nothing"),
    Case("fit", "no `--data`", lambda e: ["fit", "--out", e.p("m.stratad")], "Missing option '--data'"),
    Case("fit", "`--image-size big`", _fit("--image-size", "big"), "Invalid value for '--image-size'"),
    Case("fit", "`--nodes blocks.42`", _fit("--nodes", "blocks.42"), "blocks.42"),
    Case("fit", "`--backbone resnet9000`", _fit("--backbone", "resnet9000"), "resnet9000"),
    Case("fit", "`--detector nope`", _fit("--detector", "nope"), "unknown detector"),
    Case("fit", "`--image-size 0`", _fit("--image-size", "0"), "at least 32"),
    Case("fit", "`--device tpu`", _fit("--device", "tpu"), "tpu"),
    Case("fit", "`--device cuda` without a CUDA GPU", _fit("--device", "cuda"), "no usable CUDA", True),
    Case(
        "predict",
        "`--device cuda` without a CUDA GPU",
        lambda e: [*_predict(lambda e: str(e.model))(e), "--device", "cuda"],
        "no usable CUDA",
        True,
    ),
    *(
        Case(
            command,
            f"`{option} 0`",
            (
                lambda e, command=command, option=option: (
                    [command, "--data", str(e.data), "--out", e.p("x"), option, "0"]
                )
            )
            if command in ("select", "sweep", "synth")
            else (lambda e, command=command, option=option: [command, option, "0"]),
            "at least 32",
        )
        for command, option in (
            ("select", "--image-size"),
            ("sweep", "--image-size"),
            ("synth", "--image-size"),
            ("rf", "--size"),
        )
    ),
    Case("nodes", "`--image-size 0`", lambda e: ["nodes", "resnet18", "--image-size", "0"], "at least 32"),
    Case(
        "select",
        "`--top-k 0`",
        lambda e: ["select", "--data", str(e.data), "--out", e.p("x"), "--top-k", "0"],
        "--top-k",
    ),
    Case(
        "select",
        "`--folds 0`",
        lambda e: ["select", "--data", str(e.data), "--out", e.p("x"), "--folds", "0"],
        "--folds",
    ),
    Case(
        "sweep",
        "`--max-grid -1`",
        lambda e: ["sweep", "--data", str(e.data), "--out", e.p("x"), "--max-grid", "-1"],
        "--max-grid",
    ),
    Case(
        "select",
        "`--defects scratches`",
        lambda e: ["select", "--data", str(e.data), "--out", e.p("x"), "--defects", "scratches"],
        "scratches",
    ),
    Case(
        "sweep",
        "`--workers -1`",
        lambda e: ["sweep", "--data", str(e.data), "--out", e.p("x"), "--workers", "-1"],
        "workers",
    ),
    Case(
        "fit",
        "`--train-fraction 0.5` on MVTec AD (which has its own split)",
        _fit("--train-fraction", "0.5"),
        "drop --train-fraction",
    ),
    Case("fit", "`--augment sideways`", _fit("--augment", "sideways"), "unknown augmentation"),
    Case("fit", "`--dataset voc`", _fit("--dataset", "voc"), "'voc' is not one of 'auto'"),
    Case(
        "select",
        "`--criterion auc`",
        lambda e: ["select", "--data", str(e.data), "--out", e.p("x"), "--criterion", "auc"],
        "'auc' is not one of 'p_h', 'p_cls'",
    ),
    Case(
        "select",
        "P_h with an image-only detector (`--detector dn2`)",
        lambda e: ["select", "--data", str(e.data), "--out", e.p("x"), "--detector", "dn2"],
        "p_cls",
    ),
    Case(
        "analyze",
        "a folder that holds no sweep",
        lambda e: ["analyze", str(e.data), "--out", e.p("x")],
        "not a sweep folder",
    ),
    # -- model files --
    Case("predict", "a model file that does not exist", _predict(lambda e: e.p("none.stratad")), "not found"),
    Case(
        "predict",
        "a file that is not a model (random bytes)",
        _predict(lambda e: _byte_edit(e, "random", lambda d: os.urandom(200))),
        "not a stratad model file",
    ),
    Case(
        "predict",
        "a truncated model file",
        _predict(lambda e: _byte_edit(e, "cut", lambda d: d[:-100])),
        "not a stratad model file",
    ),
    Case(
        "predict",
        "a model file with one flipped byte",
        _predict(lambda e: _byte_edit(e, "flip", _flip_last_byte)),
        "is damaged",
    ),
    Case(
        "predict",
        "model metadata that is not JSON",
        _predict(lambda e: _raw_model(e, "notjson", {"stratad": "{not json"})),
        "not JSON",
    ),
    Case(
        "predict",
        "model metadata that is JSON but not an object",
        _predict(lambda e: _raw_model(e, "list", {"stratad": "[1, 2]"})),
        "not a JSON object",
    ),
    Case(
        "predict",
        "a model made by a newer stratad",
        _predict(_newer_format),
        "made by a newer stratad",
    ),
    Case(
        "predict",
        "a model without a config",
        _predict(lambda e: _model_variant(e, "noconfig", _set("meta", "config", None))),
        "no pipeline config",
    ),
    Case(
        "predict",
        "a model config with an unknown key",
        _predict(lambda e: _model_variant(e, "unknownkey", _set("config", "colour", "red"))),
        "does not know (colour)",
    ),
    Case(
        "predict",
        "a model config with an impossible value",
        _predict(lambda e: _model_variant(e, "badsize", _set("config", "image_size", -4))),
        "unusable config",
    ),
    Case(
        "predict",
        "a memory bank of the wrong rank",
        _predict(lambda e: _model_variant(e, "rank", _set("tensor", "detector.memory_bank", torch.ones(5)))),
        "memory_bank has shape (5,)",
    ),
    Case(
        "predict",
        "a memory bank of the wrong width",
        _predict(
            lambda e: _model_variant(e, "width", _set("tensor", "detector.memory_bank", torch.ones(4, 7)))
        ),
        "does not fit its backbone",
    ),
    Case(
        "predict",
        "a memory bank holding NaN",
        _predict(
            lambda e: _model_variant(
                e, "nan", _set("tensor", "detector.memory_bank", torch.full((4, 8), float("nan")))
            )
        ),
        "non-finite",
    ),
    # -- export --
    Case(
        "export",
        "a model in patch mode (one backbone pass per patch)",
        lambda e: ["export", "--model", e.p("patches.stratad"), "--out", e.p("never.onnx")],
        "patch mode",
    ),
    Case(
        "export",
        "`--out` that is a folder",
        lambda e: ["export", "--model", str(e.model), "--out", str(e.root)],
        "is a folder",
    ),
    # -- outputs and resumed runs --
    Case("fit", "`--out` that is a folder", lambda e: [*_fit()(e), "--out", str(e.root)], "is a folder"),
    Case(
        "predict",
        "`--out` that is a file",
        lambda e: ["predict", "--model", str(e.model), str(e.data / "test" / "spot"), "--out", str(e.model)],
        "is a file",
    ),
    Case(
        "evaluate",
        "`--json` that is a folder",
        _evaluate(lambda e: str(e.data), "--json", "/"),
        "is a folder",
    ),
    Case(
        "predict",
        "`--out` holding another model's predictions",
        lambda e: [
            "predict",
            "--model",
            e.p("other.stratad"),
            str(e.data / "test" / "spot"),
            "--out",
            e.p("pred"),
        ],
        "another model or input",
    ),
    Case(
        "select",
        "resuming into a folder of a run with other defects",
        lambda e: ["select", "--data", str(e.data), "--out", e.p("sel"), "--defects", "simple", *SELECT],
        "defects ('cutpaste' there, 'simple' now)",
    ),
    Case(
        "sweep",
        "resuming into a folder of a run on other data of the same size",
        lambda e: [
            "sweep",
            "--data",
            str(_variant(e, "other", _other_content)),
            "--out",
            e.p("sw"),
            *SELECT,
        ],
        "the data",
    ),
    # -- decisions, report, service --
    Case(
        "fit",
        "`--calibrate fpr=0.01` with too few training images to hold out",
        _fit("--calibrate", "fpr=0.01"),
        "needs at least 99 held-out good images",
    ),
    Case("fit", "`--calibrate fpr=1.5`", _fit("--calibrate", "fpr=1.5"), "strictly between 0 and 1"),
    Case(
        "fit",
        "`--calibrate` naming a folder that does not exist",
        _fit("--calibrate", "no/such/folder"),
        "or a labelled validation folder",
    ),
    Case(
        "fit",
        "`--calibrate` with a validation folder without good/",
        lambda e: _fit("--calibrate", str(e.data / "test" / "spot"))(e),
        "has no good/ folder",
    ),
    Case(
        "report",
        "`--sweep` on a folder without nodes.csv",
        lambda e: ["report", "--sweep", str(e.data), "--out", e.p("rep")],
        "nodes.csv",
    ),
    Case(
        "report",
        "`--model` without `--data`",
        lambda e: ["report", "--model", str(e.model), "--out", e.p("rep")],
        "--model needs --data",
    ),
    Case(
        "serve",
        "a model file that does not exist",
        lambda e: ["serve", "--model", e.p("missing.stratad"), "--port", "0"],
        "not found",
    ),
]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    root = tmp_path_factory.mktemp("bad")
    data = make_mvtec(root / "mvtec", n_train=16)
    model = root / "model.stratad"
    made = [
        stratad(
            "fit",
            "--data",
            str(data),
            "--nodes",
            "blocks.2",
            "-p",
            "coreset_size=50",
            "--out",
            str(model),
            *SMALL,
        ),
        stratad(
            "fit", "--data", str(data), "--nodes", "blocks.1", "--out", str(root / "other.stratad"), *SMALL
        ),
        stratad(
            "fit",
            "--data",
            str(data),
            "--detector",
            "gde",
            "--nodes",
            "blocks.6",
            "--patch-size",
            "32",
            "--patch-stride",
            "16",
            "--out",
            str(root / "patches.stratad"),
            *SMALL,
        ),
        stratad(
            "predict",
            "--model",
            str(model),
            str(data / "test" / "spot"),
            "--out",
            str(root / "pred"),
            "--no-progress",
        ),
        stratad("select", "--data", str(data), "--out", str(root / "sel"), "--defects", "cutpaste", *SELECT),
        stratad("sweep", "--data", str(data), "--out", str(root / "sw"), *SELECT),
    ]
    for result in made:
        assert result.returncode == 0, result.stderr
    return Env(root, data, model)


SEEN: dict[int, str] = {}


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c.command}: {c.what}" for c in CASES])
def test_bad_input_gives_one_error_line(env: Env, index: int) -> None:
    case = CASES[index]
    if case.needs_no_cuda and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    (env.root / "never.stratad").unlink(missing_ok=True)  # an earlier case's failure must not leak here
    line = error_line(stratad(*case.args(env)))
    assert case.needle in line, line
    assert not (env.root / "never.stratad").exists()  # no half-written or unwanted model
    SEEN[index] = line.replace(str(env.root), "<tmp>")


def readme_table(messages: dict[int, str]) -> str:
    rows = ["| command | bad input | what the user gets (exit code 1) |", "| --- | --- | --- |"]
    for index, case in enumerate(CASES):
        text = messages.get(index, "(not run here: this machine has a CUDA GPU)").replace("|", "\\|")
        rows.append(f"| `{case.command}` | {case.what} | `{text}` |")
    return "\n".join(rows)


def test_readme_table_is_current() -> None:
    """Runs after the cases above (same module, file order); skipped when they did not all run."""
    expected = len(CASES) - (sum(c.needs_no_cuda for c in CASES) if torch.cuda.is_available() else 0)
    if len(SEEN) < expected:
        pytest.skip("run the whole module to compare the README's bad-input table")
    text = README.read_text()
    start, end = text.index(START) + len(START), text.index(END)
    table = "\n" + readme_table(SEEN) + "\n"
    if os.environ.get("STRATAD_WRITE_README"):
        README.write_text(text[:start] + table + text[end:])
        return
    assert text[start:end] == table, (
        "the README's bad-input table is stale: STRATAD_WRITE_README=1 .venv/bin/python -m pytest "
        "tests/test_bad_input.py"
    )
