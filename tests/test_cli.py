"""The CLI stays thin and honest: help works, model info reports the recipe's network, import-weights round trips,
user errors print one message without a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from conftest import smoke_recipe

from sshpe.export import export_model, load_exported
from sshpe.models import build_model
from sshpe.runner import predict_images

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "sshpe._cli.app"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO)


def test_help_lists_every_command():
    res = _run("--help")
    assert res.returncode == 0
    for cmd in ("synth", "shard", "train", "eval", "export", "predict", "recipe", "model", "augment", "import-weights"):
        assert cmd in res.stdout


def test_model_info_of_a_recipe():
    res = _run("model", "info", "recipes/_smoke.yaml")
    assert res.returncode == 0, res.stderr
    params = sum(p.numel() for p in build_model("test_resnet", 17, head_channels=(16, 16, 16)).parameters())
    assert f"{params / 1e6:.3f}M" in res.stdout
    assert "1x17x16x16" in res.stdout  # 64x64 input, stride 4


def test_import_weights_round_trip(tmp_path):
    net = build_model("test_resnet", 17, head_channels=(16, 16, 16)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    ckpt = tmp_path / "official.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3}, ckpt)
    out = tmp_path / "imported.safetensors"
    res = _run("import-weights", str(ckpt), "recipes/_smoke.yaml", "--out", str(out))
    assert res.returncode == 0, res.stderr
    loaded, meta = load_exported(out)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(loaded(x), net(x))
    assert meta["network"] == "imported:official.pth" and meta["input_size"] == [64, 64]


def test_user_errors_have_no_traceback(tmp_path):
    res = _run("import-weights", str(tmp_path / "missing.pth"), "recipes/_smoke.yaml")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "missing.pth" in res.stderr
    res = _run("shard", str(tmp_path), str(tmp_path / "out"))
    assert res.returncode == 2 and "no known dataset layout" in res.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_predict_uses_flip_test_from_metadata(tmp_path):
    torch.manual_seed(0)
    net = build_model("test_resnet", 17, head_channels=(16, 16, 16)).eval()
    img = np.random.default_rng(0).integers(0, 255, (80, 60, 3)).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    kpts = {}
    for flip in (False, True):
        recipe = smoke_recipe(tmp_path, f"eval.flip_test={str(flip).lower()}")
        model = export_model(net, tmp_path / f"m{flip}.safetensors", recipe, "student")
        out = predict_images(model, [tmp_path / "a.png"], tmp_path / f"p{flip}", None, overlay=False)
        kpts[flip] = np.array(json.loads(out.path.read_text())["images"][0]["people"][0]["keypoints"])
    assert kpts[False].shape == kpts[True].shape == (17, 3)
    assert not np.allclose(kpts[False], kpts[True])  # the flipped pass changed the averaged heatmaps
