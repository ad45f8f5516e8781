"""`sshpe train` killed with SIGKILL (mid-training, and inside a checkpoint write) and restarted reaches the same
final weights as an uninterrupted run, bitwise on CPU with num_workers 0, and logs every step once. Resume hygiene
(issue 14): a changed recipe is refused unless only resume-safe fields changed, a finished run does nothing."""

from __future__ import annotations

import json
import os
import shutil
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
from sshpe.loop import fit
from sshpe.recipe import RecipeError, load_recipe

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


def _logged_steps(run: Path) -> list[tuple[int, str]]:
    """(step, kind) of every metrics.jsonl row: the training rows and the evaluation rows."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], "eval" if "eval_network" in r else "train") for r in rows]


def _recipe(shards: Path, *overrides: str):
    base = [f"data.shards={shards}", f"train.duration={STEPS}", "train.log_every=4"]
    return load_recipe(REPO / "recipes" / "_smoke.yaml", [*base, *overrides])


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
    # the killed run logged step 4 before dying; the resumed one dropped that row and logged it again, once
    assert _logged_steps(run) == _logged_steps(uninterrupted)


def test_resume_refuses_a_changed_recipe_and_names_the_fields(smoke_shards, uninterrupted, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    before = (run / "recipe.yaml").read_text()
    with pytest.raises(RecipeError) as err:
        fit(_recipe(smoke_shards, "optim.lr=0.5", "data.sigma=3"), run)
    msg = str(err.value)
    assert "optim.lr: 0.001 -> 0.5" in msg and "data.sigma: 2.0 -> 3.0" in msg and "--out" in msg, msg
    assert "\n" not in msg
    assert (run / "recipe.yaml").read_text() == before  # nothing rewritten


def test_finished_run_does_nothing(smoke_shards, uninterrupted, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    files = lambda: {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name not in ("train.log", ".lock")}  # noqa: E731
    before = files()
    stats = fit(_recipe(smoke_shards, "train.progress=false"), run)
    assert "is finished" in capsys.readouterr().out
    assert "is finished" in (run / "train.log").read_text().splitlines()[-1]
    assert stats == json.loads((run / "final" / "stats.json").read_text())
    assert files() == before  # no checkpoint, metric row, evaluation or export written again


def test_resume_with_a_longer_duration_trains_on_and_logs_each_step_once(smoke_shards, uninterrupted, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    fit(_recipe(smoke_shards, f"train.duration={STEPS + 4}", "train.eval_every=0"), run)
    assert [s for s, _ in complete_checkpoints(run / "checkpoints")][-1] == STEPS + 4
    steps = [s for s, kind in _logged_steps(run) if kind == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS + 4


def test_init_from_an_exported_or_imported_model_file_reinitialises_a_different_head(smoke_shards, uninterrupted):
    """MMPose's `load_from`: a single-network model file seeds a new run; a union24 head (24 keypoints) on COCO-17
    weights keeps its fresh final layer and loads everything else."""
    from sshpe.checkpoint import load_weights
    from sshpe.nets import build_nets

    exported = uninterrupted / "final" / "model.safetensors"
    source = load_file(str(exported))
    recipe = _recipe(smoke_shards, "model.schema=union24", f"model.init_from={exported}")
    torch.manual_seed(0)
    nets = build_nets(recipe)
    fresh = {k: v.clone() for k, v in nets.state_dict().items()}
    notes: list[str] = []
    assert load_weights(exported, nets, notes) == 0
    state = nets.state_dict()
    head = [k for k in source if source[k].shape != state[f"nets.0.{k}"].shape]
    assert head and all(source[k].shape[0] == 17 and state[f"nets.0.{k}"].shape[0] == 24 for k in head)
    assert all(torch.equal(state[f"nets.0.{k}"], fresh[f"nets.0.{k}"]) for k in head)  # kept its fresh init
    assert all(torch.equal(state[f"nets.0.{k}"], v) for k, v in source.items() if k not in head)
    assert len(notes) == 1 and "17 keypoints, the recipe's head has 24" in notes[0]


def test_recipe_init_from_starts_a_run_from_imported_weights(smoke_shards, uninterrupted, tmp_path, capsys):
    exported = uninterrupted / "final" / "model.safetensors"
    run = tmp_path / "run"
    recipe = _recipe(smoke_shards, f"model.init_from={exported}", "train.duration=2", "train.eval_every=0")
    fit(recipe, run)
    assert f"initialised weights from {exported}" in capsys.readouterr().out
    assert [s for s, _ in complete_checkpoints(run / "checkpoints")] == [2]  # from step 0, not the source's step
