"""MUM / Pose-MUM tile mixing: exact round trips, mask semantics, per-pixel equivariance, fallback, stage sampling."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sshpe.augment.mum import MixStack, make_mix_mask, mix_tiles, sample_pose_mum_stages, unmix_all, unmix_tiles


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("grid", [(4, 3), (4, 4), (2, 2), (1, 1)])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_unmix_inverts_mix_exactly(grid: tuple[int, int], group: int) -> None:
    x = torch.randn(8, 3, 32, 24, generator=gen(0))
    mask = make_mix_mask(8, group, grid, generator=gen(1))
    assert mask.shape == (8 // group, group, *grid) and mask.dtype == torch.long
    mixed = mix_tiles(x, mask)
    assert torch.equal(unmix_tiles(mixed, mask), x)
    if group > 1 and grid != (1, 1):
        assert not torch.equal(mixed, x)


def test_mask_is_a_permutation_per_group_and_tile() -> None:
    mask = make_mix_mask(12, 4, (4, 3), generator=gen(2))
    assert torch.equal(mask.sort(dim=1).values, torch.arange(4).view(1, 4, 1, 1).expand_as(mask))
    assert len({tuple(mask[g, :, t // 3, t % 3].tolist()) for g in range(3) for t in range(12)}) > 3


def test_mixed_tile_comes_from_the_masked_image_of_the_group() -> None:
    x = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1).expand(8, 2, 16, 12).clone()  # image id everywhere
    mask = make_mix_mask(8, 4, (4, 3), generator=gen(3))
    mixed = mix_tiles(x, mask)
    for g in range(2):
        for k in range(4):
            for r in range(4):
                for c in range(3):
                    tile = mixed[g * 4 + k, :, r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4]
                    assert bool((tile == g * 4 + mask[g, k, r, c]).all())


def test_hrnet_branches_share_one_mask_and_round_trip() -> None:
    g = gen(4)
    branches = [torch.randn(8, 4 * 2**i, 256 // s, 192 // s, generator=g) for i, s in enumerate((4, 8, 16, 32))]
    mask = make_mix_mask(8, 4, (4, 3), generator=gen(5))
    mixed = mix_tiles(branches, mask)
    assert [m.shape for m in mixed] == [b.shape for b in branches]
    for back, orig in zip(unmix_tiles(mixed, mask), branches):
        assert torch.equal(back, orig)
    # the same permutation on every branch: the top-left tile of every branch comes from the same image
    ids = torch.arange(8, dtype=torch.float32).view(8, 1, 1, 1)
    tagged = mix_tiles([ids.expand(8, 1, 64 // 2**i, 48 // 2**i) for i in range(4)], mask)
    for t in tagged[1:]:
        assert torch.equal(t[:, :, :1, :1], tagged[0][:, :, :1, :1])


def test_stacked_pose_mum_masks_unmix_in_reverse_order() -> None:
    x = torch.randn(8, 3, 64, 48, generator=gen(6))
    stack = MixStack()
    y = stack.mix(x, make_mix_mask(8, 4, (4, 3), generator=gen(7)))
    y = stack.mix(y, make_mix_mask(8, 4, (4, 3), generator=gen(8)))
    y = stack.mix(y, make_mix_mask(8, 4, (2, 2), generator=gen(9)))
    assert len(stack.masks) == 3
    assert torch.equal(unmix_all(y, stack), x)
    wrong = y
    for mask in stack.masks:  # forward order is not the inverse
        wrong = unmix_tiles(wrong, mask)
    assert not torch.equal(wrong, x)


def test_per_pixel_network_commutes_with_mix_unmix() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 5, 1))
    x = torch.randn(8, 3, 32, 24, generator=gen(10))
    mask = make_mix_mask(8, 4, (4, 3), generator=gen(11))
    with torch.no_grad():
        torch.testing.assert_close(unmix_tiles(net(mix_tiles(x, mask)), mask), net(x))


def test_group_must_divide_batch_and_mask_must_fit() -> None:
    with pytest.raises(ValueError, match="group size 3 must divide .* batch 8"):
        make_mix_mask(8, 3, (4, 3), generator=gen(0))
    mask = make_mix_mask(8, 4, (4, 3), generator=gen(0))
    with pytest.raises(ValueError, match="batch of 8"):
        mix_tiles(torch.zeros(4, 1, 16, 12), mask)


@pytest.mark.parametrize("hw", [(30, 22), (3, 2)])
def test_resize_fallback_for_non_divisible_sizes(hw: tuple[int, int]) -> None:
    x = torch.randn(4, 2, *hw, generator=gen(12))
    mask = make_mix_mask(4, 2, (4, 3), generator=gen(13))
    mixed = mix_tiles(x, mask)
    back = unmix_tiles(mixed, mask)
    assert mixed.shape == x.shape and back.shape == x.shape
    assert bool(torch.isfinite(back).all())
    same = x[:1].expand(4, 2, *hw)  # identical images: mixing is then only the resize round trip
    torch.testing.assert_close(mix_tiles(same, mask), mix_tiles(same, make_mix_mask(4, 1, (4, 3), generator=gen(0))))


def test_sample_pose_mum_stages() -> None:
    cands = ["layer1", "layer2", "layer3"]
    assert sample_pose_mum_stages(cands, 0.0, generator=gen(0)) == []
    assert sample_pose_mum_stages(cands, 1.0, generator=gen(0)) == cands
    g = gen(1)
    draws = [sample_pose_mum_stages(cands, 0.5, generator=g) for _ in range(2000)]
    for name in cands:
        assert abs(sum(name in d for d in draws) / 2000 - 0.5) < 0.05
    assert all(d == [c for c in cands if c in d] for d in draws)
    assert sample_pose_mum_stages(cands, 0.5, generator=gen(5)) == sample_pose_mum_stages(cands, 0.5, generator=gen(5))


POSE_MUM_RECIPE = "recipes/coco1k-coco_res18-256x192_posemum-eman.yaml"
HRNET = ["model.arch=hrnet_tiny", "model.head_channels=[256,256,256]", "model.pretrained=false"]


def test_mix_stages_must_exist_in_the_backbone() -> None:
    """A ResNet stage name on an HRNet would mix and never unmix: refused when the networks are built."""
    from sshpe.nets import build_nets
    from sshpe.recipe import load_recipe

    with pytest.raises(ValueError, match=r"augment.mum.unmix_after='layer4': hrnet_tiny has no such encoder stage"):
        build_nets(load_recipe(POSE_MUM_RECIPE, HRNET))
    late = [*HRNET, "augment.mum.unmix_after=stage3", "augment.mum.pose_mum.candidates=[stage2,stage4]"]
    with pytest.raises(ValueError, match=r"candidates \['stage4'\]"):
        build_nets(load_recipe(POSE_MUM_RECIPE, late))
    ok = [*HRNET, "augment.mum.unmix_after=stage4", "augment.mum.pose_mum.candidates=[stage1,stage2,stage3]"]
    nets = build_nets(load_recipe(POSE_MUM_RECIPE, ok))
    assert nets.nets[0].stages[-1] == "stage4"
    assert build_nets(load_recipe(POSE_MUM_RECIPE, ["model.pretrained=false"])).nets[0].stages[-1] == "layer4"
