"""Two-process DDP on CPU (torchrun, gloo): equivalence with one process, disjoint data, gathered evaluation,
consolidated checkpoints resumed on another world size; and the engine combinations that are refused."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _dist_worker import EQUIV_STEPS, equiv_recipe, global_batch
from conftest import REPO, smoke_recipe
from safetensors.torch import load_file

from sshpe.checkpoint import STUDENT, complete_checkpoints, read_trainer_state
from sshpe.data.streams import ValDataset, make_val_loader
from sshpe.distributed import EngineError, check_engine
from sshpe.evaluation.predict import predict_instances, score_predictions
from sshpe.export import load_exported
from sshpe.loop import _optimizer, fit
from sshpe.nets import build_nets
from sshpe.recipe import RecipeError
from sshpe.step import train_step


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_proc(smoke_shards, tmp_path_factory) -> Path:
    """Run tests/_dist_worker.py under `torchrun --nproc_per_node 2` once; its output folder."""
    out = tmp_path_factory.mktemp("dist")
    env = os.environ | {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(REPO / "tests")}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(REPO / "tests" / "_dist_worker.py"), str(smoke_shards), str(out),
    ]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return out


def _train_one_process(shards: Path, mode: str) -> dict[str, torch.Tensor]:
    """Reference runs in this process: "2B" = one batch of both halves, "ghost" = both halves forwarded separately
    (BN statistics per half, as on two ranks) with the mean loss, "half" = rank 0's half only."""
    recipe = equiv_recipe(shards)
    torch.manual_seed(recipe.seed)
    nets = build_nets(recipe).train()
    opt, gen = _optimizer(recipe, nets.parameters()), torch.Generator()
    for step in range(EQUIV_STEPS):
        parts = global_batch(shards, step, 2 * recipe.train.batch_size, 1 if mode == "2B" else 2)
        parts = parts[:1] if mode == "half" else parts
        loss = sum(train_step(nets, None, p, None, recipe, gen)["loss"] for p in parts) / len(parts)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in nets.state_dict().items()}


def _dist(a: dict, b: dict, keys: list[str]) -> float:
    return float(torch.sqrt(sum(((a[k] - b[k]).double() ** 2).sum() for k in keys)))


def test_ddp_matches_one_process_with_doubled_batch(two_proc, smoke_shards):
    """DDP on 2 x B equals one process on 2B up to BatchNorm: each rank normalises with the statistics of its own B
    samples, one process with those of 2B, so the gradients differ by exactly that. The test therefore checks
    (1) DDP equals the one-process computation with per-half BN statistics ("ghost") to float round-off, and
    (2) its distance to the 2B run is that BN effect: equal to ghost's distance, small against the update, and
    smaller than training on one rank's half alone (what a broken all-reduce or duplicated data would give)."""
    ddp = load_file(str(two_proc / "ddp.safetensors"))
    ref = {m: _train_one_process(smoke_shards, m) for m in ("2B", "ghost", "half")}
    recipe = equiv_recipe(smoke_shards)
    torch.manual_seed(recipe.seed)
    w0 = build_nets(recipe).state_dict()
    params = [k for k, v in w0.items() if v.is_floating_point() and "running_" not in k]
    update = _dist(ref["2B"], w0, params)
    assert update > 0
    assert _dist(ddp, ref["ghost"], params) < 1e-5 * update
    bn_effect = _dist(ref["ghost"], ref["2B"], params)
    assert abs(_dist(ddp, ref["2B"], params) - bn_effect) < 1e-5 * update
    assert bn_effect < 0.25 * update
    assert bn_effect < _dist(ref["half"], ref["2B"], params)


def test_ranks_read_disjoint_data_and_val_once(two_proc, smoke_shards):
    shares = [json.loads((two_proc / f"keys-{r}.json").read_text()) for r in (0, 1)]
    train = [set(s["train"]) for s in shares]
    assert train[0] and train[1] and not train[0] & train[1]
    val_all = [int(a) for b in make_val_loader(smoke_shards, "val", batch_size=4, rank=0, world_size=1,
                                               num_workers=0) for a in b["ann_id"]]  # fmt: skip
    val = [s["val"] for s in shares]
    assert sorted(val[0] + val[1]) == sorted(val_all) and not set(val[0]) & set(val[1])
    assert len(ValDataset(smoke_shards, "labeled")) >= len(train[0] | train[1])


def test_two_process_fit_gathers_eval_and_consolidates(two_proc, smoke_shards):
    run = two_proc / "run"
    assert [s for s, _ in complete_checkpoints(run / "checkpoints")] == [2, 4]
    ckpt = run / "checkpoints" / "step-000004"
    state = read_trainer_state(ckpt)
    assert (state["step"], state["world_size"], state["engine"]) == (4, 2, "ddp")
    student, saved = load_file(str(ckpt / STUDENT)), load_file(str(ckpt / "model.safetensors"))
    assert student.keys() == saved.keys() and all(torch.equal(student[k], saved[k]) for k in student)
    # the 2-process evaluation (each rank scores its share, rank 0 scores the gathered set) equals one process
    recipe = smoke_recipe(smoke_shards)
    net, _ = load_exported(run / "final" / "model.safetensors")
    loader = make_val_loader(smoke_shards, "val", batch_size=4, rank=0, world_size=1, num_workers=0)
    inst = predict_instances(net, loader, recipe, torch.device("cpu"))
    stats = score_predictions(inst, recipe, json.loads((smoke_shards / "manifest.json").read_text()), None)
    two = json.loads((run / "final" / "stats.json").read_text())
    assert two == pytest.approx(stats, abs=1e-9)
    assert len(json.loads((run / "final" / "results.json").read_text())) >= 1


def test_two_process_checkpoint_resumes_on_one_process(two_proc, smoke_shards, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(two_proc / "run", run)
    student = load_file(str(run / "checkpoints" / "step-000004" / STUDENT))
    fit(smoke_recipe(smoke_shards, "train.duration=4"), run)  # nothing left to train: exports the loaded weights
    assert "resuming weights only" in capsys.readouterr().out
    exported = load_file(str(run / "final" / "model.safetensors"))
    assert all(torch.equal(exported[k], student[f"nets.0.{k}"]) for k in exported)
    fit(smoke_recipe(smoke_shards, "train.duration=6"), run)
    assert "world_size 2 -> 1" in capsys.readouterr().out
    assert read_trainer_state(run / "checkpoints" / "step-000006")["world_size"] == 1
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines() if "train/loss" in x]
    assert steps[-1] == 6


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["distributed.engine=deepspeed", "distributed.cpu=true"], "Accelerator(cpu=True) silently drops DeepSpeed"),
        (["distributed.engine=deepspeed", "distributed.zero_stage=3", "teacher.kind=eman"], "EMA/EMAN teacher"),
        (["distributed.engine=deepspeed", "distributed.zero_stage=3"], "use zero_stage 1 or 2"),
        (["distributed.sync_bn='on'", "distributed.cpu=true"], "SyncBatchNorm cannot run on CPU"),
    ],
)
def test_refused_recipes(smoke_shards, overrides, message):
    with pytest.raises(RecipeError, match="distributed") as err:
        smoke_recipe(smoke_shards, *overrides)
    assert message in str(err.value)


def test_refused_at_launch(smoke_shards, monkeypatch):
    """What only the launcher, device or world size reveals (sshpe.distributed.check_engine)."""
    ds = smoke_recipe(smoke_shards, "distributed.engine=deepspeed")
    with pytest.raises(EngineError, match="2 processes on CPU"):
        check_engine(ds, cuda=False, world_size=2)
    check_engine(ds, cuda=False, world_size=1)  # single-process DeepSpeed on CPU is correct
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(EngineError, match="ZeRO-3 \\(from the launcher\\)"):
        check_engine(smoke_recipe(smoke_shards), cuda=True, world_size=8)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(EngineError, match="train.mixed_precision=bf16"):
        check_engine(smoke_recipe(smoke_shards), cuda=True, world_size=8)
    check_engine(smoke_recipe(smoke_shards, "train.mixed_precision=bf16"), cuda=True, world_size=8)


def test_shipped_launch_configs(smoke_shards, monkeypatch):
    """Every accelerate config keeps precision in the recipe; the DeepSpeed JSON becomes a complete config."""
    import yaml

    from sshpe.distributed import deepspeed_config, resolve_engine

    configs = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))
    assert len(configs) >= 4
    for path in configs:
        cfg = yaml.safe_load(path.read_text())
        assert cfg.get("mixed_precision", "no") == "no", path
        ds_file = cfg.get("deepspeed_config", {}).get("deepspeed_config_file")
        assert ds_file is None or (REPO / ds_file).is_file(), path
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(REPO / "configs" / "deepspeed" / "zero2.json"))
    recipe = smoke_recipe(smoke_shards, "train.mixed_precision=bf16", "train.grad_accum=2", "optim.grad_clip=1.0")
    choice = resolve_engine(recipe)
    assert (choice.engine, choice.zero_stage, choice.source) == ("deepspeed", 2, "launcher")
    cfg = deepspeed_config(recipe, choice)
    assert cfg["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert not cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert (cfg["train_micro_batch_size_per_gpu"], cfg["gradient_accumulation_steps"], cfg["gradient_clipping"]) == (
        recipe.train.batch_size, 2, 1.0)  # fmt: skip
    assert cfg["zero_optimization"]["overlap_comm"] is True
