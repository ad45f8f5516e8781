"""Official checkpoint import: key layouts, wrapper prefixes, multi-network files, strict errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from sshpe.models import PoseModel, build_model, import_official
from sshpe.models.official import to_official_key

torch.set_num_threads(2)

OFFICIAL_HRNET_TOP = {
    "conv1", "bn1", "conv2", "bn2", "layer1", "transition1", "stage2", "transition2", "stage3", "transition3",
    "stage4", "final_layer",
}  # fmt: skip


def _randomized(arch: str, seed: int) -> PoseModel:
    """A model whose every parameter and BN statistic is random, so a wrong load shows in the outputs."""
    model = build_model(arch, 17)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                noise = (
                    torch.rand(t.shape, generator=gen)
                    if name.endswith("running_var")
                    else torch.randn(t.shape, generator=gen)
                )
                t.copy_(noise * 0.1 + (0.5 if name.endswith("running_var") else 0.0))
    return model.eval()


def _official_state_dict(model: PoseModel) -> dict[str, Tensor]:
    return {to_official_key(k): v.clone() for k, v in model.state_dict().items()}


def _image() -> Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7))


def test_resnet_keys_are_the_official_pose_resnet_layout() -> None:
    with torch.device("meta"):
        keys = list(build_model("resnet50", 17).state_dict())
    assert {k.split(".")[0] for k in keys} == {
        "conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "deconv_layers", "final_layer",
    }  # fmt: skip
    assert {k.split(".")[1] for k in keys if k.startswith("deconv_layers.")} == {"0", "1", "3", "4", "6", "7"}
    assert "layer1.0.downsample.0.weight" in keys and "final_layer.bias" in keys


def test_hrnet_keys_are_the_official_pose_hrnet_layout() -> None:
    with torch.device("meta"):
        keys = set(build_model("hrnet_w32", 17).state_dict())
    assert {k.split(".")[0] for k in keys} == OFFICIAL_HRNET_TOP
    for key in (
        "transition1.1.0.0.weight",
        "transition2.2.0.0.weight",
        "stage4.2.fuse_layers.0.3.0.weight",  # last module: branch 0 fuses all four branches
        "stage4.1.fuse_layers.3.0.2.0.weight",  # earlier modules fuse to every branch
        "layer1.0.downsample.1.running_var",
    ):
        assert key in keys, key
    assert not any(k.startswith("stage4.2.fuse_layers.1.") for k in keys)  # pruned, as multi_scale_output=False


@pytest.mark.parametrize(
    ("arch", "wrap"),
    [("test_resnet", "bare"), ("test_resnet", "state_dict"), ("test_resnet", "state_dict+module"),
     ("hrnet_tiny", "bare"), ("hrnet_tiny", "module")],
)  # fmt: skip
def test_import_gives_identical_outputs(tmp_path: Path, arch: str, wrap: str) -> None:
    source = _randomized(arch, seed=1)
    sd = _official_state_dict(source)
    if "module" in wrap:
        sd = {f"module.{k}": v for k, v in sd.items()}
    obj = {"state_dict": sd, "epoch": 3} if wrap.startswith("state_dict") else sd
    path = tmp_path / "pose.pth"
    torch.save(obj, path)
    model, report = import_official(path, arch, 17)
    assert torch.equal(model.eval()(_image()), source(_image()))
    assert report.prefix == ("module." if "module" in wrap else "")
    assert report.num_tensors == len(sd) and report.filled == ()
    with pytest.raises(ValueError, match="single network"):
        import_official(path, arch, 17, net="net2")


def test_dual_checkpoint_picks_the_requested_net(tmp_path: Path) -> None:
    net1, net2 = _randomized("test_resnet", seed=1), _randomized("test_resnet", seed=2)
    sd = {f"module.resnet{i}.{k}": v for i, m in ((1, net1), (2, net2)) for k, v in _official_state_dict(m).items()}
    path = tmp_path / "posedual.pth"
    torch.save(sd, path)
    first, report = import_official(path, "test_resnet", 17)
    assert report.nets == ("resnet1", "resnet2") and report.prefix == "module.resnet1."
    assert torch.equal(first.eval()(_image()), net1(_image()))
    second, _ = import_official(path, "test_resnet", 17, net="resnet2")
    assert torch.equal(second.eval()(_image()), net2(_image()))
    with pytest.raises(ValueError, match="'net3' not found"):
        import_official(path, "test_resnet", 17, net="net3")


def test_old_checkpoint_without_num_batches_tracked_loads(tmp_path: Path) -> None:
    source = _randomized("test_resnet", seed=3)
    sd = {k: v for k, v in _official_state_dict(source).items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "old.pth")
    model, report = import_official(tmp_path / "old.pth", "test_resnet", 17)
    assert torch.equal(model.eval()(_image()), source(_image()))
    assert report.filled and all(k.endswith("num_batches_tracked") for k in report.filled)


def test_missing_and_unexpected_keys_are_listed(tmp_path: Path) -> None:
    sd = _official_state_dict(_randomized("hrnet_tiny", seed=1))
    del sd["stage3.0.branches.1.0.conv2.weight"]
    sd["stage4.1.fuse_layers.1.0.0.0.weight"] = torch.zeros(16, 8, 3, 3)  # an unpruned last module's key
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        import_official(tmp_path / "bad.pth", "hrnet_tiny", 17)
    msg = str(err.value)
    assert str(tmp_path / "bad.pth") in msg
    assert "missing (1): stage3.0.branches.1.0.conv2.weight" in msg
    assert "unexpected (1): stage4.1.fuse_layers.1.0.0.0.weight" in msg


def test_wrong_shape_is_listed_with_a_num_joints_hint(tmp_path: Path) -> None:
    sd = _official_state_dict(_randomized("test_resnet", seed=1))
    sd["final_layer.weight"] = torch.zeros(16, *sd["final_layer.weight"].shape[1:])
    sd["final_layer.bias"] = torch.zeros(16)
    torch.save({"state_dict": sd}, tmp_path / "mpii.pth")
    with pytest.raises(ValueError) as err:
        import_official(tmp_path / "mpii.pth", "test_resnet", 17)
    msg = str(err.value)
    assert "shape mismatch (2)" in msg and "final_layer.weight (16," in msg and "pass num_joints=16" in msg


def test_non_state_dict_and_pickled_code_are_refused(tmp_path: Path) -> None:
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a state_dict checkpoint"):
        import_official(tmp_path / "list.pth", "test_resnet", 17)
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "cfg": Path("x")}, tmp_path / "code.pth")
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        import_official(tmp_path / "code.pth", "test_resnet", 17)
