"""Dense pretraining: positive pairs from the views' boxes, the propagation module, DS2's pairs, seeded
and resumable training, and the weights loading back with --weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stratad.backbones import build_backbone
from stratad.errors import StratadError
from stratad.pretrain import PretrainConfig, pretrain
from stratad.pretrain.dense import (
    Propagation,
    centre_distances,
    momentum_at,
    momentum_update,
    pair_loss,
    positive_pairs,
    random_view,
    scale_nodes,
)

SMALL = {"image_size": 64, "batch_size": 4, "inner_dim": 32, "out_dim": 16}


def _images(n: int, seed: int, size: int = 80) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)


def test_pixel_centres_map_back_to_the_image_and_flips_reverse_them() -> None:
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]], dtype=torch.float64)
    d, diag = centre_distances(box, box, 2, 2)
    assert torch.equal(torch.diagonal(d[0]), torch.zeros(4, dtype=torch.float64))
    assert float(diag) == pytest.approx((0.5**2 + 0.5**2) ** 0.5)
    flipped = box[:, [2, 1, 0, 3]]  # the same crop, mirrored: pixel (r, c) shows (r, 1 - c)
    d, _ = centre_distances(box, flipped, 2, 2)
    assert d[0, 0, 1] == 0 and d[0, 1, 0] == 0 and d[0, 2, 3] == 0
    # a crop of the left half: its two columns have centres 0.125 and 0.375 of the image width
    left = torch.tensor([[0.0, 0.0, 0.5, 1.0]], dtype=torch.float64)
    d, _ = centre_distances(left, box, 2, 2)
    assert float(d[0, 0, 0]) == pytest.approx(0.125)


def test_random_views_are_seeded_and_their_boxes_lie_in_the_image() -> None:
    image = torch.rand(3, 50, 70)
    a = random_view(image, 32, torch.Generator().manual_seed(1))
    b = random_view(image, 32, torch.Generator().manual_seed(1))
    assert torch.equal(a.image, b.image) and torch.equal(a.box, b.box)
    assert a.image.shape == (3, 32, 32) and float(a.image.min()) >= 0 and float(a.image.max()) <= 1
    assert float(a.box.min()) >= 0 and float(a.box.max()) <= 1


def test_propagation_weights_values_by_clamped_cosine_to_the_power_gamma() -> None:
    ppm = Propagation(2, gamma=2.0)
    with torch.no_grad():
        ppm.value.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        ppm.value.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # two orthogonal pixels
    torch.testing.assert_close(ppm(x), x)  # cos 0 between them: each keeps only itself
    y = torch.tensor([[1.0, 0.0], [-1.0, 0.0]]).T.reshape(1, 2, 1, 2)  # opposite pixels: clamped to 0
    torch.testing.assert_close(ppm(y), y)
    same = torch.ones(1, 2, 1, 3)
    torch.testing.assert_close(ppm(same), 3 * torch.nn.functional.normalize(same, dim=1))


def test_pair_loss_is_minus_twice_the_mean_cosine_of_the_positive_pairs() -> None:
    q = torch.nn.functional.normalize(torch.randn(1, 4, 1, 2), dim=1)
    positive = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    assert float(pair_loss(q, q, positive)) == pytest.approx(-2.0, abs=1e-5)
    k = torch.nn.functional.normalize(torch.randn(1, 4, 1, 2), dim=1)
    cos = float((q[0, :, 0, 0] * k[0, :, 0, 0]).sum())
    assert float(pair_loss(q, k, positive)) == pytest.approx(-2 * cos, abs=1e-5)


def test_loss_is_minimal_for_identical_views() -> None:
    g = torch.Generator().manual_seed(3)
    q = torch.nn.functional.normalize(torch.randn(2, 8, 4, 4, generator=g), dim=1)
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 2, dtype=torch.float64)
    positive = positive_pairs("pixpro", box, box, 4, 4, PretrainConfig()).float()
    assert torch.equal(positive[0], torch.eye(16))  # identical views: each pixel pairs with itself
    identical = float(pair_loss(q, q, positive))
    assert identical == pytest.approx(-2.0, abs=1e-5)  # the bound: cos <= 1
    for scale in (0.01, 0.1, 1.0):
        other = torch.nn.functional.normalize(q + scale * torch.randn(q.shape, generator=g), dim=1)
        assert float(pair_loss(q, other, positive)) > identical


def test_positive_pairs_of_two_overlapping_views_are_exactly_the_expected_ones() -> None:
    # View a: the top-left quarter; view b: the same quarter shifted right by half its width. On 4 x 4
    # feature maps (bins of 0.125) pixel (r, c) of a has the centre of pixel (r, c - 2) of b; the next
    # nearest centres lie one bin (0.125) apart, beyond PixPro's 0.7 diagonals (0.124) and DS2's 0.1.
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5]], dtype=torch.float64)
    b = torch.tensor([[0.25, 0.0, 0.75, 0.5]], dtype=torch.float64)
    same_place = torch.zeros(16, 16, dtype=torch.bool)
    for r in range(4):
        for c in (2, 3):
            same_place[r * 4 + c, r * 4 + c - 2] = True
    cfg = PretrainConfig()
    assert torch.equal(positive_pairs("pixpro", a, b, 4, 4, cfg)[0], same_place)
    # DS2's second criterion: one-hot features, pixel j of b carries a's pixel 15 - j, so each pixel i
    # of a is most similar to pixel 15 - i of b
    fa = torch.eye(16).T.reshape(1, 16, 4, 4)
    fb = torch.eye(16).flip(0).T.reshape(1, 16, 4, 4)
    expected = same_place.clone()
    expected[torch.arange(16), 15 - torch.arange(16)] = True
    assert torch.equal(positive_pairs("ds2", a, b, 4, 4, cfg, fa, fb)[0], expected)
    # a wider delta takes the horizontal and vertical neighbours too (0.125 apart), not the diagonal
    # ones (0.177): centre of a's (r, c) is ((c + 0.5) / 8, (r + 0.5) / 8), of b's (r, c) ((c + 2.5) / 8, ...)
    near = torch.zeros(16, 16, dtype=torch.bool)
    for i in range(16):
        for j in range(16):
            dr, dc = i // 4 - j // 4, i % 4 - (j % 4 + 2)
            near[i, j] = abs(dr) + abs(dc) <= 1
    wide = positive_pairs("ds2", a, b, 4, 4, PretrainConfig(delta=0.13), fa, fb)[0]
    assert torch.equal(wide, near | expected)
    with pytest.raises(StratadError, match="backbone features"):
        positive_pairs("ds2", a, b, 4, 4, cfg)


def test_momentum_encoder_is_the_exponential_average_of_the_online_weights() -> None:
    online, target = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    with torch.no_grad():
        online.weight.fill_(1.0)
        target.weight.fill_(3.0)
        online.running_mean.fill_(5.0)
    momentum_update(online, target, 0.9)
    torch.testing.assert_close(target.weight, torch.full((3,), 0.9 * 3.0 + 0.1 * 1.0))
    assert torch.equal(target.running_mean, online.running_mean)
    assert momentum_at(0, 100, 0.99) == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99) == pytest.approx(0.995)
    assert momentum_at(100, 100, 0.99) == pytest.approx(1.0)


def test_pixpro_and_ds2_train_seeded_resume_and_load_with_weights(tmp_path: Path) -> None:
    from stratad.workflows import pretrain_to_file

    images = _images(8, 0)
    lite = build_backbone("efficientnet_lite0")
    assert scale_nodes(lite, "pixpro") == ["blocks.6.0.bn3"]  # type: ignore[arg-type]
    assert scale_nodes(lite, "ds2") == ["blocks.5.3.add", "blocks.6.0.bn3"]  # type: ignore[arg-type]
    for method in ("pixpro", "ds2"):
        cfg = PretrainConfig(method=method, epochs=2, **SMALL)  # type: ignore[arg-type]
        a = pretrain(build_backbone("efficientnet_lite0"), images, cfg)
        b = pretrain(build_backbone("efficientnet_lite0"), images, cfg)
        assert all(torch.isfinite(torch.tensor(a.losses))) and a.losses == b.losses
        assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
        assert not torch.equal(
            a.state["blocks.6.0.conv_pwl.weight"], lite.model.state_dict()["blocks.6.0.conv_pwl.weight"]
        )
        assert min(a.positives) > 0
    # DS2 pairs every pixel with at least its most similar pixel of the other view: a 2 x 2 map at
    # 64 px has 4 pixels, each with a top-1 partner
    assert a.positives[0] >= 2 * 2

    def stop(epoch: int, *_: float) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    cfg = PretrainConfig(method="pixpro", epochs=2, **SMALL)  # type: ignore[arg-type]
    images = _images(5, 4)  # 5 images in batches of 4: the last batch of one is skipped every epoch
    whole = pretrain(build_backbone("efficientnet_lite0"), images, cfg)
    resume = tmp_path / "p.resume.pt"
    with pytest.raises(KeyboardInterrupt):
        pretrain(build_backbone("efficientnet_lite0"), images, cfg, progress=stop, resume=resume)
    again = pretrain(build_backbone("efficientnet_lite0"), images, cfg, resume=resume)
    assert again.losses == whole.losses and all(
        torch.equal(again.state[k], whole.state[k]) for k in whole.state
    )
    other = PretrainConfig(method="pixpro", epochs=2, lr=0.1, **SMALL)  # type: ignore[arg-type]
    with pytest.raises(StratadError, match="other settings or data"):
        pretrain(build_backbone("efficientnet_lite0"), images, other, resume=resume)
    # The command's file loads with --weights and holds exactly the trained backbone.
    folder = tmp_path / "imgs"
    folder.mkdir()
    from PIL import Image

    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    out = tmp_path / "pre.safetensors"
    run = pretrain_to_file(folder, out, params={"epochs": "1", **{k: str(v) for k, v in SMALL.items()}})
    loaded = build_backbone("efficientnet_lite0", weights=out).model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in run.result.state.items())
    with pytest.raises(StratadError, match="exceeds the load size"):
        pretrain_to_file(folder, tmp_path / "x.safetensors", params={"image_size": "512"})


def test_resnet18_from_random_weights_pretrains_on_layer3_and_layer4() -> None:
    resnet = build_backbone("resnet18", weights="random")
    assert scale_nodes(resnet, "ds2") == ["layer3.1.relu_1", "layer4.1.relu_1"]  # type: ignore[arg-type]
    before = {k: v.clone() for k, v in resnet.model.state_dict().items()}
    cfg = PretrainConfig(method="ds2", epochs=1, **SMALL)  # type: ignore[arg-type]
    result = pretrain(resnet, _images(6, 1), cfg)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert not torch.equal(result.state["layer4.1.conv2.weight"], before["layer4.1.conv2.weight"])
    assert torch.equal(result.state["fc.weight"], before["fc.weight"])  # the classifier is not part of it
