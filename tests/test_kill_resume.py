"""`sshpe train` killed with SIGKILL (mid-training, and inside a checkpoint write) and restarted reaches the same
final weights as an uninterrupted run, bitwise on CPU with num_workers 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

from sshpe.checkpoint import COMPLETE, STUDENT, complete_checkpoints

STEPS = 16


def _cmd(shards: Path, run: Path) -> list[str]:
    return [
        sys.executable, "-m", "sshpe._cli.app", "train", str(REPO / "recipes" / "_smoke.yaml"),
        "--set", f"data.shards={shards}", "--set", f"train.duration={STEPS}", "--set", "train.log_every=4",
        "--out", str(run),
    ]  # fmt: skip


def _env(**extra: str) -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1"} | extra


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{STEPS:06d}" / STUDENT))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def uninterrupted(smoke_shards, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    res = subprocess.run(_cmd(smoke_shards, run), env=_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-4000:]
    return run


def test_sigkill_mid_training_then_resume(smoke_shards, uninterrupted, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(_cmd(smoke_shards, run), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = run / "checkpoints" / "step-000002" / COMPLETE
    deadline = time.monotonic() + 150
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    assert not (run / "final").exists()  # really killed mid-training
    killed_at = [s for s, _ in complete_checkpoints(run / "checkpoints")]
    assert killed_at and killed_at[-1] < STEPS
    res = subprocess.run(_cmd(smoke_shards, run), env=_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-4000:]
    assert f"resumed from {run / 'checkpoints' / f'step-{killed_at[-1]:06d}'}" in res.stdout
    _assert_same(_weights(run), _weights(uninterrupted))
    _assert_same(load_file(str(run / "final" / "model.safetensors")),
                 load_file(str(uninterrupted / "final" / "model.safetensors")))  # fmt: skip


def test_sigkill_inside_checkpoint_write_then_resume(smoke_shards, uninterrupted, tmp_path):
    run = tmp_path / "run"
    env = _env(SSHPE_TEST_KILL_IN_CHECKPOINT="4")
    res = subprocess.run(_cmd(smoke_shards, run), env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == -signal.SIGKILL, res.stderr[-4000:]
    torn = run / "checkpoints" / "step-000004.tmp"
    assert (torn / STUDENT).is_file() and not (torn / COMPLETE).exists()  # died half-way through the write
    assert [s for s, _ in complete_checkpoints(run / "checkpoints")] == [2]
    res = subprocess.run(_cmd(smoke_shards, run), env=_env(), capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "step-000002 at step 2" in res.stdout
    assert not torn.exists()
    _assert_same(_weights(run), _weights(uninterrupted))
