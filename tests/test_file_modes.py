"""Files sshpe writes for people honour the umask (safetensors' writer and mkstemp create 0600 on their own), and
atomic writes leave nothing behind when the writer fails."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import smoke_recipe

from sshpe.atomic import atomic_path, atomic_write_bytes, atomic_write_text, current_umask
from sshpe.evaluation.coco_ap import write_results
from sshpe.export import export_model
from sshpe.loop import fit
from sshpe.models import build_model
from sshpe.preview import write_png
from sshpe.runner import predict_images


@pytest.fixture(params=[0o002, 0o027], ids=["umask002", "umask027"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_without_changing(umask):
    assert current_umask() == umask
    assert current_umask() == umask  # reading did not change it


def test_user_facing_writers_honour_the_umask(umask, tmp_path):
    want = 0o666 & ~umask
    net = build_model("test_resnet", 17, head_channels=(16, 16, 16)).eval()
    recipe = smoke_recipe(tmp_path)
    written = [
        atomic_write_text(tmp_path / "a.txt", "x"),
        atomic_write_bytes(tmp_path / "b.bin", b"x"),
        export_model(net, tmp_path / "model.safetensors", recipe, "student"),
        write_png(tmp_path / "grid.png", np.zeros((8, 8, 3), np.uint8)),
    ]
    write_results(tmp_path / "results.json", [])
    written.append(tmp_path / "results.json")
    cv2.imwrite(str(tmp_path / "in.png"), np.full((40, 30, 3), 90, np.uint8))
    pred = predict_images(written[2], [tmp_path / "in.png"], tmp_path / "pred", device="cpu")
    written += [pred.path, tmp_path / "pred" / "in_pose.jpg"]
    assert {p.name: oct(_mode(p)) for p in written} == {p.name: oct(want) for p in written}
    assert not list(tmp_path.glob(".*tmp*"))


def test_run_folder_files_honour_the_umask(smoke_shards, tmp_path):
    old = os.umask(0o027)
    try:
        fit(smoke_recipe(smoke_shards, "train.duration=2"), tmp_path / "run")
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    ckpt = tmp_path / "run" / "checkpoints" / "step-000002"
    assert {ckpt / "model.safetensors", ckpt / "student.safetensors", tmp_path / "run" / "paths.json"} <= set(files)
    assert {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in files if _mode(p) != 0o640} == {}
    dirs = [p for p in (tmp_path / "run").rglob("*") if p.is_dir()]
    assert {str(p.relative_to(tmp_path)): oct(_mode(p)) for p in dirs if _mode(p) != 0o750} == {}


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    dest = atomic_write_text(tmp_path / "model.safetensors", "old")
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(dest) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk on fire")
    assert dest.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
