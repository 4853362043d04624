"""PatchCore's patch embedding against a plain reference: aggregate, resize, pool channels, concatenate."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stratad.features.patch import flatten_patches, local_aggregate, patch_embedding


def _reference(
    features: dict[str, torch.Tensor], nodes: list[str], patch_size: int, node_dim: int
) -> torch.Tensor:
    grid = tuple(features[nodes[0]].shape[-2:])
    parts = []
    for node in nodes:
        x = features[node].float()
        if patch_size > 1:
            # PatchCore's unfold: every k x k neighbourhood with zero padding, averaged.
            n, c, h, w = x.shape
            cols = F.unfold(x, patch_size, padding=patch_size // 2).view(n, c, patch_size**2, h, w)
            x = cols.mean(dim=2)
        if tuple(x.shape[-2:]) != grid:
            x = F.interpolate(x, size=grid, mode="bilinear", align_corners=False)
        if 0 < node_dim < x.shape[1]:
            n, c, h, w = x.shape
            flat = x.permute(0, 2, 3, 1).reshape(-1, 1, c)
            x = F.adaptive_avg_pool1d(flat, node_dim).reshape(n, h, w, node_dim).permute(0, 3, 1, 2)
        parts.append(x)
    return torch.cat(parts, dim=1)


def _features(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a": torch.randn(n, 24, 12, 12, generator=g), "b": torch.randn(n, 40, 6, 6, generator=g)}


@pytest.mark.parametrize(
    ("nodes", "patch_size", "node_dim"),
    [(["a"], 3, 0), (["a"], 1, 0), (["b"], 5, 0), (["a", "b"], 3, 0), (["a", "b"], 3, 16)],
)
@pytest.mark.parametrize("half", [False, True])
def test_embedding_matches_reference(nodes: list[str], patch_size: int, node_dim: int, half: bool) -> None:
    feats = _features(150)  # three batches of 64, the last one partial
    if half:
        feats = {k: v.half() for k, v in feats.items()}
    got = patch_embedding(feats, nodes, patch_size, node_dim, batch_size=64)
    assert got.dtype == torch.float32
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got, _reference(feats, nodes, patch_size, node_dim), rtol=1e-6, atol=1e-6)


def test_single_node_written_in_place_is_bit_identical_to_pooling() -> None:
    x = _features(130)["a"]
    pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=True)
    assert torch.equal(patch_embedding({"a": x}, ["a"], 3, batch_size=64), pooled)
    out = torch.empty_like(x, memory_format=torch.channels_last)
    assert local_aggregate(x, 3, out=out) is out
    assert torch.equal(out, pooled)


def test_rows_flatten_in_image_major_order_and_zero_images_work() -> None:
    x = _features(3)["b"]
    rows = flatten_patches(patch_embedding({"b": x}, ["b"], 1))
    assert torch.equal(rows[6 * 6 + 7], x[1, :, 1, 1])
    assert patch_embedding({"b": x[:0]}, ["b"]).shape == (0, 40, 6, 6)


def test_the_unfold_embedding_is_the_official_flattened_neighbourhood() -> None:
    """Each position holds its node's C x 3 x 3 neighbourhood, channel-major (the official unfold),
    pooled to node_dim exactly: upsampling repeats values, so every node weighs equally."""
    from stratad.features.patch import unfolded_patch_embedding

    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    same = unfolded_patch_embedding({"a": x}, ["a"], 3, node_dim=18, target_dim=18)
    torch.testing.assert_close(same[0, :, 1, 1], x[0, :, 0:3, 0:3].reshape(-1))
    assert float(same[0, 0, 0, 0]) == 0.0  # zero padding at the border
    doubled = unfolded_patch_embedding({"a": x}, ["a"], 3, node_dim=36, target_dim=36)
    torch.testing.assert_close(doubled[0, 0::2, 1, 1], same[0, :, 1, 1])
    torch.testing.assert_close(doubled[0, 1::2, 1, 1], same[0, :, 1, 1])
    # two nodes: each pooled to node_dim, then the joined 2 x node_dim pooled to target_dim
    y = torch.ones(1, 1, 2, 2)
    both = unfolded_patch_embedding({"a": x, "b": y}, ["a", "b"], 3, node_dim=18, target_dim=18)
    assert both.shape == (1, 18, 4, 4)
    torch.testing.assert_close(both[0, :9, 1, 1], same[0, :, 1, 1].reshape(9, 2).mean(1))
