"""MUM tile mixing and unmixing (reference §4) and Pose-MUM's stacked feature-level mixes (reference §5).

A mask permutes, for every group of `group` consecutive images and every tile of an (nh, nw) grid, the images
of the group; unmixing applies the inverse permutation. Pure tensor functions; the model decides where to call them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

Features = torch.Tensor | list[torch.Tensor]


def make_mix_mask(
    batch: int,
    group: int,
    grid_hw: tuple[int, int],
    *,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Independent permutations of each group, per tile: argsort of uniform noise over the group axis.

    Args:
        batch: B, the (per-device) unlabeled batch size.
        group: N_G, images per group; must divide B.
        grid_hw: (nh, nw) tiles along height and width (Pose-MUM: (4, 3)).
        generator: RNG; draws happen on its device.
        device: output device (default: the generator's device).

    Returns:
        (B // group, group, nh, nw) long mask M: the mixed image at (g, k, tile t) takes tile t of image
        M[g, k, t] of group g.
    """
    if group < 1 or batch % group != 0:
        raise ValueError(
            f"make_mix_mask: the MUM group size {group} must divide the per-device unlabeled batch {batch}; "
            "set the recipe's MUM group to a divisor of the batch size"
        )
    nh, nw = grid_hw
    noise = torch.rand(batch // group, group, nh, nw, generator=generator, device=generator.device)
    return noise.argsort(dim=1).to(device if device is not None else generator.device)


def _gather_tiles(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """out[g, k, :, tile t] = x[g, mask[g, k, t], :, tile t] for a single (B, C, H, W) tensor."""
    n_groups, group, nh, nw = mask.shape
    b, c, h, w = x.shape
    if b != n_groups * group:
        raise ValueError(f"mix_tiles: mask is for a batch of {n_groups * group} images, the tensor has {b}")
    fh, fw = (h // nh) * nh or nh, (w // nw) * nw or nw
    resized = (fh, fw) != (h, w)
    if resized:  # MUM's fallback; makes unmix(mix(x)) inexact
        x = F.interpolate(x, size=(fh, fw), mode="bilinear", align_corners=False)
    tiles = x.reshape(n_groups, group, c, nh, fh // nh, nw, fw // nw)
    index = mask.to(x.device)[:, :, None, :, None, :, None].expand_as(tiles)
    out = torch.gather(tiles, 1, index).reshape(b, c, fh, fw)
    if resized:
        out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False)
    return out


def mix_tiles(x: Features, mask: torch.Tensor) -> Features:
    """Mix the tiles of a batch (or of every HRNet branch) with one mask.

    Tile size = resolution / grid for each tensor. When H or W is not a multiple of the grid, the tensor is
    bilinearly resized to the floor multiple (or to the grid size if that is 0), gathered and resized back, as MUM
    does; then `unmix_tiles(mix_tiles(x))` only approximates x.

    Args:
        x: (B, C, H, W) images or features, or a list of such (same B) for parallel branches.
        mask: (B // group, group, nh, nw) from `make_mix_mask`.

    Returns:
        Same structure and shapes as `x`, new tensors.
    """
    if isinstance(x, (list, tuple)):
        return [_gather_tiles(t, mask) for t in x]
    return _gather_tiles(x, mask)


def unmix_tiles(x: Features, mask: torch.Tensor) -> Features:
    """Inverse of `mix_tiles` with the same mask (inverse permutation = argsort(mask) over the group axis)."""
    return mix_tiles(x, mask.argsort(dim=1))


@dataclass
class MixStack:
    """Masks applied so far during one forward pass (image-level first, then each extra Pose-MUM stage).

    Attributes:
        masks: (B // group, group, nh, nw) masks in the order they were applied.
    """

    masks: list[torch.Tensor] = field(default_factory=list)

    def mix(self, x: Features, mask: torch.Tensor) -> Features:
        """Mix `x` with `mask` and record it."""
        self.masks.append(mask)
        return mix_tiles(x, mask)


def unmix_all(x: Features, stack: MixStack) -> Features:
    """Undo every recorded mix, last first, restoring each image's own geometry (Pose-MUM's stacked unmix)."""
    for mask in reversed(stack.masks):
        x = unmix_tiles(x, mask)
    return x


def sample_pose_mum_stages(candidates: list[str], prob: float, *, generator: torch.Generator) -> list[str]:
    """Pick the extra Pose-MUM mixing stages: each candidate independently with probability `prob`.

    The paper says only "stochastically (uniform distribution)"; this is the natural reading of reference §5.1
    (e.g. candidates layer1..layer3, prob 0.5).

    Returns:
        The chosen candidates, in the given order.
    """
    draws = torch.rand(len(candidates), generator=generator, device=generator.device).tolist()
    return [name for name, u in zip(candidates, draws) if u < prob]
