"""The best evaluation is kept and exported (issue 13, the reference's model_best), and dual students are scored
network by network, as their ensemble and as the mean of the networks' scores (as MultiAugs reports them)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import smoke_recipe
from safetensors.torch import load_file

import sshpe.loop as loop
from sshpe.checkpoint import STUDENT
from sshpe.export import load_exported, read_metadata
from sshpe.loop import fit
from sshpe.models import HeatmapEnsemble
from sshpe.runner import evaluate_model, export_run


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
    # what was scored is what final/ holds: the ensemble, and evaluating that file gives the recorded AP again
    model = run / "final" / "model.safetensors"
    meta = read_metadata(model)
    assert meta["network"] == "ensemble" and meta["members"] == 2 and meta["val_AP"] == stats["AP"]
    again = tmp_path / "again" / "results.json"
    again.parent.mkdir()
    stats_again, _ = evaluate_model(model, run / "recipe.yaml", [f"data.shards={smoke_shards}"], None, again)
    assert stats_again == stats
    assert json.loads(again.read_text()) == json.loads((run / "final" / "results.json").read_text())  # same keypoints
    # and the exported ensemble is the mean of the two networks exported on their own
    ens, _ = load_exported(model)
    a, b = (
        load_exported(export_run(run, tmp_path / f"{n}.safetensors", None, n))[0] for n in ("student_a", "student_b")
    )
    x = torch.randn(2, 3, *recipe.data.input_size)
    with torch.no_grad():
        assert isinstance(ens, HeatmapEnsemble) and torch.equal(ens(x), (a(x) + b(x)) / 2)
        assert not torch.equal(a(x), b(x))


def test_export_names_every_network_of_a_dual_run(smoke_shards, tmp_path):
    run = tmp_path / "run"
    fit(smoke_recipe(smoke_shards, "teacher.kind=dual", "train.duration=1", "train.eval_every=0"), run)
    for name in ("auto", "student", "student_a", "student_b", "ensemble"):
        meta = read_metadata(export_run(run, tmp_path / f"{name}.safetensors", None, name))
        assert meta["network"] == {"auto": "student_a"}.get(name, name)  # eval_net a is the default
        assert meta.get("members") == (2 if name == "ensemble" else None)
    with pytest.raises(ValueError, match=r"'teacher' is not available .*\['ensemble', 'student', 'student_a'"):
        export_run(run, tmp_path / "t.safetensors", None, "teacher")


def test_a_tie_with_an_earlier_evaluation_exports_the_last_step(smoke_shards, tmp_path, monkeypatch):
    real = loop.evaluate_nets
    monkeypatch.setattr(loop, "evaluate_nets", lambda *a, **k: real(*a, **k) | {"AP": 0.25})
    run = tmp_path / "run"
    fit(smoke_recipe(smoke_shards, "train.eval_every=2", "train.duration=6"), run)
    assert json.loads((run / "best" / "stats.json").read_text())["step"] == 2  # the first of equals stays best
    assert read_metadata(run / "final" / "model.safetensors")["step"] == 6  # but final/ keeps the last step
