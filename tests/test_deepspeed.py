"""Single-process DeepSpeed ZeRO-2 on CPU (DS_ACCELERATOR=cpu, gloo, single-rank environment) with bf16 through
`torch_autocast`: BN stays fp32, the loss falls, save/load_state resumes exactly, the consolidated safetensors equal
DeepSpeed's own zero_to_fp32 and seed a weights-only start under DDP. The worker runs in a fresh process; the first
DeepSpeed start compiles a small C++ op (cached in ~/.cache/torch_extensions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO
from safetensors import safe_open
from safetensors.torch import load_file
from test_distributed import equiv_recipe, free_port

from sshpe.checkpoint import STUDENT, TEACHER, load_weights, plan_resume, read_trainer_state
from sshpe.nets import build_nets


@pytest.fixture(scope="module")
def ds_run(smoke_shards, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("ds")
    env = os.environ | {
        "DS_ACCELERATOR": "cpu", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO / "tests"),
    }  # fmt: skip
    cmd = [sys.executable, str(REPO / "tests" / "_ds_worker.py"), str(smoke_shards), str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return json.loads((out / "report.json").read_text()), out / "checkpoints" / "step-000008"


def test_zero2_bf16_autocast_keeps_batchnorm_fp32(ds_run):
    report, _ = ds_run
    assert report["type"] == "DeepSpeedEngine" and report["engine"] == {"world_size": 1, "engine": "deepspeed",
                                                                       "zero_stage": 2}  # fmt: skip
    assert report["autocast"] and not report["bf16_engine"] and not report["fp16_engine"]
    assert report["out_dtype"] == "torch.bfloat16"  # the forward really ran under autocast
    assert report["buffer_dtypes"] == ["torch.float32"] and report["param_dtypes"] == ["torch.float32"]
    losses = report["losses"]
    assert losses[-1] < 0.9 * losses[0] and all(b < a for a, b in zip(losses, losses[1:]))


def test_save_load_state_resumes_exactly(ds_run):
    report, ckpt = ds_run
    assert report["after_load"] == report["after_save"]
    assert (ckpt / "pytorch_model" / "mp_rank_00_model_states.pt").is_file()
    assert read_trainer_state(ckpt)["engine"] == "deepspeed"


def test_consolidated_safetensors(ds_run, smoke_shards):
    report, ckpt = ds_run
    assert report["zero_keys_equal"] and report["zero_max_diff"] == 0.0
    student = load_file(str(ckpt / STUDENT))
    assert all(v.dtype == torch.float32 for k, v in student.items() if "num_batches" not in k)
    assert any("running_var" in k for k in student)
    with safe_open(str(ckpt / TEACHER), framework="pt") as f:
        meta = f.metadata()
        assert meta["network"] == "teacher" and meta["arch"] == "test_resnet" and meta["step"] == "8"
        assert any("running_mean" in k for k in f.keys())
    # a DeepSpeed checkpoint seeds a DDP run weights-only, keeping the step count
    plan = plan_resume(ckpt.parent, True, None, {"world_size": 1, "engine": "ddp", "zero_stage": None})
    assert plan is not None and not plan.exact and "engine deepspeed -> ddp" in plan.message
    nets = build_nets(equiv_recipe(smoke_shards))
    assert load_weights(plan.path, nets) == 8
    assert all(torch.equal(v, student[k]) for k, v in nets.state_dict().items())
