"""Run folders are relocatable: eval, export and predict work from any working directory and after moving runs/,
shards/ and the data together (paths stored absolute and relative when training starts, found absolute first)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from sshpe.data.prepare import find_sources, shard_dataset
from sshpe.data.shard_writer import read_manifest, source_candidates, source_file
from sshpe.loop import fit
from sshpe.portable_paths import candidates, first_existing, portable, read_run_paths
from sshpe.recipe import load_recipe
from sshpe.runner import evaluate_model, export_run

CLI = [sys.executable, "-m", "sshpe._cli.app"]


@pytest.fixture(scope="module")
def project(synth_root, tmp_path_factory) -> Path:
    """proj/{data,shards,runs} as a user lays it out, trained with relative paths from inside proj/."""
    import os

    proj = tmp_path_factory.mktemp("relocate") / "proj"
    shutil.copytree(synth_root, proj / "data" / "synth")
    shard_dataset(
        find_sources(proj / "data" / "synth"), proj / "shards" / "synth", dataset="synth", input_hw=(64, 64),
        shard_size=8, progress=False,
    )  # fmt: skip
    cwd = os.getcwd()
    os.chdir(proj)
    try:
        recipe = load_recipe(REPO / "recipes" / "_smoke.yaml", ["data.shards=shards/synth", "train.duration=2"])
        fit(recipe, Path("runs/x"))
    finally:
        os.chdir(cwd)
    return proj


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd)


def test_fit_stores_the_paths_it_resolved(project):
    stored = read_run_paths(project / "runs" / "x")
    assert stored["shards"] == portable(project / "shards" / "synth", project / "runs" / "x")
    assert stored["shards"]["relative"] == "../../shards/synth"
    gt = project / "data" / "synth" / "annotations" / "person_keypoints_val.json"
    assert stored["val_annotations"]["path"] == str(gt.resolve())
    assert stored["val_annotations"]["relative"] == "../../data/synth/annotations/person_keypoints_val.json"
    manifest = read_manifest(project / "shards" / "synth")
    assert manifest["sources"]["val_annotations"]["relative"] == "../../data/synth/annotations/" + gt.name


def test_absolute_run_folder_works_from_elsewhere(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # recipe.yaml says data.shards: shards/synth, which does not exist here
    stats, used = evaluate_model(project / "runs" / "x", None, [], None, None)
    assert stats == json.loads((project / "runs" / "x" / "final" / "stats.json").read_text())
    assert str((project / "shards" / "synth").resolve()) in used


def test_moved_project_works_from_any_directory(project, tmp_path):
    """Everything moved: no absolute path stored anywhere exists; the relative ones find shards and ground truth."""
    moved = tmp_path / "elsewhere" / "proj2"
    shutil.copytree(project, moved)
    shutil.rmtree(project.parent / "gone", ignore_errors=True)
    hidden = project.parent / "gone"
    project.rename(hidden)  # the old absolute paths now point nowhere
    try:
        elsewhere = tmp_path / "cwd"
        elsewhere.mkdir()
        run = moved / "runs" / "x"
        res = _cli("eval", str(run), "--results", str(tmp_path / "res.json"), cwd=elsewhere)
        assert res.returncode == 0, res.stderr
        ap = json.loads((run / "final" / "stats.json").read_text())["AP"]
        assert f"{100 * ap:.1f}" in res.stdout
        assert json.loads((tmp_path / "res.json").read_text())  # official-format results were written
        res = _cli("export", str(run), "--out", str(tmp_path / "m.safetensors"), cwd=elsewhere)
        assert res.returncode == 0, res.stderr
        img = next((moved / "data" / "synth" / "images" / "val").glob("*.jpg"))
        res = _cli("predict", str(run), str(img), "--out", str(tmp_path / "pred"), cwd=elsewhere)
        assert res.returncode == 0, res.stderr
        assert json.loads((tmp_path / "pred" / "keypoints.json").read_text())["images"][0]["people"]
    finally:
        hidden.rename(project)


def test_moved_runs_and_shards_keep_the_data_in_place(project, tmp_path, monkeypatch):
    """runs/ and shards/ moved together, the data left where it was: the absolute GT path still serves."""
    other = tmp_path / "other"
    other.mkdir()
    expected = json.loads((project / "runs" / "x" / "final" / "stats.json").read_text())
    for sub in ("runs", "shards"):
        shutil.move(project / sub, other / sub)
    try:
        monkeypatch.chdir(tmp_path)
        stats, used = evaluate_model(other / "runs" / "x", None, [], None, None)
        assert stats == expected
        assert used.endswith(f"on {(other / 'shards' / 'synth').resolve()}:val")
        assert export_run(other / "runs" / "x", tmp_path / "m.safetensors", None, "auto").is_file()
    finally:
        for sub in ("runs", "shards"):
            shutil.move(other / sub, project / sub)


def test_old_manifest_without_relative_paths_falls_back_to_the_run(project, tmp_path, monkeypatch):
    """Shards written before manifests stored relative paths: the run's paths.json still finds the ground truth."""
    moved = tmp_path / "proj3"
    shutil.copytree(project, moved)
    manifest_file = moved / "shards" / "synth" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    for entry in manifest["sources"].values():
        entry["path"] = "/nonexistent/old/place/" + Path(entry["path"]).name
        del entry["relative"]
    manifest_file.write_text(json.dumps(manifest))
    assert len(source_candidates(manifest, moved / "shards" / "synth", "val_annotations")) == 1
    monkeypatch.chdir(tmp_path)
    stats, _ = evaluate_model(moved / "runs" / "x", None, [], None, None)
    assert stats == json.loads((project / "runs" / "x" / "final" / "stats.json").read_text())


def test_lost_data_is_one_error_naming_both_places(project, tmp_path):
    moved = tmp_path / "proj4"
    shutil.copytree(project / "runs", moved / "runs")  # shards not moved with the run, and renamed at home
    (project / "shards").rename(project / "shards_away")
    try:
        res = _cli("eval", str(moved / "runs" / "x"), cwd=tmp_path)
    finally:
        (project / "shards_away").rename(project / "shards")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    err = " ".join(res.stderr.split())
    assert str((project / "shards" / "synth").resolve()) in err  # the absolute path tried
    assert str((moved / "shards" / "synth").resolve()) in err  # the relative one tried
    assert "--set data.shards" in err


def test_user_override_of_the_shards_wins(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere/manifest.json does not exist"):
        evaluate_model(project / "runs" / "x", None, [f"data.shards={tmp_path / 'nowhere'}"], None, None)


def test_manifest_source_found_relative_to_the_shard_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "gt.json").write_text("{}")
    manifest = {"sources": {"val_annotations": portable(tmp_path / "data" / "gt.json", tmp_path / "shards")}}
    manifest["sources"]["val_annotations"]["path"] = "/moved/away/gt.json"
    assert source_file(manifest, tmp_path / "shards", "val_annotations") == (tmp_path / "data" / "gt.json").resolve()
    with pytest.raises(FileNotFoundError) as err:
        source_file(manifest, tmp_path / "deeper" / "shards", "val_annotations")
    msg = str(err.value)
    assert "/moved/away/gt.json nor " in msg and str(tmp_path / "deeper" / "data" / "gt.json") in msg
    with pytest.raises(ValueError, match="has no sources.val_detections"):
        source_file(manifest, tmp_path / "shards", "val_detections")


def test_first_existing_prefers_the_absolute_path(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "base" / "a").mkdir(parents=True)
    entry = {"path": str(tmp_path / "a"), "relative": "a"}
    assert first_existing(candidates(entry, tmp_path / "base"), "x", "") == tmp_path / "a"
