"""SimpleBaseline (Xiao et al. 2018): any timm `features_only` backbone + N x [deconv, BN, ReLU] + 1x1 conv.

With a ResNet backbone the state_dict keys are the official PoseResNet layout (`conv1`, `bn1`, `layer1..4`,
`deconv_layers.{0,1,3,4,6,7}`, `final_layer`), so official checkpoints load without a key map.
"""

from __future__ import annotations

import math

import timm
from timm.models import FeatureListNet
from torch import Tensor, nn

from sshpe.models.contract import Feat, PoseModel, init_normal_

DEFAULT_HEAD_CHANNELS: tuple[int, ...] = (256, 256, 256)
_HEAD_NAMES = ("deconv_layers", "final_layer")


def _deconv_padding(kernel: int) -> tuple[int, int]:
    """(padding, output_padding) that make a stride-2 transposed conv exactly double H and W (official rule)."""
    if kernel == 4:
        return 1, 0
    if kernel == 3:
        return 1, 1
    if kernel == 2:
        return 0, 0
    raise ValueError(f"head_kernel={kernel} is not supported; use 2, 3 or 4 (the official head uses 4)")


def build_deconv_head(
    in_channels: int, head_channels: tuple[int, ...], kernel: int, num_joints: int, final_kernel: int
) -> tuple[nn.Sequential, nn.Conv2d]:
    """Builds the SimpleBaseline head with the official init (reference §1.5).

    Args:
        in_channels: channels of the backbone's last feature.
        head_channels: output channels of each deconv; each deconv doubles the resolution.
        kernel: deconv kernel size (2, 3 or 4).
        num_joints: K output heatmaps.
        final_kernel: kernel of the final conv (1 or 3, padded to keep the size).

    Returns:
        (deconv_layers, final_layer): a flat Sequential [ConvT, BN, ReLU] * N and the final conv (with bias).
    """
    padding, output_padding = _deconv_padding(kernel)
    layers: list[nn.Module] = []
    for out_channels in head_channels:
        layers += [
            nn.ConvTranspose2d(
                in_channels, out_channels, kernel, stride=2, padding=padding, output_padding=output_padding, bias=False
            ),
            nn.BatchNorm2d(out_channels, momentum=0.1),
            nn.ReLU(inplace=True),
        ]
        in_channels = out_channels
    deconv_layers = nn.Sequential(*layers)
    final_layer = nn.Conv2d(in_channels, num_joints, final_kernel, padding=final_kernel // 2, bias=True)
    init_normal_(deconv_layers)
    init_normal_(final_layer)
    return deconv_layers, final_layer


def num_deconvs_for(feature_stride: int, backbone: str) -> int:
    """How many stride-2 deconvs bring a feature of `feature_stride` back to stride 4.

    Raises:
        ValueError: the stride is not 4 times a power of two.
    """
    n = round(math.log2(max(feature_stride, 1) / 4))
    if n < 0 or 4 * 2**n != feature_stride:
        raise ValueError(
            f"backbone {backbone!r}: its last feature has stride {feature_stride}, which stride-2 deconvs cannot "
            "bring to the stride-4 heatmap; pick a backbone whose last feature stride is 4 * 2^n (e.g. 32)"
        )
    return n


def _group_stages(net: FeatureListNet) -> dict[str, list[str]]:
    """Splits a timm FeatureListNet's children into named stages ending at its feature taps.

    Parameter-free children that open a stage (ResNet's max-pool) join the previous stage, so ResNets get the
    classic ["stem", "layer1", ..., "layer4"]. The first group is called "stem" when its tap has no parameters
    (ResNet's act1); otherwise the children before the first tap become "stem" (ConvNeXt's stem_0/stem_1).
    """
    taps = {name.replace(".", "_") for name in net.feature_info.module_name()}
    groups: list[tuple[str, list[str]]] = []
    current: list[str] = []
    for name, module in net.named_children():
        if not current and groups and not any(True for _ in module.parameters()):
            groups[-1][1].append(name)
            continue
        current.append(name)
        if name in taps:
            groups.append((name, current))
            current = []
    assert not current, "FeatureListNet ends at its last tap"
    first_tap, first = groups[0]
    if not any(True for _ in getattr(net, first_tap).parameters()):
        groups[0] = ("stem", first)
    elif len(first) > 1:
        groups[0:1] = [("stem", first[:-1]), (first_tap, [first_tap])]
    return dict(groups)


class SimpleBaseline(PoseModel):
    """Backbone from timm (`features_only=True`, last feature only) + deconv head; output stride 4.

    Args:
        backbone: timm model name (e.g. "resnet50", "convnext_atto", "test_resnet").
        num_joints: K heatmap channels.
        arch: name recorded in `self.arch` (defaults to `backbone`).
        pretrained: load timm's ImageNet weights into the backbone (needs network or a local timm cache).
        head_channels: output channels of each deconv. If the backbone's last stride is not 32 and this is the
            default, the number of 256-channel deconvs adapts to the stride; a non-default value must match it.
        head_kernel: deconv kernel size (official: 4).
        final_kernel: final conv kernel size (official: 1).
    """

    def __init__(
        self,
        backbone: str,
        num_joints: int,
        *,
        arch: str | None = None,
        pretrained: bool = False,
        head_channels: tuple[int, ...] = DEFAULT_HEAD_CHANNELS,
        head_kernel: int = 4,
        final_kernel: int = 1,
    ) -> None:
        super().__init__()
        self.arch = arch or backbone
        self.num_joints = num_joints
        net = _create_backbone(backbone, pretrained)
        feature_stride = net.feature_info.reduction()[-1]
        self.input_multiple = feature_stride
        head_channels = _resolve_head_channels(head_channels, num_deconvs_for(feature_stride, backbone), backbone)
        self._stage_children: dict[str, list[str]] = {}
        if isinstance(net, FeatureListNet):
            # Adopt the backbone's children so ResNet keys match the official layout (no `backbone.` prefix).
            for name, module in net.named_children():
                if name in _HEAD_NAMES:
                    raise ValueError(f"backbone {backbone!r} has a module named {name!r}, which the head uses")
                self.add_module(name, module)
            self._stage_children = _group_stages(net)
        else:  # e.g. EfficientNetFeatures, FeatureGetterNet: one opaque stage
            self.backbone = net
            self._stage_children = {"backbone": ["backbone"]}
        self.stages = list(self._stage_children)
        self.feature_channels: int = net.feature_info.channels()[-1]
        self.feature_stride: int = feature_stride
        self.deconv_layers, self.final_layer = build_deconv_head(
            self.feature_channels, head_channels, head_kernel, num_joints, final_kernel
        )

    def run_stage(self, name: str, feat: Feat) -> Feat:
        """Runs the backbone children of stage `name`; (B,C,h,w) in, (B,C',h',w') out."""
        x = feat
        for child in self._stage_children[name]:
            x = getattr(self, child)(x)
        if isinstance(x, list | tuple):  # opaque backbones return one map per out_index; we ask for the last
            x = x[-1]
        return x

    def forward_head(self, feat: Feat) -> Tensor:
        """(B,C,H/s,W/s) last backbone feature -> (B,K,H/4,W/4) heatmaps."""
        assert isinstance(feat, Tensor), "SimpleBaseline features are one tensor"
        return self.final_layer(self.deconv_layers(feat))


def _create_backbone(name: str, pretrained: bool) -> nn.Module:
    """timm feature extractor that ends at its last feature map, so every backbone parameter gets a gradient.

    A FeatureListNet (most CNNs) keeps every tap, which only names the stages; other extractors are asked for
    the last feature only (out_indices=(-1,)).
    """
    net = timm.create_model(name, features_only=True, pretrained=pretrained)
    if isinstance(net, FeatureListNet):
        # All taps are kept so stages can be named after them; the net already ends at its last tap, so this
        # builds nothing more than out_indices=(-1,) would.
        return net
    return timm.create_model(name, features_only=True, out_indices=(-1,), pretrained=pretrained)


def _resolve_head_channels(head_channels: tuple[int, ...], needed: int, backbone: str) -> tuple[int, ...]:
    """Adapts the default head to the backbone's stride, or checks a user-given head against it."""
    if len(head_channels) == needed:
        return tuple(head_channels)
    if tuple(head_channels) == DEFAULT_HEAD_CHANNELS:
        return (256,) * needed
    raise ValueError(
        f"backbone {backbone!r} needs {needed} stride-2 deconvs to reach stride 4, but head_channels="
        f"{tuple(head_channels)} has {len(head_channels)}; pass head_channels with {needed} entries"
    )
