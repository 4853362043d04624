from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from stratad.backbones import BackboneSource, build_backbone, list_backbones, register_backbone
from stratad.backbones.registry import IMAGENET_MEAN, IMAGENET_STD
from stratad.errors import BackboneError, WeightsNotFoundError

EXPECTED = {
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "resnet18",
    "resnet50",
    "wide_resnet50_2",
    "densenet201",
    *(f"efficientnet_b{i}" for i in range(8)),
}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_registry_lists_every_builtin_backbone() -> None:
    names = list_backbones()
    assert set(names) >= EXPECTED
    assert names == sorted(names)


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        register_backbone("resnet18")(lambda weights: None)  # type: ignore[arg-type,return-value]


def test_unknown_backbone_suggests_a_close_name() -> None:
    with pytest.raises(BackboneError, match="resnet18"):
        build_backbone("resnet19", weights="random")


def test_random_weights_are_seeded_and_leave_the_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = build_backbone("resnet18", weights="random", seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = build_backbone("resnet18", weights="random", seed=3)
    c = build_backbone("resnet18", weights="random", seed=4)
    assert _same_weights(a.model, b.model)
    assert not _same_weights(a.model, c.model)
    assert not a.model.training
    assert a.source is BackboneSource.torchvision and a.source == "torchvision"
    assert (a.mean, a.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert a.weights == "random (seed 3)"


def _hub_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    return tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"


def test_missing_hub_weights_name_the_expected_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _hub_in(tmp_path, monkeypatch)
    with pytest.raises(WeightsNotFoundError) as error:
        build_backbone("resnet18")
    message = str(error.value)
    assert str(expected) in message
    assert "--weights PATH" in message and "--weights random" in message


def test_imagenet_weights_load_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _hub_in(tmp_path, monkeypatch)
    expected.parent.mkdir(parents=True)
    reference = build_backbone("resnet18", weights="random", seed=5)
    torch.save(reference.model.state_dict(), expected)
    loaded = build_backbone("resnet18")
    assert _same_weights(loaded.model, reference.model)
    assert str(expected) in loaded.weights


@pytest.mark.parametrize("layout", ["plain.pth", "nested.pt", "plain.safetensors"])
def test_user_weights_file_round_trip(tmp_path: Path, layout: str) -> None:
    reference = build_backbone("resnet18", weights="random", seed=1)
    state = reference.model.state_dict()
    path = tmp_path / layout
    if layout.startswith("nested"):
        # A training checkpoint: wrapped, with DataParallel prefixes and bookkeeping entries.
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    loaded = build_backbone("resnet18", weights=path, seed=2)
    assert _same_weights(loaded.model, reference.model)
    assert str(path) in loaded.weights


def test_mismatched_weights_file_lists_keys(tmp_path: Path) -> None:
    state = build_backbone("resnet18", weights="random").model.state_dict()
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(BackboneError, match=r"fc\.bias.*extra\.weight"):
        build_backbone("resnet18", weights=path)


def test_missing_or_unsupported_weights_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_backbone("resnet18", weights=tmp_path / "absent.pth")
    with pytest.raises(BackboneError, match="imagenet"):
        build_backbone("resnet18", weights=tmp_path / "weights.ckpt")


def test_densenet_hub_file_with_legacy_keys_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # torchvision's released DenseNet files still use "norm.1"-style keys inside dense layers.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    reference = build_backbone("densenet201", weights="random", seed=7)
    legacy = {
        re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", key): value
        for key, value in reference.model.state_dict().items()
        if not key.endswith("num_batches_tracked")  # those files predate the counter
    }
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "hub" / "checkpoints" / "densenet201-c1103571.pth"
    path.parent.mkdir(parents=True)
    torch.save(legacy, path)
    assert _same_weights(build_backbone("densenet201").model, reference.model)


def test_self_supervised_checkpoint_layouts_load_with_a_note(tmp_path: Path) -> None:
    """MoCo (``module.encoder_q.*`` with an MLP fc and the momentum encoder), SwAV (projection head
    and prototypes beside the encoder) and DINO (the bare encoder without fc): the encoder loads, the
    heads are dropped, the classifier stays the model's own, and the backbone says so."""
    reference = build_backbone("resnet18", weights="random", seed=3).model.state_dict()
    encoder = {k: v for k, v in reference.items() if not k.startswith("fc.")}
    moco = {
        **{f"module.encoder_q.{k}": v for k, v in encoder.items()},
        **{f"module.encoder_k.{k}": v + 1 for k, v in encoder.items()},
        "module.encoder_q.fc.0.weight": torch.zeros(512, 512),
        "module.encoder_q.fc.2.weight": torch.zeros(128, 512),
        "module.queue": torch.zeros(128, 10),
    }
    swav = {
        **encoder,
        "projection_head.0.weight": torch.zeros(2048, 512),
        "prototypes.weight": torch.zeros(30, 128),
    }
    for name, state in (("moco", {"state_dict": moco, "epoch": 200}), ("swav", swav), ("dino", encoder)):
        path = tmp_path / f"{name}.pth"
        torch.save(state, path)
        loaded = build_backbone("resnet18", weights=path)
        got = loaded.model.state_dict()
        assert all(torch.equal(got[k], v) for k, v in encoder.items()), name
        assert "classifier fc kept from initialisation" in loaded.weights, loaded.weights
    assert "encoder encoder_q" in build_backbone("resnet18", weights=tmp_path / "moco.pth").weights
    assert (
        "dropped heads projection_head, prototypes"
        in build_backbone("resnet18", weights=tmp_path / "swav.pth").weights
    )
