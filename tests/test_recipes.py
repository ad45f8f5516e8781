"""Every shipped recipe validates; bad recipes and overrides fail with one clear message (litgpt test_config_hub)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sshpe.recipe import Recipe, RecipeError, load_recipe, parse_duration

RECIPE_DIR = Path(__file__).parents[1] / "recipes"
RECIPES = sorted(RECIPE_DIR.glob("*.yaml"))


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert "quickstart.yaml" in names and "_smoke.yaml" in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_validates(path: Path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    # round trip: the resolved recipe written into run folders validates to the same object
    again = Recipe.model_validate(yaml.safe_load(yaml.safe_dump(recipe.model_dump(mode="json", by_alias=True))))
    assert again == recipe and again.hash() == recipe.hash()


def _write(tmp_path: Path, raw: dict) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


BASE = {"name": "t", "data": {"shards": "shards/x"}}


@pytest.mark.parametrize(
    "patch, expected",
    [
        ({"data": {"shards": "s", "colr": "rgb"}}, "r.yaml: data.colr: unknown field; allowed: ['color'"),
        ({"data": {"shards": "s", "colr": "rgb"}}, "did you mean 'color'?"),
        ({"train": {"batch_size": "many"}}, "r.yaml: train.batch_size: Input should be a valid integer"),
        ({"teacher": {"kind": "emann"}}, "r.yaml: teacher.kind: 'emann' is not one of ['none', 'single', 'dual'"),
        ({"augment": {"paths": [[{"kind": "joint_cutot"}]]}}, "augment.paths[0][0].kind: 'joint_cutot' is not one"),
        ({"augment": {"paths": [[{"kind": "joint_cutot"}]]}}, "did you mean 'joint_cutout'?"),
        ({"augment": {"paths": [[{"kind": "cutout", "holse": 2}]]}}, "augment.paths[0][0].holse: unknown field"),
        ({"train": {"duration": "3 weeks"}}, "train.duration: '3 weeks' is not a duration"),
        (
            {"augment": {"paths": [[{"kind": "cutmix", "half_min": 9, "half_max": 4}]]}},
            "half_min=9 must be <= half_max=4",
        ),
        ({"model": {"schema": "coco18"}}, "model.schema: 'coco18' is neither a built-in schema (coco17, mpii16"),
        ({"model": {"schema": "coco18"}}, "did you mean 'coco17'?"),
    ],
)
def test_bad_recipe_messages(tmp_path, patch, expected):
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, BASE | patch))
    assert expected in str(err.value)


def test_all_problems_reported_at_once(tmp_path):
    raw = BASE | {"data": {"shards": "s", "colr": 1}, "modle": {}, "train": {"batch_size": 0}}
    with pytest.raises(RecipeError) as err:
        load_recipe(_write(tmp_path, raw))
    lines = str(err.value).splitlines()
    assert len(lines) == 3
    assert any("modle" in ln and "did you mean 'model'" in ln for ln in lines)


def test_cross_field_rules(tmp_path):
    raw = BASE | {"teacher": {"kind": "eman"}, "augment": {"mum": {"group": 3}}, "train": {"batch_size": 8}}
    with pytest.raises(RecipeError, match="augment.mum.group=3 must divide the unlabeled batch size 8"):
        load_recipe(_write(tmp_path, raw))
    raw = BASE | {"teacher": {"kind": "single"}, "data": {"shards": "s", "unlabeled_split": None}}
    with pytest.raises(RecipeError, match="needs data.unlabeled_split"):
        load_recipe(_write(tmp_path, raw))


def test_overrides_are_validated_like_the_file(tmp_path):
    path = _write(tmp_path, BASE)
    r = load_recipe(path, ["train.batch_size=7", "teacher.kind=eman", "teacher.decay=0.6", "data.input_size=[128,96]"])
    assert r.train.batch_size == 7 and r.teacher.kind == "eman" and r.teacher.decay == 0.6
    assert r.data.input_size == (128, 96)
    with pytest.raises(RecipeError, match="train.batch_size: Input should be a valid integer"):
        load_recipe(path, ["train.batch_size=abc"])
    with pytest.raises(RecipeError, match="must look like `section.field=value`"):
        load_recipe(path, ["train.batch_size"])
    with pytest.raises(RecipeError, match="--set .name.x=1.: name is not a section"):
        load_recipe(path, ["name.x=1"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


def test_durations_convert_once():
    assert parse_duration("30ep", 100) == 3000
    assert parse_duration("0.5ep", 101) == 51
    assert parse_duration("250st", 100) == 250
    assert parse_duration(40, 100) == 40


def test_cli_recipe_commands(tmp_path):
    bad = _write(tmp_path, BASE | {"modle": {}})
    run = subprocess.run(
        [sys.executable, "-m", "sshpe._cli.app", "recipe", "check", str(bad)], capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "modle: unknown field" in run.stderr and "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, "-m", "sshpe._cli.app", "recipe", "schema"], capture_output=True, text=True)
    schema = json.loads(run.stdout)
    assert "data" in schema["properties"] and schema["additionalProperties"] is False
    # every field carries a description (it feeds --help and editors)
    for name, definition in schema["$defs"].items():
        for field, spec in definition.get("properties", {}).items():
            if field != "kind":
                assert spec.get("description"), f"{name}.{field} has no description"


PUBLISHED = [p for p in RECIPES if p.read_text().startswith("# Reproduces: reference")]


def test_published_recipes_use_per_gpu_batchnorm_as_the_papers():
    """No SyncBatchNorm anywhere in SHP/MA/SSPCM (reference §10.21): recipes that reproduce a number turn it off."""
    assert len(PUBLISHED) >= 30
    assert all(load_recipe(p).distributed.sync_bn == "off" for p in PUBLISHED)
    assert Recipe.model_fields["distributed"].default_factory().sync_bn == "auto"  # the default stays the improvement


def test_posecons_jc_schedule_is_multiaugs_posecons_as():
    """MA's 256x192_COCO1K_PoseCons_AS.yaml (with --jc_aug): END_EPOCH 30, LR_STEP 20, 25."""
    r = load_recipe(Path(__file__).parents[1] / "recipes" / "coco1k-coco_res18-256x192_posecons-jc.yaml")
    assert r.train.duration == "30ep" and r.optim.milestones == ("20ep", "25ep")


def test_mpii_aic_recipes_train_the_union_head_and_score_pckh_like_the_reference():
    for p in RECIPES:
        if p.name.startswith("mpii-aic_"):
            r = load_recipe(p)
            assert r.schema.name == "union24" and r.eval.reference_quirks and not r.eval.flip_test


# --- names checked at `recipe check`, before any run folder exists (issue 14) -------------------------------------


def test_recipe_check_reports_backbone_and_stage_names_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    raw = yaml.safe_load((RECIPE_DIR / "coco1k-coco_res18-256x192_mum.yaml").read_text())
    raw["model"]["arch"] = "resnet-18"
    bad.write_text(yaml.safe_dump(raw))
    stage = tmp_path / "stage.yaml"
    raw["model"]["arch"] = "resnet18"
    raw["augment"]["mum"]["unmix_after"] = "layer5"
    stage.write_text(yaml.safe_dump(raw))
    res = subprocess.run([sys.executable, "-m", "sshpe._cli.app", "recipe", "check", str(bad), str(stage)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "model.arch: unknown model 'resnet-18'" in res.stderr and "did you mean 'resnet18'" in res.stderr
    assert "augment.mum.unmix_after='layer5': resnet18 has no such encoder stage" in res.stderr


@pytest.mark.parametrize(
    "arch", ["convnext_tiny", "timm:convnext_tiny", "timm/convnext_tiny.fb_in1k", "hf-hub:timm/convnext_tiny.fb_in1k"]
)
def test_timm_backbone_names_resolve_without_download(arch):
    from sshpe.models.build import encoder_stages

    r = load_recipe(RECIPE_DIR / "coco1k-coco_res18-256x192_mum.yaml", [f"model.arch={arch}", "augment.mum=null"])
    assert r.model.arch == arch and encoder_stages(arch)[-1] == "stages_3"
    with pytest.raises(RecipeError, match="augment.mum.unmix_after='layer4': .* has no such encoder stage"):
        load_recipe(RECIPE_DIR / "coco1k-coco_res18-256x192_mum.yaml", [f"model.arch={arch}"])  # ResNet stage name


def test_hub_ids_outside_timm_are_refused_with_the_fix():
    with pytest.raises(RecipeError, match="only timm's own Hub weights"):
        load_recipe(RECIPE_DIR / "quickstart.yaml", ["model.arch=hf-hub:someone/posenet"])


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "hrnet_tiny", "hrnet_small"])
def test_stage_table_matches_the_built_networks(arch):
    from sshpe.models.build import build_model, encoder_stages

    heads = {} if arch.startswith("hrnet") else {"head_channels": (8, 8, 8)}
    assert encoder_stages(arch) == tuple(build_model(arch, 17, **heads).stages)
