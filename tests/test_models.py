"""Pose models: published sizes, every parameter trained, the stage API, errors, layouts and FLOP counting."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from sshpe.models import ARCHS, Feat, PoseModel, build_model, format_info, model_info
from sshpe.models.info import hrnet_readme_gflops, true_macs

torch.set_num_threads(2)

# Published parameter counts for K=17 (reference §8.1: HRNet README table; R18 computed there).
PUBLISHED_PARAMS = {
    "resnet18": 15.38e6,
    "resnet50": 34.0e6,
    "resnet101": 53.0e6,
    "resnet152": 68.6e6,
    "hrnet_w32": 28.536e6,
    "hrnet_w48": 63.596e6,
}
# Small models covering each code path: timm ResNet, pruned HRNet, a non-ResNet FeatureListNet, an opaque timm
# feature extractor (EfficientNetFeatures).
SMALL_ARCHS = ["test_resnet", "hrnet_tiny", "timm:test_convnext", "test_efficientnet"]


def _image(batch: int, h: int, w: int, seed: int = 0) -> Tensor:
    return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _build(arch: str, num_joints: int = 17) -> PoseModel:
    return build_model(arch, num_joints).eval()


@pytest.mark.parametrize("arch", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_published(arch: str) -> None:
    with torch.device("meta"):
        model = build_model(arch, 17)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / PUBLISHED_PARAMS[arch] - 1) < 1e-3, f"{arch}: {n} parameters"


@pytest.mark.parametrize("arch", ["resnet18", "hrnet_w32", "timm:test_convnext", "test_efficientnet"])
def test_every_parameter_gets_a_gradient(arch: str) -> None:
    model = build_model(arch, 17).train()
    hm = model(_image(2, 64, 64))
    hm.square().mean().backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"{arch}: parameters without gradient: {no_grad[:10]}"


@pytest.mark.parametrize("arch", SMALL_ARCHS)
@pytest.mark.parametrize("num_joints", [17, 5])
def test_output_is_stride_4(arch: str, num_joints: int) -> None:
    model = _build(arch, num_joints)
    hm = model(_image(2, 128, 96))
    assert hm.shape == (2, num_joints, 32, 24)
    assert model.stride == 4 and model.num_joints == num_joints and model.arch == arch


def test_stage_names() -> None:
    assert _build("test_resnet").stages == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert _build("hrnet_tiny").stages == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert _build("timm:test_convnext").stages == ["stem", "stages_0", "stages_1", "stages_2", "stages_3"]


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_stagewise_forward_equals_forward(arch: str) -> None:
    model = _build(arch)
    x = _image(2, 64, 64)
    ref = model(x)
    assert torch.equal(model.forward_head(model.forward_encoder(x)), ref)
    feat: Feat = x
    for name in model.stages:
        feat = model.run_stage(name, feat)
    assert torch.equal(model.forward_head(feat), ref)


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_identity_hook_changes_nothing_and_sees_every_stage(arch: str) -> None:
    model = _build(arch)
    x = _image(2, 64, 64)
    seen: list[str] = []

    def identity(name: str, feat: Feat) -> Feat:
        seen.append(name)
        return feat

    assert torch.equal(model.forward_head(model.forward_encoder(x, hook=identity)), model(x))
    assert seen == model.stages


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_zeroing_hook_changes_output(arch: str) -> None:
    model = _build(arch)
    x = _image(2, 64, 64)
    target = model.stages[len(model.stages) // 2]

    def zero(name: str, feat: Feat) -> Feat:
        if name != target:
            return feat
        return torch.zeros_like(feat) if isinstance(feat, Tensor) else [torch.zeros_like(f) for f in feat]

    zeroed = model.forward_head(model.forward_encoder(x, hook=zero))
    assert not torch.allclose(zeroed, model(x), rtol=1e-3, atol=0.0)  # HRNet init gives ~1e-12 outputs


def test_hrnet_stage_features_are_branch_lists() -> None:
    model = _build("hrnet_tiny")
    shapes: dict[str, list[tuple[int, ...]]] = {}

    def record(name: str, feat: Feat) -> Feat:
        assert isinstance(feat, list)
        shapes[name] = [tuple(f.shape[-2:]) for f in feat]
        return feat

    model.forward_encoder(_image(1, 64, 64), hook=record)
    assert shapes == {
        "stem": [(16, 16)],
        "stage1": [(16, 16)],
        "stage2": [(16, 16), (8, 8)],
        "stage3": [(16, 16), (8, 8), (4, 4)],
        "stage4": [(16, 16)],  # last module fuses to branch 0 only (official multi_scale_output=False)
    }


@pytest.mark.parametrize("arch", ["test_resnet", "hrnet_tiny", "timm:test_convnext"])
def test_channels_last_equals_default(arch: str) -> None:
    model = _build(arch)
    x = _image(2, 64, 64)
    ref = model(x)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_forward() -> None:
    model = _build("test_resnet")
    x = _image(2, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.shape == (2, 17, 16, 16) and torch.isfinite(out.float()).all()


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("resnet_18", "resnet18"), ("hrnet_w33", "hrnet_w32"), ("timm:convnext_attoo", "convnext_atto")],
)
def test_unknown_name_suggests_close_match(name: str, suggestion: str) -> None:
    with pytest.raises(ValueError, match="did you mean") as err:
        build_model(name, 17)
    assert repr(suggestion) in str(err.value) and repr(name) in str(err.value)


def test_head_settings_errors() -> None:
    with pytest.raises(ValueError, match="head_channels"):
        build_model("hrnet_tiny", 17, head_channels=(128, 128, 128))
    with pytest.raises(ValueError, match="needs 3 stride-2 deconvs"):
        build_model("test_resnet", 17, head_channels=(64, 64))
    with pytest.raises(ValueError, match="not a multiple of 32"):
        _build("test_resnet")(_image(1, 64, 48))


def test_configurable_head_and_reference_init() -> None:
    model = build_model("test_resnet", 17, head_channels=(32, 16, 8), head_kernel=4)
    deconvs = [m for m in model.deconv_layers if isinstance(m, nn.ConvTranspose2d)]
    assert [d.out_channels for d in deconvs] == [32, 16, 8] and all(d.bias is None for d in deconvs)
    assert [int(k) for k, m in model.deconv_layers.named_children() if any(True for _ in m.parameters())] == [
        0, 1, 3, 4, 6, 7,
    ]  # fmt: skip
    for d in deconvs:
        assert d.weight.std().item() < 0.002  # N(0, 0.001^2), not timm's kaiming init
    bns = [m for m in model.deconv_layers if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(b.weight == 1) and torch.all(b.bias == 0) for b in bns)
    assert torch.all(model.final_layer.bias == 0) and model.final_layer.weight.std().item() < 0.002
    assert model(_image(1, 64, 64)).shape == (1, 17, 16, 16)


def test_hrnet_official_init() -> None:
    model = _build("hrnet_tiny")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) > 20 and all(c.weight.std().item() < 0.002 for c in convs if c.weight.numel() > 100)


def test_archs_table_builds_the_named_families() -> None:
    with torch.device("meta"):
        built = {name: type(build_model(name, 17)).__name__ for name in ARCHS}
    assert built["resnet34"] == "SimpleBaseline" and built["hrnet_w48"] == "PoseHRNet"


def test_hrnet_readme_gflops_and_macs_on_a_hand_counted_net() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # out 8x8: weight 8*3*9=216 -> 216*64
        nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, bias=False),  # out 16x16: 8*4*16=512 -> 512*256
        nn.Flatten(),
        nn.Linear(4 * 16 * 16, 10),  # 10 outputs x 1024 inputs
    )
    x = torch.zeros(1, 3, 16, 16)
    readme = 216 * 64 + 512 * 256 + 10 * 1024
    assert hrnet_readme_gflops(net, x) * 2**30 == pytest.approx(readme)
    # True MACs: the deconv does 8*4*16 MACs per *input* pixel (8x8), a quarter of the README count.
    assert true_macs(net, x) == 216 * 64 + 512 * 64 + 10 * 1024


def test_model_info_reports_stride_stages_and_formats() -> None:
    model = _build("hrnet_tiny")
    info = model_info(model, (128, 96))
    assert info["output_shape"] == (1, 17, 32, 24) and info["output_stride"] == 4
    assert list(info["stages"]) == model.stages and info["stages"]["stage3"][2] == (1, 32, 8, 6)
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert info["gmacs"] > 0 and info["hrnet_gflops"] > 0
    assert not model.training
    table = format_info(info)
    assert table.row_count == 5 + len(model.stages)


def test_model_info_on_meta_matches_reference_recount() -> None:
    # Reference §8.1 recount under the README convention: R50 8.99 at 256x192, W32 7.12 (README 8.9 / 7.1).
    with torch.device("meta"):
        r50, w32 = build_model("resnet50", 17), build_model("hrnet_w32", 17)
    assert model_info(r50, (256, 192))["hrnet_gflops"] == pytest.approx(8.99, abs=0.01)
    assert model_info(w32, (256, 192))["hrnet_gflops"] == pytest.approx(7.12, abs=0.01)
