"""PANDA: the adapting parameters, the compactness loss, EWC's penalty, SES's normalisation, outlier
exposure, resuming, and the adapted weights loading back with --weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from stratad.adapt.panda import (
    AdaptConfig,
    EWCPenalty,
    PooledFeatures,
    adapt,
    knn_scores,
    pooled,
    ses_scores,
    trainable_names,
)
from stratad.backbones import build_backbone
from stratad.data.datasets import DataSource
from stratad.errors import StratadError


def _images(n: int, seed: int, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)


def test_the_last_two_stages_adapt_and_the_classifier_never() -> None:
    lite = build_backbone("efficientnet_lite0", weights="random")
    names = trainable_names(lite)
    assert names[0].startswith("blocks.5.") and names[-1] == "bn2.bias"
    assert not any(n.startswith(("classifier.", "blocks.4.", "conv_stem")) for n in names)
    resnet = build_backbone("resnet18", weights="random")
    names = trainable_names(resnet)
    assert names[0].startswith("layer3.") and not any(n.startswith(("fc.", "layer2.")) for n in names)
    with pytest.raises(StratadError, match="cannot train the last 9"):
        trainable_names(resnet, 9)


def test_the_compactness_loss_falls_and_only_the_last_stages_move() -> None:
    backbone = build_backbone("efficientnet_lite0")
    before = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    seen: list[int] = []
    result = adapt(
        backbone, _images(12, 0), AdaptConfig(epochs=4, batch_size=4, lr=0.1, clip=1.0),
        progress=lambda e, n, loss, spread, s: seen.append(e),
    )  # fmt: skip
    assert seen == [1, 2, 3, 4] and result.losses[-1] < result.losses[0]
    assert len(result.spread) == 5 and result.spread[-1] < result.spread[0]  # features gather
    moved = {k for k, v in result.state.items() if not torch.equal(v, before[k])}
    assert moved and all(k.startswith(("blocks.5.", "blocks.6.", "conv_head.", "bn2.")) for k in moved)
    assert not any("running_mean" in k or "running_var" in k for k in moved)  # BatchNorm frozen


def test_ewc_penalty_is_zero_at_the_start_and_grows_with_the_move() -> None:
    model = torch.nn.Linear(3, 2)
    fisher = {"weight": torch.full((2, 3), 2.0), "bias": torch.ones(2)}
    penalty = EWCPenalty(model, ["weight", "bias"], fisher, lam=10.0)
    assert float(penalty().detach()) == 0.0
    with torch.no_grad():
        model.weight += 0.1
    assert float(penalty().detach()) == pytest.approx(10.0 / 2 * 2.0 * 6 * 0.01)
    with torch.no_grad():
        model.bias -= 0.5
    assert float(penalty().detach()) == pytest.approx(10.0 / 2 * (2.0 * 6 * 0.01 + 2 * 0.25))


def test_ses_divides_by_the_held_out_mean_and_takes_the_maximum() -> None:
    backbone = build_backbone("efficientnet_lite0", weights="random")
    train, test = _images(10, 1), _images(3, 2)
    names = trainable_names(backbone)
    first = {n: t.clone() for n, t in backbone.model.state_dict().items() if n in names}
    second = {n: t * 1.01 for n, t in first.items()}
    scores = ses_scores(backbone, [(1, first), (2, second)], train, test, holdout=0.2, seed=5)
    order = torch.randperm(10, generator=torch.Generator().manual_seed(5))
    held, fit = order[:2], order[2:]
    by_hand = []
    for state in (first, second):
        backbone.model.load_state_dict(state, strict=False)
        features = PooledFeatures(backbone, torch.device("cpu"))
        bank = pooled(features, train[fit])
        norm = knn_scores(bank, pooled(features, train[held])).mean()
        by_hand.append((knn_scores(bank, pooled(features, test)) / norm).numpy())
    np.testing.assert_allclose(scores, np.maximum(*by_hand), rtol=1e-6)


def test_knn_score_is_the_sum_of_the_two_nearest_squared_distances() -> None:
    bank = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 5.0]])
    assert knn_scores(bank, torch.tensor([[1.0, 0.0]])).tolist() == [1.0 + 4.0]


def test_outlier_exposure_trains_a_head_against_the_outliers() -> None:
    backbone = build_backbone("efficientnet_lite0")
    cfg = AdaptConfig(epochs=2, batch_size=4, outlier_exposure=True)
    result = adapt(backbone, _images(8, 0), cfg, outliers=_images(6, 3))
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    with pytest.raises(StratadError, match="needs outlier images"):
        adapt(build_backbone("efficientnet_lite0"), _images(8, 0), cfg)


def test_ewc_uses_the_pretrained_classifier_and_refuses_an_untrained_one() -> None:
    cfg = AdaptConfig(epochs=2, batch_size=4, lr=0.1, clip=1.0, variant="ewc")  # type: ignore[arg-type]
    free = AdaptConfig(epochs=2, batch_size=4, lr=0.1, clip=1.0)
    train = _images(8, 0)
    held = adapt(build_backbone("efficientnet_lite0"), train, cfg, fisher_images=_images(3, 9))
    loose = adapt(build_backbone("efficientnet_lite0"), train, free)
    assert held.losses[-1] > loose.losses[-1]  # the penalty grows as the weights move
    from stratad.adapt.panda import fisher_diagonal

    backbone = build_backbone("efficientnet_lite0")
    names = trainable_names(backbone)
    fisher = fisher_diagonal(backbone, names, _images(3, 9), seed=0, device=torch.device("cpu"))
    assert set(fisher) == set(names) and all(float(f.min()) >= 0 for f in fisher.values())
    assert sum(float(f.sum()) for f in fisher.values()) > 0
    with pytest.raises(StratadError, match="classifier is not pretrained"):
        adapt(build_backbone("efficientnet_lite0", weights="random"), train, cfg)
    oe = AdaptConfig(epochs=1, outlier_exposure=True, variant="ses")  # type: ignore[arg-type]
    with pytest.raises(StratadError, match="is for the compactness loss"):
        adapt(build_backbone("efficientnet_lite0"), train, oe, outliers=_images(4, 2))


def test_a_killed_run_resumes_to_the_same_weights(tmp_path: Path) -> None:
    cfg = AdaptConfig(epochs=3, batch_size=4, lr=0.1, clip=1.0, variant="ses")  # type: ignore[arg-type]
    train = _images(8, 0)
    whole = adapt(build_backbone("efficientnet_lite0"), train, cfg)

    def stop(epoch: int, *_: float) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    resume = tmp_path / "a.resume.pt"
    with pytest.raises(KeyboardInterrupt):
        adapt(build_backbone("efficientnet_lite0"), train, cfg, progress=stop, resume=resume)
    assert resume.is_file()
    again = adapt(build_backbone("efficientnet_lite0"), train, cfg, resume=resume)
    assert again.losses == whole.losses, (again.losses, whole.losses)
    assert len(again.checkpoints) == 3
    assert all(torch.equal(whole.state[k], again.state[k]) for k in whole.state)
    other = AdaptConfig(epochs=3, batch_size=4, lr=0.2, clip=1.0, variant="ses")  # type: ignore[arg-type]
    with pytest.raises(StratadError, match="other settings or data"):
        adapt(build_backbone("efficientnet_lite0"), train, other, resume=resume)


def test_adapted_weights_reload_with_weights_and_score_identically(tiny_mvtec: Path, tmp_path: Path) -> None:
    from stratad.pipeline import Pipeline
    from stratad.workflows import adapt_to_file

    out = tmp_path / "adapted.safetensors"
    source = DataSource(root=tiny_mvtec)
    run = adapt_to_file(source, out, image_size=64, params={"epochs": "2", "batch_size": "4", "lr": "0.1"})
    assert out.is_file() and not out.with_name(out.name + ".resume.pt").exists()
    adapted = build_backbone("efficientnet_lite0")
    adapted.model.load_state_dict(run.result.state)
    loaded = build_backbone("efficientnet_lite0", weights=out)
    split = source.load()
    a = Pipeline(detector="dn2", image_size=64, weights=str(out)).fit(split.train).predict(split.test)
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in adapted.model.state_dict().items())
    b = Pipeline(detector="dn2", image_size=64, weights=str(out)).fit(split.train).predict(split.test)
    np.testing.assert_array_equal(a.image_scores, b.image_scores)
    original = Pipeline(detector="dn2", image_size=64).fit(split.train).predict(split.test)
    assert not np.array_equal(a.image_scores, original.image_scores)  # the adaptation changed something
    ses_out = tmp_path / "ses.safetensors"
    ses = adapt_to_file(
        source, ses_out, image_size=64, params={"epochs": "2", "batch_size": "4", "variant": "ses"}
    )
    from stratad.adapt import load_ses_checkpoints

    loaded_ses = load_ses_checkpoints(tmp_path / "ses.ses.safetensors")
    assert [e for e, _ in loaded_ses] == [1, 2]
    assert all(torch.equal(loaded_ses[1][1][k], v) for k, v in ses.result.checkpoints[1][1].items())
    with pytest.raises(StratadError, match=r"must be a \.safetensors file"):
        adapt_to_file(source, tmp_path / "x.pt")
    with pytest.raises(StratadError, match="--method must be"):
        adapt_to_file(source, tmp_path / "x.safetensors", method="svdd")
