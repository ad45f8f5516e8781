"""Files people share (issue 14): a DDP checkpoint stores each tensor once (accelerate's model.safetensors is a hard
link to student.safetensors, whose tensors it equals), and exported weights carry their provenance."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import smoke_recipe
from safetensors import safe_open
from safetensors.torch import load_file

from sshpe import __version__, checkpoint
from sshpe.checkpoint import STUDENT, complete_checkpoints
from sshpe.loop import fit
from sshpe.runner import export_run


def _run(shards, out):
    fit(smoke_recipe(shards, "train.duration=2", "train.ckpt_every=2"), out)
    ((_, ckpt),) = complete_checkpoints(out / "checkpoints")
    return ckpt


def test_accelerate_model_file_equals_the_student_file(smoke_shards, tmp_path, monkeypatch):
    """The premise of the hard link, checked without it: same tensor names, dtypes and values."""
    monkeypatch.setattr(checkpoint, "_share_model_file", lambda folder: None)
    ckpt = _run(smoke_shards, tmp_path / "run")
    theirs, ours = load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / STUDENT))
    assert theirs.keys() == ours.keys()
    assert all(theirs[k].dtype == ours[k].dtype and torch.equal(theirs[k], ours[k]) for k in ours)
    assert os.stat(ckpt / "model.safetensors").st_ino != os.stat(ckpt / STUDENT).st_ino


def test_checkpoint_holds_each_tensor_once_and_resumes(smoke_shards, tmp_path):
    ckpt = _run(smoke_shards, tmp_path / "run")
    model, student = os.stat(ckpt / "model.safetensors"), os.stat(ckpt / STUDENT)
    assert model.st_ino == student.st_ino and student.st_nlink == 2
    files = [p for p in ckpt.rglob("*") if p.is_file()]
    on_disk = sum({os.stat(p).st_ino: os.stat(p).st_size for p in files}.values())
    listed = sum(p.stat().st_size for p in files)
    assert listed - on_disk == student.st_size  # the one shared copy
    # exact resume reads accelerate's (linked) file: train on to step 4 from it
    fit(smoke_recipe(smoke_shards, "train.duration=4", "train.ckpt_every=2"), tmp_path / "run")
    assert [s for s, _ in complete_checkpoints(tmp_path / "run" / "checkpoints")][-1] == 4


def test_exported_weights_carry_provenance(smoke_shards, tmp_path):
    run = tmp_path / "run"
    _run(smoke_shards, run)
    with safe_open(str(run / "final" / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    stats = json.loads((run / "final" / "stats.json").read_text())
    assert meta["sshpe_version"] == __version__ and json.loads(meta["step"]) == 2
    assert json.loads(meta["val_AP"]) == pytest.approx(stats["AP"]) and len(meta["recipe_hash"]) > 0
    exported = export_run(run, tmp_path / "x.safetensors", None, "auto")
    with safe_open(str(exported), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["step"]) == 2 and meta["checkpoint"].endswith("step-000002")
