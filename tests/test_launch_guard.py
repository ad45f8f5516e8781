"""Launches whose processes would not form the job the launcher started end in one clear error (issue 14): each
process would otherwise train alone as a world-size-1 run on the same run folder. A true 2-process CPU run
(`--set distributed.cpu=true`) is tested in tests/test_distributed.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from test_distributed import free_port


def _env() -> dict:
    return os.environ | {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}


def _train_args(shards: Path, run: Path) -> list[str]:
    return ["-m", "sshpe._cli.app", "train", str(REPO / "recipes" / "_smoke.yaml"), "--set", f"data.shards={shards}",
            "--out", str(run)]  # fmt: skip


def test_torchrun_without_cpu_setting_is_refused_on_every_rank(smoke_shards, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "--no-python", sys.executable,
           *_train_args(smoke_shards, run)]  # fmt: skip
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert out.count("the launcher started a 2-process job") == 2, out[-3000:]  # both ranks, one line each
    assert "WORLD_SIZE=2 but the trainer sees 1" in out and "--set distributed.cpu=true" in out
    assert "sshpe/distributed.py" not in out  # our one line, no traceback (torchrun adds its own failure report)
    assert not (run / "checkpoints").exists()  # refused before anything was trained or written


def test_accelerate_cpu_num_processes_is_refused_not_run_as_one(smoke_shards, tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           *_train_args(smoke_shards, run)]  # fmt: skip
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240, cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode != 0, out[-3000:]
    assert "starts one process, not N" in out and "torchrun --nproc_per_node N" in out, out[-3000:]
    assert not (run / "checkpoints").exists()
