"""Keypoint schemas as data: the built-in files, strict validation with errors naming the file and field, schemas
from COCO categories, the joint map between a dataset and a model, and `model.schema: FILE` in recipes."""

from __future__ import annotations

import json
import logging

import pytest
import yaml
from conftest import REPO

from sshpe.recipe import RecipeError, dump_recipe, load_recipe
from sshpe.schema import (
    AIC14,
    COCO17,
    MPII16,
    UNION24,
    get_schema,
    joint_map,
    load_schema_file,
    schema_from_coco_category,
    schema_from_data,
)

FISH = {
    "name": "fish5",
    "names": ["snout", "left_fin", "right_fin", "left_tail", "right_tail"],
    "flip_pairs": [["left_fin", "right_fin"], [3, 4]],
    "sigmas": [0.03, 0.06, 0.06, 0.08, 0.08],
    "skeleton": [["snout", "left_fin"], ["snout", "right_fin"], ["left_fin", "left_tail"], [2, 4]],
}


def _write(tmp_path, data, name="s.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if name.endswith(".yaml") else json.dumps(data))
    return path


def test_builtin_files_hold_the_published_definitions():
    # COCO's OKS sigmas (cocoapi) and flip pairs; MPII's and AIC's flip pairs in their own joint orders (§1.9)
    assert COCO17.sigmas[:5] == (0.026, 0.025, 0.025, 0.035, 0.035) and COCO17.sigmas[-1] == 0.089
    assert COCO17.flip_pairs == tuple((i, i + 1) for i in range(1, 17, 2))
    assert MPII16.flip_pairs == ((0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13))
    assert AIC14.flip_pairs == ((0, 3), (1, 4), (2, 5), (6, 9), (7, 10), (8, 11))
    # the union indices of SHP JointsDataset `union_joints`: COCO nose -> 11, MPII pelvis -> root 0, AIC neck -> 9
    assert COCO17.union[0] == 11 and COCO17.union[16] == 3 and MPII16.union[6] == 0 and AIC14.union[13] == 9
    assert UNION24.num_joints == 24 and UNION24.flip_pairs[0] == (1, 4) and not UNION24.union
    assert MPII16.pckh.head_size_factor == 0.6 and MPII16.pckh.threshold == 0.5
    assert MPII16.pckh.mean_excludes == (6, 7) and [t for t, _ in MPII16.pckh.columns][0] == "Head"
    assert get_schema("coco17") is COCO17


def test_schema_file_round_trips_through_metadata(tmp_path):
    fish = load_schema_file(_write(tmp_path, FISH))
    assert fish.flip_pairs == ((1, 2), (3, 4)) and fish.skeleton[3] == (2, 4) and fish.joint_weights == (1.0,) * 5
    assert fish.flip_index() == [0, 2, 1, 4, 3]
    for schema in (fish, COCO17, MPII16, AIC14, UNION24):
        meta = json.loads(json.dumps(schema.as_metadata()))  # as stored in manifests and safetensors metadata
        assert schema_from_data(meta, "meta") == schema
    assert load_schema_file(_write(tmp_path, FISH, "s.json")) == fish  # JSON works too


@pytest.mark.parametrize(
    "patch, expected",
    [
        (
            {"flip_pairs": [["left_fin", "rigth_fin"]]},
            "flip_pairs: 'rigth_fin' is not a joint name or an index below 5",
        ),
        ({"sigmas": [0.1, 0.1]}, "sigmas: 2 entries for 5 names"),
        ({"names": ["a", "a", "b", "c", "d"], "flip_pairs": [], "skeleton": []}, "names: ['a'] appear more than once"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
        ({"union": ["nose", None, None, None, "tail"]}, "union: ['tail'] are not union24 joints"),
        ({"joint_weights": [1, 1, 0, 1, 1]}, "joint_weights: every value must be > 0"),
        ({"pckh": {"columns": {"Fin": ["left_fin", "dorsal"]}}}, "pckh.columns.Fin: 'dorsal' is not a joint name"),
        ({"flip_pairs": [[1, 2], [2, 3]]}, "flip_pairs: a joint appears in more than one pair"),
    ],
)
def test_bad_schema_files_name_the_file_and_field_in_one_line(tmp_path, patch, expected):
    path = _write(tmp_path, FISH | patch)
    with pytest.raises(ValueError) as err:
        load_schema_file(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and expected in msg and "\n" not in msg


def test_unreadable_schema_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ValueError, match="bad.yaml: not valid YAML"):
        load_schema_file(bad)
    with pytest.raises(ValueError, match="a keypoint schema is a mapping"):
        load_schema_file(_write(tmp_path, ["a", "b"]))
    with pytest.raises(ValueError, match="unknown keypoint schema 'coco18': not a built-in"):
        get_schema("coco18")


def test_schema_from_coco_categories(caplog):
    cat = {"name": "fish", "keypoints": FISH["names"], "skeleton": [[1, 2], [1, 3]]}
    with caplog.at_level(logging.WARNING, logger="sshpe.schema"):
        fish = schema_from_coco_category(cat, "ann.json")
    assert fish.name == "fish" and fish.names == tuple(FISH["names"])
    assert fish.flip_pairs == ((1, 2), (3, 4))  # left_/right_ names pair up
    assert fish.skeleton == ((0, 1), (0, 2))  # 1-based in COCO files
    assert fish.sigmas == (0.07,) * 5 and "no sigmas given" in caplog.text
    coco_cat = {"name": "person", "keypoints": list(COCO17.names), "skeleton": []}
    assert schema_from_coco_category(coco_cat, "x") is COCO17  # the full built-in, sigmas included
    with pytest.raises(ValueError, match="ann.json: categories\\[0\\] has no `keypoints` list"):
        schema_from_coco_category({"name": "person"}, "ann.json")


def test_joint_map_between_data_and_model(tmp_path):
    assert joint_map(COCO17, COCO17) == tuple(range(17))
    jm = joint_map(AIC14, UNION24)
    assert jm[UNION24.names.index("neck")] == AIC14.names.index("neck") and jm[UNION24.names.index("nose")] == -1
    fish = load_schema_file(_write(tmp_path, FISH))
    reordered = schema_from_data(fish.as_metadata() | {"names": FISH["names"][::-1], "flip_pairs": [], "skeleton": []},
                                 "x")  # fmt: skip
    assert joint_map(fish, reordered) == (4, 3, 2, 1, 0)  # same joints, other order: matched by name
    with pytest.raises(ValueError, match="no joint mapping from the data's keypoint schema 'fish5'"):
        joint_map(fish, UNION24)  # no `union` mapping in the fish file


def test_recipe_reads_a_schema_file_once_and_stores_it_inline(tmp_path, monkeypatch):
    path = _write(tmp_path, FISH, "fish5.yaml")
    recipe = load_recipe(REPO / "recipes" / "_smoke.yaml", [f"model.schema={path}"])
    assert recipe.schema.name == "fish5" and recipe.schema.num_joints == 5
    dumped = tmp_path / "run_recipe.yaml"
    dumped.write_text(dump_recipe(recipe))
    assert yaml.safe_load(dumped.read_text())["model"]["schema"]["names"] == FISH["names"]
    path.unlink()  # a run folder's recipe.yaml needs no schema file
    again = load_recipe(dumped)
    assert again.schema == recipe.schema and again.hash() == recipe.hash()
    changed = _write(tmp_path, FISH | {"sigmas": [0.05] * 5}, "fish5.yaml")
    assert load_recipe(REPO / "recipes" / "_smoke.yaml", [f"model.schema={changed}"]).hash() != recipe.hash()
    bad = _write(tmp_path, FISH | {"sigmas": [1.0]}, "bad.yaml")
    with pytest.raises(RecipeError) as err:
        load_recipe(REPO / "recipes" / "_smoke.yaml", [f"model.schema={bad}"])
    assert f"model.schema: {bad}: sigmas: 1 entries for 5 names" in str(err.value)
    monkeypatch.chdir(tmp_path)
    assert load_recipe(REPO / "recipes" / "_smoke.yaml", ["model.schema=fish5.yaml"]).schema.name == "fish5"
