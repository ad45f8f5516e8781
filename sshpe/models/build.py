"""`build_model`: the name -> constructor table for every pose architecture sshpe ships.

Named ResNets and HRNets are listed in `ARCHS`; `timm:<name>` (or any other timm model name) puts the
SimpleBaseline head on that timm backbone.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from functools import lru_cache, partial

import timm
import torch

from sshpe.models.contract import PoseModel
from sshpe.models.hrnet import PoseHRNet
from sshpe.models.simple_baseline import DEFAULT_HEAD_CHANNELS, SimpleBaseline

ModelCtor = Callable[..., PoseModel]
"""Called as `ctor(num_joints=..., pretrained=..., head_channels=..., head_kernel=..., final_kernel=...)`."""


def _hrnet(
    variant: str,
    *,
    num_joints: int,
    pretrained: bool,
    head_channels: tuple[int, ...],
    head_kernel: int,
    final_kernel: int,
) -> PoseHRNet:
    """Pose HRNet; it has no deconv head, so head_channels/head_kernel must stay at their defaults."""
    if tuple(head_channels) != DEFAULT_HEAD_CHANNELS or head_kernel != 4:
        raise ValueError(
            f"{variant}: head_channels/head_kernel configure the SimpleBaseline deconv head, which HRNet does "
            "not have; leave them at their defaults (only final_kernel applies to HRNet)"
        )
    return PoseHRNet(variant, num_joints, pretrained=pretrained, final_kernel=final_kernel)


def _simple_baseline(backbone: str, **kwargs: object) -> SimpleBaseline:
    return SimpleBaseline(backbone, arch=backbone, **kwargs)  # type: ignore[arg-type]


ARCHS: dict[str, ModelCtor] = {
    "resnet18": partial(_simple_baseline, "resnet18"),
    "resnet34": partial(_simple_baseline, "resnet34"),
    "resnet50": partial(_simple_baseline, "resnet50"),
    "resnet101": partial(_simple_baseline, "resnet101"),
    "resnet152": partial(_simple_baseline, "resnet152"),
    "hrnet_w32": partial(_hrnet, "hrnet_w32"),
    "hrnet_w48": partial(_hrnet, "hrnet_w48"),
    "hrnet_tiny": partial(_hrnet, "hrnet_tiny"),  # width 8, one block per branch: tests
    "hrnet_small": partial(_hrnet, "hrnet_small"),  # width 16, one block per branch: CPU quickstart and benchmarks
}


def resolve_timm_name(arch: str) -> str:
    """The timm model name behind `arch`: a bare timm name, "timm:<name>", or a Hugging Face Hub id of timm's own
    weights ("timm/<name>.<tag>", "hf-hub:timm/<name>.<tag>"), resolved against timm's registry without downloading.

    Raises:
        ValueError: timm has no such model (the message lists close matches), or a Hub id outside timm's
            namespace (its architecture is only known after a download).
    """
    name = arch.removeprefix("timm:").removeprefix("hf-hub:")
    if "/" in name:
        owner, _, name = name.partition("/")
        if owner != "timm":
            raise ValueError(
                f"model {arch!r}: only timm's own Hub weights (timm/<name>) resolve without a download; use the timm "
                "architecture name (e.g. convnext_tiny) and load other weights with --init-from"
            )
    if name.split(".")[0] in timm.list_models():
        return name
    candidates = list(dict.fromkeys([*ARCHS, *timm.list_models()]))
    close = difflib.get_close_matches(name.split(".")[0], candidates, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(
        f"unknown model {arch!r}: not one of sshpe's {sorted(ARCHS)} nor a timm model name{hint} "
        "(any timm CNN name, optionally prefixed 'timm:', gets the SimpleBaseline head)"
    )


_STAGES = {"resnet": ("stem", "layer1", "layer2", "layer3", "layer4"),
           "hrnet": ("stem", "stage1", "stage2", "stage3", "stage4")}  # fmt: skip


@lru_cache(maxsize=None)
def encoder_stages(arch: str) -> tuple[str, ...]:
    """The encoder stage names of `arch` (MUM / Pose-MUM mixing points), without weights: sshpe's own
    architectures from a table, timm backbones from a build on the meta device."""
    if arch in ARCHS:
        return _STAGES["resnet" if arch.startswith("resnet") else "hrnet"]
    with torch.device("meta"):
        return tuple(build_model(arch, 1, pretrained=False).stages)


def build_model(
    arch: str,
    num_joints: int,
    *,
    pretrained: bool = False,
    head_channels: tuple[int, ...] = DEFAULT_HEAD_CHANNELS,
    head_kernel: int = 4,
    final_kernel: int = 1,
) -> PoseModel:
    """Builds a pose network that maps (B,3,H,W) images to (B,K,H/4,W/4) heatmaps.

    Args:
        arch: "resnet18" ... "resnet152" (SimpleBaseline), "hrnet_w32"/"hrnet_w48" (pose HRNet), "hrnet_tiny" /
            "hrnet_small" (tests, CPU runs), or "timm:<name>" / any timm model name (SimpleBaseline head on it).
        num_joints: K heatmap channels (17 for COCO).
        pretrained: load timm's ImageNet backbone weights (needs network or a local timm cache).
        head_channels: SimpleBaseline deconv widths (reference: 3 x 256).
        head_kernel: SimpleBaseline deconv kernel (reference: 4).
        final_kernel: final conv kernel (reference: 1).

    Raises:
        ValueError: unknown `arch` (with close matches), or head settings that do not fit the architecture.
    """
    if num_joints < 1:
        raise ValueError(f"num_joints must be >= 1, got {num_joints}")
    if final_kernel not in (1, 3):
        raise ValueError(f"final_kernel must be 1 or 3 (official FINAL_CONV_KERNEL), got {final_kernel}")
    kwargs = dict(
        num_joints=num_joints,
        pretrained=pretrained,
        head_channels=tuple(head_channels),
        head_kernel=head_kernel,
        final_kernel=final_kernel,
    )
    if arch in ARCHS:
        return ARCHS[arch](**kwargs)
    name = resolve_timm_name(arch)
    return SimpleBaseline(name, arch=arch, **kwargs)  # type: ignore[arg-type]
