"""bench/bench_methods.py: every method is a valid recipe whose networks build, two-network methods start from two
burn-ins, and the table reports each method against supervised."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from sshpe.nets import build_nets
from sshpe.recipe import dump_recipe, load_recipe

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_methods", REPO / "bench" / "bench_methods.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_every_method_builds() -> None:
    kinds = {}
    for method in bench.METHODS:
        recipe = load_recipe(REPO / "recipes" / f"{bench.PREFIX}{method}.yaml")
        nets = build_nets(recipe)  # checks MUM / Pose-MUM stage names against the backbone
        kinds[method] = recipe.teacher.kind
        assert recipe.model.arch == "hrnet_small" and recipe.data.input_size == (128, 96)
        assert (len(nets.nets) == 2) == (method in bench.TWO_NETS)
        if recipe.augment.mum is not None:
            assert recipe.augment.mum.unmix_after == nets.nets[0].stages[-1]
        for path in recipe.augment.paths:
            assert all(op.unit == "input_frac" for op in path if hasattr(op, "unit"))  # sized for 128x96
    assert kinds["supervised"] == "none" and kinds["multiaugs-eman-posemum"] == "eman"


def test_two_network_methods_start_from_two_burn_ins(tmp_path) -> None:
    """Dual methods get burn-ins s and s + 1000 side by side; single ones their seed's burn-in; the container
    loads into the recipe's networks."""
    recipe = load_recipe(REPO / "recipes" / f"{bench.PREFIX}posedual-jc.yaml")
    single = build_nets(load_recipe(REPO / "recipes" / f"{bench.PREFIX}supervised.yaml"))
    burn_ins = {}
    for seed in (0, 1000):
        torch.manual_seed(seed)
        for p in single.parameters():
            torch.nn.init.normal_(p)
        burn_ins[seed] = tmp_path / f"b{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in single.state_dict().items()}, str(burn_ins[seed]),
                  metadata={"format": "sshpe-checkpoint/1", "num_nets": "1"})  # fmt: skip
    path = bench.init_weights("posedual-jc", 0, burn_ins, tmp_path / "runs")
    state = load_file(str(path))
    dual = build_nets(recipe)
    assert dual.load_state_dict(state, strict=True)
    b0, b1 = load_file(str(burn_ins[0])), load_file(str(burn_ins[1000]))
    key = next(k for k in b0 if k.endswith("weight"))
    assert torch.equal(state[key], b0[key]) and torch.equal(state[key.replace("nets.0.", "nets.1.", 1)], b1[key])
    assert bench.init_weights("posecons", 0, burn_ins, tmp_path / "runs") != path


def test_markdown_reports_each_method_against_supervised() -> None:
    result = {
        "title": "t", "steps": 10, "burn_in": 5, "seeds": [0, 1], "command": "c", "date": "d", "wall_s": 5.0,
        "machine": {"platform": "p", "cpus": 2, "gpu": None, "torch": "t"},
        "rows": {
            "supervised": {"AP": [0.01, 0.03], "mean_AP": 0.02, "wall_s": [1.0, 1.0], "pseudo_pck": [None, None]},
            "posecons": {"AP": [0.05, 0.07], "mean_AP": 0.06, "wall_s": [2.0, 2.0], "pseudo_pck": [0.5, 0.7]},
        },
    }  # fmt: skip
    lines = bench.to_markdown(result).splitlines()
    assert "| supervised | 1.0 | 3.0 | 2.0 |  |  | 2 |" in lines
    assert "| posecons | 5.0 | 7.0 | 6.0 | +4.0 | 60.0 | 4 |" in lines
    assert bench.frac_tag(0.025) == "2p5pct" and bench.frac_tag(None) == "all" and bench.frac_tag(0.05) == "5pct"


def test_pseudo_curves_average_the_logged_windows(tmp_path, capsys, monkeypatch):
    import json
    import sys

    spec = importlib.util.spec_from_file_location("pseudo_curves", REPO / "bench" / "pseudo_curves.py")
    curves = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(curves)
    for seed, offset in ((0, 0.0), (1, 0.2)):
        run = tmp_path / "posecons" / f"seed{seed}"
        run.mkdir(parents=True)
        rows = [{"step": s, "train/pseudo_pck": s / 100 + offset} for s in (10, 20, 30, 40)]
        rows.insert(2, {"step": 20, "eval_network": "student", "val/AP": 0.1})  # other rows are ignored
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "burn_in").mkdir()
    assert curves.curve(tmp_path / "posecons" / "seed0", [20, 40]) == pytest.approx({20: 0.15, 40: 0.35})
    monkeypatch.setattr(sys, "argv", ["pseudo_curves.py", str(tmp_path), "--steps", "20", "40"])
    curves.main()
    assert capsys.readouterr().out.splitlines()[-1] == "| posecons | 25.0 | 45.0 |"


def test_finished_runs_are_reused_across_schema_additions_only(tmp_path) -> None:
    """A run whose stored recipe lacks a field added to the schema since (its default keeps the old behaviour) is
    reused; one that trained differently, or whose recipe names a field that no longer exists, is cleared."""
    recipe = bench._recipe("mum", 0, tmp_path / "shards", 600, [], decay=True)
    stored = yaml.safe_load(dump_recipe(recipe))
    del stored["eval"]["keep_best"]  # as written before the field existed
    run = tmp_path / "run"

    def write(tree: dict) -> None:
        run.mkdir(exist_ok=True)
        (run / "recipe.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
        (run / "result.json").write_text(json.dumps({"AP": 0.25}))

    write(stored)
    assert bench._finished(run, recipe, fresh=False) == {"AP": 0.25}
    assert bench._finished(run, recipe, fresh=True) is None and not run.exists()  # --fresh retrains
    write(stored)
    longer = bench._recipe("mum", 0, tmp_path / "shards", 2400, [], decay=True)
    assert bench._finished(run, longer, fresh=False) is None and not run.exists()
    write(stored | {"eval": {**stored["eval"], "keep_bets": True}})  # a field the schema does not know
    assert not bench.same_recipe(run / "recipe.yaml", recipe)
    assert bench._finished(run, recipe, fresh=False) is None and not run.exists()
