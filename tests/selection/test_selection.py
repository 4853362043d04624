"""Feature selection on a constructed backbone whose best node is known."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import make_mvtec
from torch import nn

from stratad.backbones import list_backbones, register_backbone
from stratad.backbones.registry import Backbone, BackboneSource, WeightSource
from stratad.data import load_dataset
from stratad.errors import DataError, StratadError
from stratad.selection import SweepConfig, build_validation_set, choose, select_features, selection_split
from stratad.selection.sweep import NodeResult


class Twin(nn.Module):
    """``informative`` sees the image; ``blind`` outputs zeros whatever the input; ``add`` = informative."""

    def __init__(self) -> None:
        super().__init__()
        self.informative = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.blind = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        nn.init.zeros_(self.blind.weight)
        nn.init.zeros_(self.blind.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.informative(x) + self.blind(x)


if "twin_test" not in list_backbones():

    @register_backbone("twin_test")
    def twin_test(weights: WeightSource) -> Backbone:
        return Backbone(
            "twin_test", Twin(), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "random", BackboneSource.torchvision
        )


def _twin_sweep(**overrides: object) -> SweepConfig:
    """A sweep of the twin backbone's nodes with a small PatchCore, at 64 px."""
    settings: dict[str, object] = {
        "backbone": "twin_test",
        "weights": "random",
        "nodes": ["all"],
        "detector": "patchcore",
        "detector_params": {"coreset_size": 50},
        "image_size": 64,
        "batch_size": 8,
    }
    return SweepConfig(**{**settings, **overrides})  # type: ignore[arg-type]


def test_split_is_disjoint_and_deterministic(tmp_path: Path) -> None:
    train = load_dataset(make_mvtec(tmp_path, n_train=20), "mvtec").train
    a, b, c = selection_split(train, seed=1), selection_split(train, seed=1), selection_split(train, seed=2)
    parts = [{r.path for r in p} for p in (a.fit, a.val_good, a.val_defect)]
    assert sum(len(p) for p in parts) == 20 and len(set().union(*parts)) == 20
    assert (len(a.fit), len(a.val_good), len(a.val_defect)) == (14, 2, 4)
    assert [r.path for r in a.fit] == [r.path for r in b.fit]
    assert [r.path for r in a.fit] != [r.path for r in c.fit]
    with pytest.raises(DataError, match="at least 4"):
        selection_split(train[:3])


def test_validation_set_masks_are_exact(tmp_path: Path) -> None:
    split = selection_split(load_dataset(make_mvtec(tmp_path, n_train=20), "mvtec").train)
    val = build_validation_set(split, "simple", 64, seed=0)
    assert val.images.shape == (6, 3, 64, 64) and val.images.dtype == torch.uint8
    assert val.labels.tolist() == [0, 0, 1, 1, 1, 1]
    assert not val.masks[:2].any() and all(m.any() for m in val.masks[2:])
    # Simple defects are black rectangles: exactly the masked pixels are zero.
    for img, mask in zip(val.images[2:], val.masks[2:], strict=True):
        assert (img.numpy().max(axis=0) == 0)[mask].all()


def test_selection_picks_the_informative_node_and_resumes(tmp_path: Path) -> None:
    train = load_dataset(make_mvtec(tmp_path, n_train=20), "mvtec").train
    cfg = _twin_sweep()
    out = tmp_path / "sel"
    result = select_features(train, cfg, out, defects="simple")
    assert result.node == "informative"
    with open(out / "nodes.csv") as handle:
        rows = {r["node"]: r for r in csv.DictReader(handle)}
    assert set(rows) == {"informative", "blind", "add"}
    assert float(rows["informative"]["p_h"]) > float(rows["blind"]["p_h"]) + 0.2
    assert float(rows["blind"]["image_auroc"]) == 0.5
    assert rows["add"]["same_as"] == "informative"
    assert json.loads((out / "selected.json").read_text())["node"] == "informative"
    # Resuming finds every node done: nothing is recomputed or appended twice.
    select_features(train, cfg, out, defects="simple")
    with open(out / "nodes.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 3
    with pytest.raises(Exception, match="other settings"):
        select_features(train, SweepConfig(**{**cfg.__dict__, "image_size": 96}), out, defects="simple")


def test_choose_orders_by_criterion() -> None:
    rows = [
        NodeResult(node="a", p_h=0.6, image_auroc=0.9),
        NodeResult(node="b", p_h=0.8, image_auroc=0.7),
        NodeResult(node="c", p_h=None, image_auroc=0.8),
    ]
    assert choose(rows, "p_h").node == "b"
    assert choose(rows, "p_cls").node == "a"
    assert [r.node for r in choose(rows, "p_cls", top_k=2).top] == ["a", "c"]
    assert np.isclose(choose(rows).value, 0.8)


def test_choose_ranks_a_node_once_and_names_its_twins() -> None:
    rows = [
        NodeResult(node="a", p_h=0.6, image_auroc=0.9),
        NodeResult(node="a.se", p_h=0.6, image_auroc=0.9, same_as="a"),
        NodeResult(node="b", p_h=0.5, image_auroc=0.7),
    ]
    result = choose(rows, "p_h", top_k=2)
    assert [r.node for r in result.top] == ["a", "b"]
    assert result.aliases == {"a": ["a.se"]}
    assert len(result.table) == 3  # nodes.csv keeps every name


def test_parallel_workers_give_identical_results(tmp_path: Path) -> None:
    train = load_dataset(make_mvtec(tmp_path, n_train=20), "mvtec").train
    serial = select_features(train, _twin_sweep(workers=1), tmp_path / "serial", defects="cutpaste")
    parallel = select_features(train, _twin_sweep(workers=2), tmp_path / "parallel", defects="cutpaste")
    columns = ("node", "image_auroc", "aupro_30", "p_h")
    assert [[r.row()[c] for c in columns] for r in serial.table] == [
        [r.row()[c] for c in columns] for r in parallel.table
    ]


def test_sweep_options_fast_by_default_exact_on_request() -> None:
    from stratad.detectors import detector_class
    from stratad.selection.sweep import sweep_detector_params

    fast = dict(detector_class("patchcore").sweep_params)
    assert fast, "PatchCore declares cheaper sweep options"
    cfg = SweepConfig(detector="patchcore", detector_params={"coreset_size": 7})
    assert sweep_detector_params(cfg) == {**fast, "coreset_size": 7}
    cfg.exact = True
    assert sweep_detector_params(cfg) == {"coreset_size": 7}
    # The benchmarks' reference: the exact options, every pixel, maps still pooled.
    from stratad.detectors.patchcore import PatchCoreConfig
    from stratad.selection.sweep import cached_features, effective_pixel_stride, pooled_exact

    reference = pooled_exact(SweepConfig(detector_params={"coreset_size": 7}, max_grid=16))
    assert sweep_detector_params(reference) == {
        "coreset_size": 7,
        "projection_dim": PatchCoreConfig.projection_dim,
    }
    assert effective_pixel_stride(reference) == 1 and cached_features(reference).max_grid == 16
    # an option the user sets always wins over the sweep's default
    cfg = SweepConfig(detector="patchcore", detector_params={"projection_dim": 99})
    assert sweep_detector_params(cfg)["projection_dim"] == 99


def test_fast_sweep_metrics_on_a_pixel_lattice(tmp_path: Path) -> None:
    from stratad.errors import StratadError
    from stratad.selection.sweep import effective_pixel_stride

    assert effective_pixel_stride(SweepConfig()) == 2
    assert effective_pixel_stride(SweepConfig(exact=True)) == 1
    with pytest.raises(StratadError, match="pixel_stride"):
        effective_pixel_stride(SweepConfig(pixel_stride=0))
    train = load_dataset(make_mvtec(tmp_path, n_train=20), "mvtec").train
    rows = {}
    for stride in (1, 2):
        out = tmp_path / f"stride{stride}"
        rows[stride] = select_features(
            train, _twin_sweep(nodes=["informative"], pixel_stride=stride), out, defects="simple"
        ).table[0]
        assert json.loads((out / "sweep.json").read_text())["pixel_stride"] == stride
    assert rows[1].image_auroc == rows[2].image_auroc
    assert rows[1].aupro != rows[2].aupro  # other pixels...
    assert rows[1].aupro == pytest.approx(rows[2].aupro, abs=0.03)  # ...same area
    with pytest.raises(StratadError, match="pixel_stride"):
        select_features(
            train, _twin_sweep(nodes=["informative"], pixel_stride=-1), tmp_path / "bad", defects="simple"
        )
    assert not (tmp_path / "bad").exists()


def test_memory_budget_and_workers_resolve() -> None:
    from stratad.errors import StratadError
    from stratad.selection.sweep import memory_budget_bytes, resolve_workers

    assert memory_budget_bytes(SweepConfig(memory_budget_mb=100)) == 100 * 2**20
    assert memory_budget_bytes(SweepConfig(memory_budget_mb=0)) >= 512 * 2**20
    with pytest.raises(StratadError, match="memory budget"):
        memory_budget_bytes(SweepConfig(memory_budget_mb=-1))
    assert resolve_workers(3) == 3 and 1 <= resolve_workers(0) <= 4
    with pytest.raises(StratadError, match="workers"):
        resolve_workers(-2)


def test_image_only_detectors_select_by_image_auroc(tmp_path: Path) -> None:
    train = load_dataset(make_mvtec(tmp_path, n_train=20), "mvtec").train
    cfg = _twin_sweep(detector="dn2", detector_params={})
    from stratad.errors import StratadError

    with pytest.raises(StratadError, match="p_cls"):
        select_features(train, cfg, tmp_path / "p_h", defects="simple")
    assert not (tmp_path / "p_h").exists()  # refused before any work
    result = select_features(train, cfg, tmp_path / "p_cls", defects="simple", criterion="p_cls")
    assert result.criterion == "p_cls" and result.node == "informative"


def test_sweep_reports_extraction_and_node_progress(tmp_path: Path) -> None:
    train = load_dataset(make_mvtec(tmp_path, n_train=20), "mvtec").train
    cfg = _twin_sweep(batch_size=4)
    seen: list[tuple[str, int, int]] = []
    select_features(train, cfg, tmp_path / "sel", defects="simple", progress=lambda *a: seen.append(a))
    extraction = [label for label, _, _ in seen if label.startswith("features of")]
    assert extraction[0] == "features of 4/20 images" and extraction[-1] == "features of 20/20 images"
    assert seen[-1][1:] == (3, 3) and {label for label, _, _ in seen} >= {"informative", "blind", "add"}


def test_a_non_default_aupro_limit_keeps_its_column(tmp_path: Path) -> None:
    train = load_dataset(make_mvtec(tmp_path, n_train=20), "mvtec").train
    select_features(train, _twin_sweep(fpr_limit=0.1), tmp_path / "sel", defects="simple")
    with open(tmp_path / "sel" / "nodes.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert "aupro_10" in rows[0] and "aupro_30" not in rows[0]
    assert all(0.0 < float(r["aupro_10"]) <= 1.0 for r in rows)
    # P_h is the harmonic mean of image AUROC and the AU-PRO at the limit actually used.
    for r in rows:
        a, b = float(r["image_auroc"]), float(r["aupro_10"])
        assert abs(float(r["p_h"]) - 2 * a * b / (a + b)) < 1e-5


def test_max_grid_zero_keeps_every_node_at_its_own_resolution() -> None:
    from stratad.selection.sweep import CachedFeatures

    x = torch.rand(2, 4, 64, 48)
    assert CachedFeatures(0)(x).shape == (2, 4, 64, 48)
    assert CachedFeatures(16)(x).shape == (2, 4, 16, 16)
    assert CachedFeatures(0)(x).dtype == torch.float16


def test_an_exact_sweep_scores_every_node_at_its_own_resolution_in_float32() -> None:
    """--exact ignores --max-grid: nodes are cached as a fitted pipeline sees them."""
    from stratad.selection.sweep import cached_features

    x = torch.rand(2, 4, 64, 48)
    exact = cached_features(SweepConfig(exact=True, max_grid=16))(x)
    assert exact.shape == (2, 4, 64, 48) and exact.dtype == torch.float32 and torch.equal(exact, x)
    fast = cached_features(SweepConfig(max_grid=16))(x)
    assert fast.shape == (2, 4, 16, 16) and fast.dtype == torch.float16
    # the stamp says what is cached: exact folders made when --exact still pooled do not resume
    from stratad.backbones import build_backbone
    from stratad.selection.sweep import EvalSet, sweep_stamp

    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    evaluation = EvalSet(images, np.array([0, 1]), [np.zeros((32, 32), bool)] * 2)
    backbone = build_backbone("twin_test", weights="random")
    assert (
        sweep_stamp(SweepConfig(exact=True, max_grid=16), images, evaluation, backbone, {})["max_grid"] == 0
    )
    assert sweep_stamp(SweepConfig(max_grid=16), images, evaluation, backbone, {})["max_grid"] == 16


def test_the_default_is_replaced_only_by_a_clear_winner(tmp_path: Path) -> None:
    """Paired bootstrap on the validation set: an informative node beats a blind one in every
    resample; the blind one never beats the informative one, so that default stays."""
    from stratad.data import load_dataset as load
    from stratad.selection.confirm import confirm_against_default
    from stratad.selection.sweep import EvalSet, load_uint8_images

    train = load(make_mvtec(tmp_path, n_train=20), "mvtec").train
    cfg = _twin_sweep()
    split = selection_split(train, seed=0)
    val = build_validation_set(split, "simple", 64, seed=0)
    images = load_uint8_images(split.fit, 64)
    evaluation = EvalSet(val.images, val.labels, list(val.masks))
    clear = confirm_against_default(cfg, images, evaluation, "informative", "blind", resamples=40)
    assert (clear.win_rate, clear.chosen) == (1.0, "informative")
    kept = confirm_against_default(cfg, images, evaluation, "blind", "informative", resamples=40)
    assert (kept.win_rate, kept.chosen) == (0.0, "informative")


def test_a_folder_holds_one_split_or_averaged_splits_never_both(tmp_path: Path) -> None:
    train = load_dataset(make_mvtec(tmp_path, n_train=20), "mvtec").train
    cfg = _twin_sweep(nodes=["informative"])
    select_features(train, cfg, tmp_path / "one", defects="simple")
    with pytest.raises(StratadError, match="one split"):
        select_features(train, cfg, tmp_path / "one", defects="simple", folds=2)
    select_features(train, cfg, tmp_path / "two", defects="simple", folds=2)
    with pytest.raises(StratadError, match="averaged splits"):
        select_features(train, cfg, tmp_path / "two", defects="simple")


def test_string_options_become_their_enums() -> None:
    from stratad.synth.cutpaste import CutPasteConfig, CutPasteGeometry
    from stratad.synth.nsa import CategoryType, NSAConfig, PatchSampling

    assert CutPasteConfig(geometry="li").geometry is CutPasteGeometry.li  # type: ignore[arg-type]
    nsa = NSAConfig(sampling="uniform", category_type="texture")  # type: ignore[arg-type]
    assert nsa.sampling is PatchSampling.uniform and nsa.category_type is CategoryType.texture
    with pytest.raises(DataError, match="geometry must be one of paper, li"):
        CutPasteConfig(geometry="square")  # type: ignore[arg-type]


def test_halving_schedule_keeps_a_third_and_triples_the_budget() -> None:
    from stratad.selection.halving import schedule

    assert [(r.budget, r.candidates) for r in schedule(108)] == [
        (1 / 27, 108),
        (1 / 9, 36),
        (1 / 3, 12),
        (1.0, 4),
    ]
    assert [(r.budget, r.candidates) for r in schedule(108, rounds=3)] == [
        (1 / 9, 108),
        (1 / 3, 36),
        (1.0, 12),
    ]
    assert [(r.budget, r.candidates) for r in schedule(20)] == [(1 / 3, 20), (1.0, 7)]
    assert [(r.budget, r.candidates) for r in schedule(5)] == [(1.0, 5)]


def test_halving_ends_with_the_exhaustive_rows_of_the_promoted_nodes_and_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last round runs the full budget: its rows equal the exhaustive sweep's for those nodes
    (with the features of the earlier rounds' images reused), and the default combination is scored
    in every round."""
    from stratad.selection.halving import round_data
    from stratad.selection.sweep import EvalSet

    train = load_dataset(make_mvtec(tmp_path, n_train=40), "mvtec").train
    cfg = SweepConfig(
        weights="random", nodes=["blocks.2*"], image_size=64, batch_size=8, with_default=True,
        detector_params={"coreset_size": 60},
    )  # fmt: skip
    from stratad.selection import sweep as sweep_module

    memos: list[sweep_module.FeatureMemo] = []

    class Spy(sweep_module.FeatureMemo):
        def __init__(self) -> None:
            super().__init__()
            memos.append(self)

    monkeypatch.setattr(sweep_module, "FeatureMemo", Spy)
    halved = select_features(train, cfg, tmp_path / "halved", defects="simple", halving=True)
    assert memos and memos[0].reused > 0  # the last round took the first round's images from the memo
    exhaustive = select_features(train, cfg, tmp_path / "all", defects="simple")
    rounds = sorted(p.name for p in (tmp_path / "halved" / "rounds").iterdir())
    assert rounds == ["0", "1"]
    full = {r.node: r for r in exhaustive.table}
    last = halved.table
    singles = [r for r in last if "+" not in r.node]
    distinct = [r for r in exhaustive.table if "+" not in r.node and not r.same_as]
    assert len(singles) == -(-len(distinct) // 3)  # two rounds: a third of the distinct nodes
    assert any("+" in r.node for r in last)  # the default combination reached the last round
    for row in last:
        assert (row.image_auroc, row.p_h) == (full[row.node].image_auroc, full[row.node].p_h)
    assert halved.validation["halving"] is True
    with open(tmp_path / "halved" / "nodes.csv", newline="") as handle:  # the last round, at the top
        assert [r["node"] for r in csv.DictReader(handle)] == [r.node for r in last]
    with pytest.raises(StratadError, match="holds a --halving selection"):
        select_features(train, cfg, tmp_path / "halved", defects="simple")
    with pytest.raises(StratadError, match="holds an exhaustive selection"):
        select_features(train, cfg, tmp_path / "all", defects="simple", halving=True)
    with pytest.raises(StratadError, match="one split"):
        select_features(train, cfg, tmp_path / "x", defects="simple", halving=True, folds=2)
    # A round's data: seeded subsets, the pixel images renumbered with their masks.
    images = torch.zeros(30, 3, 8, 8, dtype=torch.uint8)
    labels = np.array([0] * 10 + [1] * 20)
    masks = [np.full((8, 8), i, dtype=np.int64) for i in range(10, 30)]
    ev = EvalSet(torch.arange(30).view(30, 1, 1, 1).expand(30, 3, 8, 8), labels, masks, np.arange(10, 30))
    data = round_data(images, ev, 1 / 9, seed=0)
    fit, sub = data.train_images, data.evaluation
    assert len(fit) == 8 and (sub.labels == 0).sum() == 8 and (sub.labels == 1).sum() == 8
    assert sub.pixel_images is not None
    larger = round_data(images, ev, 1 / 3, seed=0)  # a larger budget holds the smaller one's images
    assert set(data.train_keys) < set(larger.train_keys) and set(data.test_keys) < set(larger.test_keys)
    assert torch.equal(sub.images, ev.images[torch.from_numpy(data.test_keys)])
    for position, mask in zip(sub.pixel_images, sub.masks, strict=True):
        assert int(sub.images[position, 0, 0, 0]) == int(mask[0, 0])


def test_the_default_combination_scores_the_same_in_the_chunk_pass_or_its_own(tmp_path: Path) -> None:
    """With one chunk the combination's nodes ride along in its backbone pass; with many chunks they
    get a pass of their own: the rows are identical."""
    train = load_dataset(make_mvtec(tmp_path, n_train=20), "mvtec").train
    cfg = SweepConfig(
        weights="random", nodes=["blocks.2*"], image_size=64, batch_size=8, with_default=True,
        detector_params={"coreset_size": 40},
    )  # fmt: skip
    one = select_features(train, cfg, tmp_path / "one", defects="simple").table
    cfg.memory_budget_mb = 1  # a chunk per node
    many = select_features(train, cfg, tmp_path / "many", defects="simple").table
    # (twins are found within a chunk only: same_as differs, their values do not)
    neutral = {"fit_s": 0, "score_s": 0, "same_as": ""}
    assert [r.row() | neutral for r in one] == [r.row() | neutral for r in many]
    assert any("+" in r.node for r in one)


def test_pairs_of_the_best_nodes_and_a_defect_mixture(tmp_path: Path) -> None:
    """--pairs 3 adds the 3 pairs of the 3 best single nodes as candidates (the singles' rows
    unchanged); a mixture deals the defective validation images to its kinds in turn."""
    from stratad.selection.config import top_pairs

    train = load_dataset(make_mvtec(tmp_path, n_train=20), "mvtec").train
    cfg = SweepConfig(
        weights="random", nodes=["blocks.2*"], image_size=64, batch_size=8,
        detector_params={"coreset_size": 40},
    )  # fmt: skip
    plain = select_features(train, cfg, tmp_path / "plain", defects="simple").table
    cfg.pairs = 3
    paired = select_features(train, cfg, tmp_path / "paired", defects="simple").table
    expected = top_pairs(plain, 3, "p_h")
    assert len(expected) == 3 and [r.node for r in paired[len(plain) :]] == expected
    neutral = {"fit_s": 0, "score_s": 0}
    assert [r.row() | neutral for r in paired[: len(plain)]] == [r.row() | neutral for r in plain]
    with pytest.raises(StratadError, match="one split"):
        select_features(train, cfg, tmp_path / "x", defects="simple", folds=2)
    with pytest.raises(StratadError, match="at least 2"):
        select_features(train, SweepConfig(**{**cfg.__dict__, "pairs": 1}), tmp_path / "y", defects="simple")
    # the mixture: 4 defective images dealt to simple, cutpaste, simple, cutpaste
    split = selection_split(train, seed=0)
    mixed = build_validation_set(split, "simple,cutpaste", 64, seed=0)
    only_simple = build_validation_set(split, "simple", 64, seed=0)
    assert mixed.labels.tolist() == only_simple.labels.tolist()
    black = [
        bool((img.numpy().max(axis=0) == 0)[mask].all())
        for img, mask in zip(mixed.images[2:], mixed.masks[2:], strict=True)
    ]
    assert black == [True, False, True, False]  # simple defects are black, cutpaste ones are not
    with pytest.raises(Exception, match="twice"):
        build_validation_set(split, "simple,simple", 64, seed=0)
    with pytest.raises(StratadError, match="takes the option 'category_typo'"):
        build_validation_set(split, "simple,nsa", 64, seed=0, category_typo="texture")


def test_several_defects_per_validation_image(tmp_path: Path) -> None:
    """Each defect-bound image carries K independent defects; the good images stay as they are."""
    split = selection_split(load_dataset(make_mvtec(tmp_path, n_train=20), "mvtec").train)
    one = build_validation_set(split, "simple", 64, seed=0)
    four = build_validation_set(split, "simple", 64, seed=0, per_image=4)
    assert four.labels.tolist() == [0, 0] + [1] * 16
    assert torch.equal(four.images[:2], one.images[:2])
    masks = four.masks[2:6]  # the four defects of the first defect-bound image differ
    assert len({m.tobytes() for m in masks}) == 4
    with pytest.raises(StratadError, match="at least 1"):
        build_validation_set(split, "simple", 64, seed=0, per_image=0)
    train = load_dataset(make_mvtec(tmp_path / "b", n_train=20), "mvtec").train
    result = select_features(train, _twin_sweep(), tmp_path / "sel", defects="simple", defects_per_image=3)
    # 4 defect-bound images carry the 12 defects: the size checks count images
    assert result.validation["defective"] == 4 and result.validation["defects_per_image"] == 3
    stamp = json.loads((tmp_path / "sel" / "sweep.json").read_text())
    assert stamp["defects_per_image"] == 3


def test_a_trained_detector_selects_nodes_like_any_other(tmp_path: Path) -> None:
    """`select --detector fastflow`: one flow trained per candidate node on the cached features."""
    train = load_dataset(make_mvtec(tmp_path, n_train=20), "mvtec").train
    cfg = SweepConfig(
        weights="random", nodes=["blocks.1", "blocks.2"], image_size=64, batch_size=8, detector="fastflow",
        detector_params={"steps": 20, "flow_steps": 2},
    )  # fmt: skip
    result = select_features(train, cfg, tmp_path / "ff", defects="simple")
    assert [r.node for r in result.table] == ["blocks.1.1.add", "blocks.2.1.add"]
    assert all(0.0 <= r.value("p_h") <= 1.0 for r in result.table)
    assert result.node in ("blocks.1.1.add", "blocks.2.1.add")
