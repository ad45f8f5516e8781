"""The `PoseModel` contract every pose architecture implements (the stage API MUM/Pose-MUM tile mixing hooks into),
its feature and hook types, and the official pose weight init."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

Feat = Tensor | list[Tensor]
"""Encoder features: one (B,C,h,w) tensor for ResNet-like models, or one tensor per HRNet branch
(highest resolution first)."""

StageHook = Callable[[str, Feat], Feat]
"""Called as `hook(stage_name, features)` after every encoder stage; returns the features to continue with."""


class PoseModel(nn.Module):
    """Contract shared by every pose architecture: image batch in, heatmaps at stride 4 out.

    Subclasses set `stages` (stage names in execution order), `arch`, `num_joints`, and implement `run_stage`
    and `forward_head`. The stage loop is plain Python over a fixed list, so `torch.compile` traces it once.

    Attributes:
        arch: the name the model was built from (e.g. "resnet18", "hrnet_w32", "timm:convnext_atto").
        num_joints: K, the number of heatmap channels.
        stride: input pixels per heatmap pixel (always 4).
        stages: encoder stage names, in order.
        input_multiple: H and W must be multiples of this (the deepest feature stride, 32 for ResNet/HRNet), or
            the heatmaps would not be exactly (H/4, W/4).
    """

    arch: str
    num_joints: int
    stride: int = 4
    stages: list[str]
    input_multiple: int = 32

    def run_stage(self, name: str, feat: Feat) -> Feat:
        """Runs one encoder stage.

        Args:
            name: one of `self.stages`.
            feat: the previous stage's output (the (B,3,H,W) image for the first stage).

        Returns:
            This stage's output features.
        """
        raise NotImplementedError

    def forward_encoder(self, x: Tensor, hook: StageHook | None = None) -> Feat:
        """Runs every encoder stage in order, letting `hook` inspect or replace each stage's output.

        Args:
            x: (B,3,H,W) normalised image batch.
            hook: optional `hook(stage_name, feat) -> feat`, called on the output of every stage (MUM mixing).

        Returns:
            The last stage's features (a tensor, or a list of per-branch tensors for HRNet).
        """
        h, w = x.shape[-2:]
        if h % self.input_multiple or w % self.input_multiple:
            raise ValueError(
                f"{self.arch}: input size {h}x{w} is not a multiple of {self.input_multiple}; resize or pad "
                f"the crops (e.g. 256x192) so the heatmaps are exactly {self.stride}x smaller"
            )
        feat: Feat = x
        for name in self.stages:
            feat = self.run_stage(name, feat)
            if hook is not None:
                feat = hook(name, feat)
        return feat

    def forward_head(self, feat: Feat) -> Tensor:
        """Maps the encoder output to heatmaps.

        Args:
            feat: the output of `forward_encoder`.

        Returns:
            (B,K,H/4,W/4) heatmaps.
        """
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """(B,3,H,W) image batch -> (B,K,H/4,W/4) heatmaps; equals `forward_head(forward_encoder(x))`."""
        return self.forward_head(self.forward_encoder(x))


def init_normal_(module: nn.Module, std: float = 0.001) -> None:
    """Official pose init for every conv/deconv in `module`: weight N(0, std²), bias 0; BatchNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
