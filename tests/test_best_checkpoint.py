"""The best evaluation is kept and exported (issue 13, the reference's model_best), and dual students are scored
network by network, as their ensemble and as the mean of the networks' scores (as MultiAugs reports them)."""

from __future__ import annotations

import json

import torch
from conftest import smoke_recipe
from safetensors.torch import load_file

import sshpe.loop as loop
from sshpe.checkpoint import STUDENT
from sshpe.export import read_metadata
from sshpe.loop import fit


def test_an_earlier_better_evaluation_is_what_final_exports(smoke_shards, tmp_path, monkeypatch):
    """Real training, evaluation files and export; the scores are replaced by a falling sequence so that the first
    evaluation (step 2) is the best one."""
    real, falling = loop.evaluate_nets, iter([0.5, 0.3, 0.2])

    def scored(*args, **kwargs):
        return real(*args, **kwargs) | {"AP": next(falling)}

    monkeypatch.setattr(loop, "evaluate_nets", scored)
    run = tmp_path / "run"
    stats = fit(smoke_recipe(smoke_shards, "train.eval_every=2", "train.duration=6"), run)
    assert stats["AP"] == 0.5
    assert read_metadata(run / "final" / "model.safetensors")["step"] == 2
    final = load_file(str(run / "final" / "model.safetensors"))
    best = load_file(str(run / "best" / "model.safetensors"))
    assert all(torch.equal(final[k], best[k]) for k in best)
    last = load_file(str(run / "checkpoints" / "step-000006" / STUDENT))
    assert any(not torch.equal(final[k], last[f"nets.0.{k}"]) for k in final)  # not the last step's weights
    assert json.loads((run / "final" / "stats.json").read_text())["AP"] == 0.5
    # final/'s results file is the one of the evaluation it holds, not the last step's
    step2 = (run / "eval" / "step-000002" / "results.json").read_bytes()
    assert (run / "final" / "results.json").read_bytes() == step2
    assert json.loads(step2) != json.loads((run / "eval" / "step-000004" / "results.json").read_bytes())
    assert (
        "final/ holds the best evaluation, step 2 (AP 0.5; the last step 6 scored 0.2)"
        in (run / "train.log").read_text()
    )


def test_the_last_step_is_exported_when_it_is_the_best(smoke_shards, tmp_path, monkeypatch):
    real, rising = loop.evaluate_nets, iter([0.1, 0.2, 0.3])
    monkeypatch.setattr(loop, "evaluate_nets", lambda *a, **k: real(*a, **k) | {"AP": next(rising)})
    run = tmp_path / "run"
    fit(smoke_recipe(smoke_shards, "train.eval_every=2", "train.duration=6"), run)
    assert read_metadata(run / "final" / "model.safetensors")["step"] == 6
    assert json.loads((run / "best" / "stats.json").read_text())["step"] == 6


def test_dual_students_are_scored_per_network_ensemble_and_mean(smoke_shards, tmp_path):
    run = tmp_path / "run"
    recipe = smoke_recipe(smoke_shards, "teacher.kind=dual", "teacher.eval_net=ensemble", "train.duration=2")
    stats = fit(recipe, run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (final,) = [r for r in rows if "val/AP" in r]
    nets = {k: v for k, v in final.items() if k.startswith("val_nets/")}
    assert set(nets) == {"val_nets/a/AP", "val_nets/b/AP", "val_nets/ensemble/AP", "val_nets/mean/AP"}
    assert nets["val_nets/ensemble/AP"] == final["val/AP"] == stats["AP"]  # the selected one is the ensemble
    assert abs(nets["val_nets/mean/AP"] - (nets["val_nets/a/AP"] + nets["val_nets/b/AP"]) / 2) < 1e-12


def test_a_tie_with_an_earlier_evaluation_exports_the_last_step(smoke_shards, tmp_path, monkeypatch):
    real = loop.evaluate_nets
    monkeypatch.setattr(loop, "evaluate_nets", lambda *a, **k: real(*a, **k) | {"AP": 0.25})
    run = tmp_path / "run"
    fit(smoke_recipe(smoke_shards, "train.eval_every=2", "train.duration=6"), run)
    assert json.loads((run / "best" / "stats.json").read_text())["step"] == 2  # the first of equals stays best
    assert read_metadata(run / "final" / "model.safetensors")["step"] == 6  # but final/ keeps the last step
