"""Pose HRNet (Sun et al. 2019) from timm's HRNet, pruned to the official pose variant (reference §8.2).

timm always builds stage 4 with multi-scale output; keeping only the last module's branch-0 fuse layers gives the
official `multi_scale_output=False` network (W32 28.536M, W48 63.596M parameters with K=17), with every
parameter used. The timm modules are adopted under their own names, so the state_dict keys are exactly the
official `pose_hrnet` layout (`conv1` ... `stage4`, `final_layer`).
"""

from __future__ import annotations

from typing import Any

import timm
from torch import Tensor, nn

from sshpe.models.contract import Feat, PoseModel, init_normal_

_BACKBONE_CHILDREN = (
    "conv1", "bn1", "act1", "conv2", "bn2", "act2",
    "layer1", "transition1", "stage2", "transition2", "stage3", "transition3", "stage4",
)  # fmt: skip


def _stage_cfg(num_modules: int, block_type: str, num_blocks: tuple[int, ...], channels: tuple[int, ...]) -> dict:
    return dict(
        num_modules=num_modules,
        num_branches=len(channels),
        block_type=block_type,
        num_blocks=num_blocks,
        num_channels=channels,
        fuse_method="SUM",
    )


def _light_cfg(width: int) -> dict[str, Any]:
    """A light HRNet: one block per branch, widths (w, 2w, 4w, 8w), two stage-4 modules (so both the fully-fused
    and the pruned last module exist)."""
    w = width
    return dict(
        stem_width=16,
        stage1=_stage_cfg(1, "BOTTLENECK", (1,), (w,)),
        stage2=_stage_cfg(1, "BASIC", (1, 1), (w, 2 * w)),
        stage3=_stage_cfg(1, "BASIC", (1, 1, 1), (w, 2 * w, 4 * w)),
        stage4=_stage_cfg(2, "BASIC", (1, 1, 1, 1), (w, 2 * w, 4 * w, 8 * w)),
    )


# Width 8 (0.33M parameters with K=17): the fast test model. Width 16 (1.3M): learns the synthetic data on a CPU
# (the quickstart and the synthetic method table; docs/benchmarks.md has the width comparison).
TINY_HRNET_CFG: dict[str, Any] = _light_cfg(8)
SMALL_HRNET_CFG: dict[str, Any] = _light_cfg(16)

# sshpe name -> (timm variant, overrides of timm's arch cfg)
HRNET_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "hrnet_w32": ("hrnet_w32", {}),
    "hrnet_w48": ("hrnet_w48", {}),
    "hrnet_tiny": ("hrnet_w18_small", TINY_HRNET_CFG),
    "hrnet_small": ("hrnet_w18_small", SMALL_HRNET_CFG),
}


class PoseHRNet(PoseModel):
    """Official pose HRNet: stem, layer1, stages 2-4 (last module fuses to branch 0 only), 1x1 conv to K.

    Stages are ["stem", "stage1", "stage2", "stage3", "stage4"]; every stage's features are a list with one
    (B,C_i,H/2^(i+2),W/2^(i+2)) tensor per branch, highest resolution first ("stem" and "stage1" have one
    branch at stride 4; "stage4" has only branch 0 after pruning).

    Args:
        variant: a key of `HRNET_VARIANTS` ("hrnet_w32", "hrnet_w48", "hrnet_tiny", "hrnet_small").
        num_joints: K heatmap channels.
        pretrained: load timm's ImageNet HRNet weights for the backbone (the final layer stays random, as in
            the official code).
        final_kernel: final conv kernel, 1 or 3 (official FINAL_CONV_KERNEL).
    """

    def __init__(self, variant: str, num_joints: int, *, pretrained: bool = False, final_kernel: int = 1) -> None:
        super().__init__()
        if variant not in HRNET_VARIANTS:
            raise ValueError(f"unknown HRNet variant {variant!r}; choose one of {sorted(HRNET_VARIANTS)}")
        timm_name, overrides = HRNET_VARIANTS[variant]
        if pretrained and overrides:
            raise ValueError(f"{variant!r} is a test-only HRNet with no ImageNet weights; use pretrained=False")
        net = timm.create_model(
            timm_name, features_only=True, feature_location="", out_indices=(1,), pretrained=pretrained, **overrides
        )
        # Official pose HRNet: the last stage-4 module only fuses into branch 0 (multi_scale_output=False).
        net.stage4[-1].fuse_layers = net.stage4[-1].fuse_layers[:1]
        for name in _BACKBONE_CHILDREN:
            self.add_module(name, getattr(net, name))
        self.arch = variant
        self.num_joints = num_joints
        self.stages = ["stem", "stage1", "stage2", "stage3", "stage4"]
        self.input_multiple = 32
        self.feature_channels: int = net.feature_info.channels()[0]
        self.final_layer = nn.Conv2d(
            self.feature_channels, num_joints, final_kernel, padding=final_kernel // 2, bias=True
        )
        init_normal_(self.final_layer)
        if not pretrained:
            init_normal_(self)

    def run_stage(self, name: str, feat: Feat) -> Feat:
        """Runs one stage; see the class docstring for the feature layout."""
        if name == "stem":
            assert isinstance(feat, Tensor), "the stem takes the (B,3,H,W) image"
            x = self.act1(self.bn1(self.conv1(feat)))
            return [self.act2(self.bn2(self.conv2(x)))]
        assert isinstance(feat, list), "HRNet stage features are a list of per-branch tensors"
        if name == "stage1":
            return [self.layer1(feat[0])]
        if name == "stage2":
            return self.stage2([t(feat[0]) for t in self.transition1])
        if name == "stage3":
            return self.stage3(_transition(self.transition2, feat))
        if name == "stage4":
            return self.stage4(_transition(self.transition3, feat))
        raise KeyError(f"unknown HRNet stage {name!r}; stages are {self.stages}")

    def forward_head(self, feat: Feat) -> Tensor:
        """Branch-0 features (B,C,H/4,W/4) -> (B,K,H/4,W/4) heatmaps."""
        assert isinstance(feat, list), "HRNet features are a list of per-branch tensors"
        return self.final_layer(feat[0])


def _transition(transition: nn.ModuleList, feat: list[Tensor]) -> list[Tensor]:
    """Official transition: keep existing branches (identity), derive each new branch from the last one."""
    return [feat[i] if isinstance(t, nn.Identity) else t(feat[-1]) for i, t in enumerate(transition)]
