"""Tests for `sshpe synth`: COCO layout and validity, determinism, label geometry, facing cues, detections, and
failure behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from sshpe.schema import COCO17
from sshpe.synth import VAL_ID_OFFSET, generate
from sshpe.synth.figures import EXTRA_NAMES, FACINGS, JOINT_NAMES, LABELS_PER_LAYER, choice_cdf, choose, sample_figure
from sshpe.synth.scene import SceneKnobs, _place_people, box_iou, render_background, render_scene, upsample_rows
from sshpe.synth.stats import BOUNDS, check_bounds, file_stats

W, H = 480, 360
NUM_TRAIN, NUM_VAL = 6, 4


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "ds"
    return out, generate(out, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=3, progress=False)


def test_layout_and_coco_validity(dataset):
    out, summary = dataset
    for split, count in (("train", NUM_TRAIN), ("val", NUM_VAL)):
        coco = COCO(str(out / "annotations" / f"person_keypoints_{split}.json"))
        assert len(coco.getImgIds()) == count == summary["images"][split]
        assert len(coco.getAnnIds()) == summary["persons"][split] >= count
        cat = coco.loadCats(1)[0]
        assert cat["name"] == "person" and cat["keypoints"] == list(COCO17.names)
        assert cat["skeleton"] == [[a + 1, b + 1] for a, b in COCO17.skeleton]
        for img in coco.dataset["images"]:
            assert (img["id"] > VAL_ID_OFFSET) == (split == "val")
            pixels = cv2.imread(str(out / "images" / split / img["file_name"]))
            assert pixels.shape == (img["height"], img["width"], 3) == (H, W, 3)
            assert img["file_name"] == f"{img['id']:012d}.jpg"
        labelled = 0
        for ann in coco.dataset["annotations"]:
            k = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
            assert k.shape == (17, 3) and set(np.unique(k[:, 2])) <= {0.0, 1.0, 2.0}
            assert ann["num_keypoints"] == int((k[:, 2] > 0).sum())
            assert np.all(k[k[:, 2] == 0, :2] == 0)
            x, y, w, h = ann["bbox"]
            vis = k[k[:, 2] == 2, :2]  # seen joints lie on the silhouette the box encloses (covered ones may not)
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W and y + h <= H
            assert np.all((vis[:, 0] >= x) & (vis[:, 0] <= x + w) & (vis[:, 1] >= y) & (vis[:, 1] <= y + h))
            assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0 and ann["category_id"] == 1
            assert ann["facing"] in FACINGS
            labelled += ann["num_keypoints"]
        assert labelled == summary["keypoints_labelled"][split] > 0


def test_same_seed_identical_any_workers_other_seed_differs(dataset, tmp_path):
    out, _ = dataset
    generate(tmp_path / "again", num_train=NUM_TRAIN, num_val=NUM_VAL, seed=3, workers=2, progress=False)
    first, again = _files(out), _files(tmp_path / "again")
    assert first.keys() == again.keys() and len(first) == NUM_TRAIN + NUM_VAL + 3
    assert all(first[k] == again[k] for k in first)
    generate(tmp_path / "other", num_train=NUM_TRAIN, num_val=NUM_VAL, seed=4, progress=False)
    other = _files(tmp_path / "other")
    assert other.keys() == first.keys()
    assert all(other[k] != first[k] for k in first)


def test_keypoints_are_where_the_figures_are_drawn():
    knobs = SceneKnobs(photometric=0.0, occluders=1.0)
    seen, covered = 0, 0
    for seed in range(6):
        scene = render_scene(np.random.SeedSequence(seed), (W, H), knobs)
        bg_ss, people_ss = np.random.SeedSequence(seed).spawn(4)[:2]
        horizon, _ = _place_people(np.random.default_rng(people_ss), (W, H), knobs)
        background = render_background(bg_ss, (W, H), knobs.clutter, horizon)
        changed = np.abs(scene.img.astype(int) - background.astype(int)).sum(-1) > 0
        for person in scene.persons:
            k = person["keypoints"]
            xy = np.round(k[k[:, 2] == 2, :2]).astype(int)
            lab = scene.label[xy[:, 1], xy[:, 0]]
            assert np.all(lab // LABELS_PER_LAYER == person["layer"]), "a v=2 joint is not on its own figure"
            assert not len(xy) or changed[xy[:, 1], xy[:, 0]].mean() >= 0.95
            seen += len(xy)
            covered += int((k[:, 2] == 1).sum())
    assert seen > 50 and covered > 0


def test_facing_distribution_and_left_right_geometry():
    rng = np.random.default_rng(0)
    figs = [sample_figure(rng, (160.0, 120.0), 150.0) for _ in range(300)]
    counts = {f: sum(fig.facing == f for fig in figs) for f in FACINGS}
    assert all(c >= 30 for c in counts.values()), counts
    profile_hidden = []  # (nose, near eye, far eye) hidden
    for fig in figs:
        sh_l, sh_r = fig.kpts_img[5, 0], fig.kpts_img[6, 0]
        if fig.facing == "front":  # the person's left appears on the image right, the face is shown
            assert sh_l > sh_r and not fig.face_hidden[:3].any()
        elif fig.facing == "back":
            assert sh_l < sh_r and fig.face_hidden[0]
        else:  # profile: the far eye is hidden, the nose and near eye shown (the yaw jitter makes exceptions)
            far_eye = 2 if fig.facing == "left" else 1
            profile_hidden.append(fig.face_hidden[[0, 3 - far_eye, far_eye]])
    nose, near_eye, far_eye = np.mean(profile_hidden, axis=0)
    assert nose < 0.2 and near_eye < 0.1 and far_eye > 0.6, (nose, near_eye, far_eye)


def test_detections_match_ground_truth(dataset):
    out, _ = dataset
    gt = COCO(str(out / "annotations" / "person_keypoints_val.json"))
    dets = json.loads((out / "annotations" / "person_detections_val.json").read_text())
    assert dets and all(d["category_id"] == 1 and 0 < d["score"] <= 1 for d in dets)
    gt.loadRes(dets)  # the file is valid COCO detection results
    best = []
    for ann in gt.dataset["annotations"]:
        boxes = [d["bbox"] for d in dets if d["image_id"] == ann["image_id"]]
        best.append(max(box_iou(np.asarray(b), np.asarray(ann["bbox"])) for b in boxes))
    assert np.mean(np.asarray(best) >= 0.5) >= 0.9
    assert len(dets) >= len(best)


def test_failed_write_raises_and_leaves_no_partial_json(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match="not_a_dir"):
        generate(blocker, num_train=1, num_val=1, progress=False)
    out = tmp_path / "ds"
    (out / "annotations" / "person_keypoints_val.json").mkdir(parents=True)  # makes the final rename fail
    with pytest.raises(OSError):
        generate(out, num_train=1, num_val=1, progress=False)
    leftovers = [p.name for p in (out / "annotations").iterdir()]
    assert not [n for n in leftovers if ".tmp" in n], leftovers
    for p in (out / "annotations").glob("*.json"):
        if p.is_file():
            json.loads(p.read_text())


def test_bad_arguments_are_reported_together(tmp_path):
    with pytest.raises(ValueError, match="num_train=-1.*max_people=0"):
        generate(tmp_path, num_train=-1, num_val=1, max_people=0, progress=False)


def test_default_val_split_is_coco_like(tmp_path):
    """The default generator's val split meets the COCO-like bounds (sizes against COCO's area ranges, silhouettes
    about half their box), with 1-4 people per image, covered and truncated persons (a 150-image split)."""
    out = tmp_path / "ds"
    generate(out, num_train=0, num_val=150, seed=0, progress=False)
    st = file_stats(out / "annotations" / "person_keypoints_val.json")
    assert check_bounds(st) == [], st
    assert BOUNDS["median_fill"] == (0.40, 0.60) and BOUNDS["area_ge_96sq"][0] == 0.25
    assert set(st["people_per_image"]) == {1, 2, 3, 4}
    assert 0.1 < st["occluded_share"] < 0.5 and 0.1 < st["truncated"] < 0.6
    assert 0.6 < st["labelled_share"] < 0.95
    assert set(st["facing"]) == set(FACINGS)


def test_stats_bounds_catch_thin_small_persons():
    """`check_bounds` reports what the old generator produced: small persons whose silhouette is a quarter of the
    box."""
    anns = [{"image_id": 1, "area": 900.0, "bbox": [0, 0, 60, 60], "keypoints": [0] * 51, "iscrowd": 0}] * 4
    st = person_stats_of(anns)
    missed = " ".join(check_bounds(st))
    assert "area_ge_32sq=0.000" in missed and "area_ge_96sq=0.000" in missed and "median_fill=0.250" in missed


def person_stats_of(anns):
    from sshpe.synth.stats import person_stats

    return person_stats({"images": [{"id": 1, "width": 100, "height": 100}], "annotations": anns})


def test_extra_joints_and_head_box(dataset):
    """Every annotation carries the MPII/AIC joints COCO lacks and the head rectangle, consistent with the body."""
    out, _ = dataset
    coco = json.loads((out / "annotations" / "person_keypoints_train.json").read_text())
    upright = 0
    for ann in coco["annotations"]:
        extra = ann["extra_joints"]
        assert list(extra) == list(EXTRA_NAMES) and JOINT_NAMES[17:] == EXTRA_NAMES
        for x, y, v in extra.values():
            assert v in (0, 1, 2) and (v > 0 or x == y == 0)
        x1, y1, x2, y2 = ann["head_box"]
        assert x2 > x1 and y2 > y1
        top, neck = extra["head_top"], extra["upper_neck"]
        if top[2] and neck[2] and ann["pose"] == "standing":
            assert top[1] < neck[1] < extra["thorax"][1] + 1e-6 <= extra["pelvis"][1] + 1e-6
            assert x1 - 1 <= top[0] <= x2 + 1 and y1 - 1 <= top[1] <= y2 + 1
            upright += 1
    assert upright > 0


def test_stats_cli(tmp_path):
    from sshpe._cli.app import app
    from typer.testing import CliRunner

    out = tmp_path / "ds"
    res = CliRunner().invoke(app, ["synth", str(out), "--train", "2", "--val", "3", "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "area >= 96^2" in res.output and "median area / box area" in res.output
    again = CliRunner().invoke(app, ["synth", str(out), "--stats"])
    assert again.exit_code == 0 and "persons" in again.output
    missing = CliRunner().invoke(app, ["synth", str(tmp_path / "none"), "--stats"])
    assert missing.exit_code == 2 and "run `sshpe synth" in missing.output


@pytest.mark.parametrize("size", [(480, 360), (320, 240), (97, 61), (200, 33)])
def test_upsample_rows_equals_full_resize(size):
    """The wall's partial upsampling gives exactly the top rows of a full cubic resize."""
    w, h = size
    rng = np.random.default_rng(w)
    for _ in range(4):
        small = rng.integers(0, 256, (h // 16 + 2, w // 16 + 2, 3), dtype=np.uint8)
        full = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        for rows in (0, 1, h // 7, h // 3, h // 2, h - 1, h):
            np.testing.assert_array_equal(upsample_rows(small, w, h, rows), full[:rows])


def test_choose_matches_generator_choice():
    """`choose` picks what `Generator.choice(options, p=p)` picks and leaves the generator in the same state."""
    options, p = ("a", "b", "c", "d"), (0.4, 0.25, 0.175, 0.175)
    ours, numpy_rng = np.random.default_rng(5), np.random.default_rng(5)
    picks = [choose(ours, options, choice_cdf(p)) for _ in range(2000)]
    assert picks == [str(numpy_rng.choice(options, p=p)) for _ in range(2000)]
    assert set(picks) == set(options) and ours.random() == numpy_rng.random()
