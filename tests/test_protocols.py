"""Whole protocols from synthetic data, no download: MPII + AI Challenger with a 24-channel union head and PCKh on
MPII (reference §1.2, §1.9, §9.4) through the shipped recipe, and a custom 5-keypoint non-human schema through
shard -> train -> eval -> export -> predict, the run folder alone sufficing after training."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import yaml
from conftest import REPO, smoke_recipe
from scipy.io import loadmat

from sshpe.data.prepare import SourceFiles, default_schema, find_sources, shard_dataset
from sshpe.evaluation.oracle import oracle_ap
from sshpe.export import read_metadata
from sshpe.loop import fit
from sshpe.recipe import load_recipe
from sshpe.schema import load_schema_file
from sshpe.synth.native import generate_native

CLI = [sys.executable, "-m", "sshpe._cli.app"]
PCKH_KEYS = ["Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean", "Mean@0.1"]
TINY = ["model.arch=test_resnet", "model.pretrained=false", "model.head_channels=[16,16,16]",
        "model.channels_last=false", "data.input_size=[64,64]", "data.num_workers=0", "train.batch_size=4",
        "train.eval_every=0", "train.progress=false", "eval.batch_size=8"]  # fmt: skip


@pytest.fixture(scope="module")
def mpii_aic(tmp_path_factory):
    """Synthetic MPII (labeled + val with gt_valid.mat) and AIC (unlabeled) in their native layouts, sharded."""
    root = tmp_path_factory.mktemp("mpii_aic")
    common = dict(image_size=(160, 120), workers=0)
    generate_native(root / "mpii", "mpii", num_train=6, num_val=5, seed=11, **common)
    generate_native(root / "aic", "aic", num_train=4, num_val=0, seed=12, **common)
    src = replace(find_sources(root / "mpii"), unlabeled_source=find_sources(root / "aic"))
    shard_dataset(src, root / "shards", dataset="mpii", input_hw=(64, 64), shard_size=8, progress=False)
    return root


def test_mpii_aic_protocol_with_the_shipped_recipe(mpii_aic, tmp_path):
    shards = mpii_aic / "shards"
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["schema"]["name"] == "mpii16" and "pckh" in manifest["schema"]
    assert {"val_pckh", "unlabeled_annotations"} <= set(manifest["sources"])
    aic = json.loads((mpii_aic / "aic" / "train" / "keypoint_train_annotation.json").read_text())
    assert manifest["splits"]["unlabeled"]["count"] == sum(len(i["human_annotations"]) for i in aic)

    path = REPO / "recipes" / "mpii-aic_hrnetw32-256x256_posedual-jc.yaml"
    recipe = load_recipe(path, [f"data.shards={shards}", "train.duration=2", *TINY])
    assert recipe.schema.name == "union24" and recipe.eval.reference_quirks  # the reference's 24-channel head
    oracle = oracle_ap(recipe)  # GT heatmaps through the whole chain: a frame bug would give ~0
    assert oracle["Mean"] > 90.0
    run = tmp_path / "run"
    stats = fit(recipe, run)
    assert list(stats) == PCKH_KEYS and all(0.0 <= v <= 100.0 for v in stats.values() if v == v)
    preds = loadmat(str(run / "final" / "pred.mat"))["preds"]
    assert preds.shape == (manifest["splits"]["val"]["count"], 16, 3)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1]["val/Mean"] == stats["Mean"]
    res = subprocess.run(CLI + ["eval", str(run)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "Mean@0.1" in res.stdout and "Shoulder" in res.stdout


def test_custom_five_keypoint_schema_end_to_end(synth_root, tmp_path):
    # A non-human 5-keypoint set: five of the synthetic figures' joints renamed, in a COCO-format file.
    names = ["snout", "left_fin", "right_fin", "left_tail", "right_tail"]
    take = [0, 9, 10, 15, 16]
    for split in ("train", "val"):
        coco = json.loads((synth_root / "annotations" / f"person_keypoints_{split}.json").read_text())
        for ann in coco["annotations"]:
            k = np.array(ann["keypoints"]).reshape(17, 3)[take]
            ann["keypoints"], ann["num_keypoints"] = k.reshape(-1).tolist(), int((k[:, 2] > 0).sum())
        coco["categories"] = [{"id": 1, "name": "fish", "keypoints": names, "skeleton": [[1, 2], [1, 3]]}]
        (tmp_path / f"fish_{split}.json").write_text(json.dumps(coco))
    schema_file = tmp_path / "fish5.yaml"
    schema_file.write_text(yaml.safe_dump({
        "name": "fish5", "names": names, "flip_pairs": [["left_fin", "right_fin"], ["left_tail", "right_tail"]],
        "sigmas": [0.03, 0.06, 0.06, 0.08, 0.08], "skeleton": [["snout", "left_fin"], ["snout", "right_fin"]],
    }))  # fmt: skip
    fish = load_schema_file(schema_file)

    # Without --schema the categories give one (flip pairs from left/right names, default sigmas).
    src = SourceFiles(train_ann=tmp_path / "fish_train.json", train_images=synth_root / "images" / "train")
    inferred = default_schema(src)
    assert inferred.name == "fish" and inferred.flip_pairs == fish.flip_pairs and inferred.num_joints == 5

    shards = tmp_path / "shards"
    res = subprocess.run(CLI + [
        "shard", str(tmp_path), str(shards), "--schema", str(schema_file), "--input-size", "64x64",
        "--train-ann", str(tmp_path / "fish_train.json"), "--train-images", str(synth_root / "images" / "train"),
        "--val-ann", str(tmp_path / "fish_val.json"), "--val-images", str(synth_root / "images" / "val"),
        "--shard-size", "8", "--workers", "0", "--name", "fish",
    ], capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads((shards / "manifest.json").read_text())["schema"] == fish.as_metadata()

    run = tmp_path / "run"
    fit(smoke_recipe(shards, f"model.schema={schema_file}"), run)
    schema_file.unlink()  # eval, export and predict work from the run folder alone
    res = subprocess.run(CLI + ["eval", str(run)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "AP50" in res.stdout
    exported = tmp_path / "fish.safetensors"
    res = subprocess.run(CLI + ["export", str(run), "--out", str(exported)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    meta = read_metadata(exported)
    assert meta["num_joints"] == 5 and meta["schema"] == fish.as_metadata()
    images = sorted((synth_root / "images" / "val").glob("*.jpg"))[:2]
    out = tmp_path / "pred"
    res = subprocess.run(CLI + ["predict", str(exported), *map(str, images), "--out", str(out)],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    pred = json.loads((out / "keypoints.json").read_text())
    assert pred["keypoint_names"] == names and len(pred["images"]) == 2
    assert all(len(p["keypoints"]) == 5 for im in pred["images"] for p in im["people"])
    results = json.loads((run / "final" / "results.json").read_text())
    assert results and all(len(r["keypoints"]) == 15 for r in results)
