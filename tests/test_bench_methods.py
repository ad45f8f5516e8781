"""bench/bench_methods.py: every method of every profile is a valid recipe whose networks build, and the table
reports each method against supervised."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sshpe.nets import build_nets
from sshpe.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_methods", REPO / "bench" / "bench_methods.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@pytest.mark.parametrize("profile", sorted(bench.PROFILES))
def test_every_method_builds_under_every_profile(profile: str) -> None:
    arches = set()
    for method in bench.METHODS:
        path = REPO / "recipes" / f"{bench.PREFIX}{method}.yaml"
        recipe = load_recipe(path, bench.profile_overrides(profile, method))
        nets = build_nets(recipe)  # checks MUM / Pose-MUM stage names against the backbone
        arches.add(recipe.model.arch)
        if recipe.augment.mum is not None:
            assert recipe.augment.mum.unmix_after == nets.nets[0].stages[-1]
    assert arches == ({"hrnet_tiny"} if profile == "cpu" else {"resnet18"})


def test_markdown_reports_each_method_against_supervised() -> None:
    result = {
        "profile": "cpu", "steps": 10, "labeled": 40, "seeds": [0, 1], "command": "c", "date": "d", "wall_s": 5.0,
        "machine": {"platform": "p", "cpus": 2, "gpu": None, "torch": "t"},
        "methods": {
            "supervised": {"AP": [0.01, 0.03], "mean_AP": 0.02, "wall_s": [1.0, 1.0]},
            "posecons": {"AP": [0.05, 0.07], "mean_AP": 0.06, "wall_s": [2.0, 2.0]},
        },
    }  # fmt: skip
    lines = bench.to_markdown(result).splitlines()
    assert "| supervised | 1.00 | 3.00 | 2.00 |  | 2 |" in lines
    assert "| posecons | 5.00 | 7.00 | 6.00 | +4.00 | 4 |" in lines
