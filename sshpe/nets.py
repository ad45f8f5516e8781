"""The trained container: one or two pose networks behind one forward (DESIGN decision 4, ECOSYSTEM 1.9).

PoseDual's two students live in one module with one optimizer, so DDP/DeepSpeed wrap a single model and every
forward goes through the wrapper (its gradient hooks need that). MUM tile mixing is applied inside the encoder
through the models' stage hooks, so no model is copied to support it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from sshpe.augment.mum import mix_tiles, unmix_tiles
from sshpe.models import build_model


@dataclass
class MixPlan:
    """Tile-mixing masks for one forward (reference §4, §5).

    Attributes:
        image_mask: mask applied to the input image (MUM), or None.
        stage_masks: extra masks applied after the named encoder stages (Pose-MUM), in forward order.
        unmix_after: encoder stage after which every applied mask is undone in reverse order.
    """

    image_mask: torch.Tensor | None
    stage_masks: dict[str, torch.Tensor] = field(default_factory=dict)
    unmix_after: str = "layer4"


class PoseNets(nn.Module):
    """`num_nets` pose networks of the same architecture; `forward(x, net)` runs one of them."""

    def __init__(self, nets: list[nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: torch.Tensor, net: int = 0, mix: MixPlan | None = None) -> torch.Tensor:
        """(B,3,H,W) -> (B,K,H/4,W/4) heatmaps of network `net`, optionally through MUM/Pose-MUM mixing."""
        model = self.nets[net]
        if mix is None:
            return model(x)
        applied: list[torch.Tensor] = []
        if mix.image_mask is not None:
            x = mix_tiles(x, mix.image_mask)
            applied.append(mix.image_mask)

        def hook(stage: str, feat):
            if stage in mix.stage_masks:
                feat = mix_tiles(feat, mix.stage_masks[stage])
                applied.append(mix.stage_masks[stage])
            if stage == mix.unmix_after:
                for mask in reversed(applied):
                    feat = unmix_tiles(feat, mask)
                applied.clear()
            return feat

        return model.forward_head(model.forward_encoder(x, hook))


def build_nets(recipe) -> PoseNets:
    """The student container a recipe trains: two networks for dual/triple teachers (SSPCM's third network is the
    `triple` kind's extra member), one otherwise."""
    m = recipe.model
    count = {"dual": 2, "triple": 3}.get(recipe.teacher.kind, 1)
    nets = [
        build_model(
            m.arch,
            recipe.schema.num_joints,
            pretrained=m.pretrained,
            head_channels=tuple(m.head_channels),
            head_kernel=m.head_kernel,
        )
        for _ in range(count)
    ]
    check_mix_stages(recipe.augment.mum, m.arch, nets[0].stages)
    return PoseNets(nets)


def check_mix_stages(mum, arch: str, stages: list[str]) -> None:
    """Reject MUM / Pose-MUM stage names the backbone does not have (or a Pose-MUM stage after the unmix point):
    such a mask would be applied and never undone, silently training on mixed features.

    Raises:
        ValueError: naming the recipe field, the architecture and its stages.
    """
    if mum is None:
        return
    if mum.unmix_after not in stages:
        raise ValueError(f"augment.mum.unmix_after={mum.unmix_after!r}: {arch} has no such encoder stage; "
                         f"its stages are {stages} (ResNets end with layer4, HRNets with stage4)")  # fmt: skip
    allowed = stages[: stages.index(mum.unmix_after) + 1]
    bad = [c for c in (mum.pose_mum.candidates if mum.pose_mum else ()) if c not in allowed]
    if bad:
        raise ValueError(f"augment.mum.pose_mum.candidates {bad}: not a stage of {arch} up to unmix_after="
                         f"{mum.unmix_after!r}; choose from {allowed}")  # fmt: skip
