"""MPII and AI Challenger in their native layouts: the readers' geometry and visibility rules (reference §1.9), every
malformed input rejected with one line naming the file and the entry, and the synthetic MPII / AIC writers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from sshpe.data.prepare import find_sources
from sshpe.data.readers.aic import load_aic
from sshpe.data.readers.mpii import load_mpii, read_pckh_gt
from sshpe.geometry import box_to_center_scale
from sshpe.schema import AIC14, COCO17, MPII16
from sshpe.synth.native import HEAD_TOP_AT, UPPER_NECK_AT, write_aic, write_mpii


def _image(path: Path, w: int = 64, h: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 128, np.uint8))


def _mpii_entry(image="a.jpg", center=(101.0, 201.0), scale=2.0, **kw) -> dict:
    joints = [[-1.0, -1.0]] * 16
    joints[0] = [11.0, 21.0]
    return {"image": image, "center": list(center), "scale": scale, "joints": joints,
            "joints_vis": [1] + [0] * 15} | kw  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# MPII
# ---------------------------------------------------------------------------------------------------------------


def test_mpii_reader_geometry(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        _image(tmp_path / "images" / name)
    entries = [_mpii_entry(), _mpii_entry(), _mpii_entry("b.jpg", center=(-1.0, -1.0))]
    (tmp_path / "train.json").write_text(json.dumps(entries))
    insts = load_mpii(tmp_path / "train.json", tmp_path / "images", kind="labeled", aspect=1.0)
    first = insts[0]
    # 1-based -> 0-based; the centre moves down 15 * scale px and the scale grows x 1.25 (HRNet mpii.py)
    assert np.allclose(first.center, [100.0, 230.0]) and np.allclose(first.scale, [2.5, 2.5])
    assert first.keypoints[0].tolist() == [10.0, 20.0, 2.0] and not first.keypoints[1:].any()
    assert first.image_size == (64, 48) and first.num_keypoints == 1
    assert [(i.image_id, i.ann_id) for i in insts] == [(1, 0), (1, 1), (2, 2)]  # ann_id = entry = gt_valid column
    assert np.allclose(insts[2].center, [-2.0, -2.0]) and np.allclose(insts[2].scale, [2.0, 2.0])  # no valid centre
    tall = load_mpii(tmp_path / "train.json", tmp_path / "images", kind="labeled", aspect=0.75)[0]
    assert np.allclose(tall.scale, [2.5, 2.5 / 0.75])  # width (the crop's zoom) as the reference; height grown
    unl = load_mpii(tmp_path / "train.json", tmp_path / "images", kind="unlabeled", aspect=1.0, num_joints=24)
    assert unl[0].keypoints.shape == (24, 3) and not unl[0].keypoints.any()


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("not an object", "entry [0] is a str, expected an object"),
        ({"image": "a.jpg", "center": [1, 2], "scale": 1.0}, "entry [0] has no 'joints'"),
        (_mpii_entry(scale=-1), "entry [0] (a.jpg): scale -1 must be a positive number"),
        (_mpii_entry(center=[1.0]), "entry [0] (a.jpg): center [1.0] is not [x, y]"),
        (_mpii_entry(joints=[[1, 2]] * 15), "entry [0] (a.jpg): joints must be 16 x [x, y] numbers"),
        (_mpii_entry(joints_vis=[2] * 16), "entry [0] (a.jpg): joints_vis must be 16 values of 0 or 1"),
        (_mpii_entry(image="missing.jpg"), "image"),
    ],
)
def test_mpii_reader_rejects_malformed_entries_in_one_line(tmp_path, entry, expected):
    _image(tmp_path / "images" / "a.jpg")
    path = tmp_path / "valid.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        load_mpii(path, tmp_path / "images", kind="val", aspect=1.0)
    msg = str(err.value)
    assert str(path) in msg and expected in msg and "\n" not in msg


def test_mpii_reader_rejects_bad_files(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("{broken")
    with pytest.raises(ValueError, match="train.json is not valid JSON"):
        load_mpii(path, tmp_path, kind="labeled", aspect=1.0)
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match="train.json: expected a non-empty JSON list of person entries"):
        load_mpii(path, tmp_path, kind="labeled", aspect=1.0)
    with pytest.raises(ValueError, match="MPII labels have 16 joints but the shards' schema has 17"):
        load_mpii(path, tmp_path, kind="labeled", aspect=1.0, num_joints=17)


# ---------------------------------------------------------------------------------------------------------------
# AI Challenger
# ---------------------------------------------------------------------------------------------------------------


def _aic_image(image_id="img1", box=(10.0, 20.0, 50.0, 100.0), vis=None) -> dict:
    vis = vis or [1, 2, 3] + [1] * 11
    kpts = []
    for j, v in enumerate(vis):
        kpts += [15.0 + j, 30.0 + j, v]
    return {"image_id": image_id, "human_annotations": {"human1": list(box)},
            "keypoint_annotations": {"human1": kpts}}  # fmt: skip


def test_aic_reader_visibility_and_boxes(tmp_path):
    _image(tmp_path / "images" / "img1.jpg", 80, 120)
    _image(tmp_path / "images" / "img2.jpg")
    data = [_aic_image(), _aic_image("img2", box=(5.0, 5.0, 5.0, 30.0))]  # img2's box has no width: skipped
    (tmp_path / "ann.json").write_text(json.dumps(data))
    insts = load_aic(tmp_path / "ann.json", tmp_path / "images", kind="labeled", aspect=0.75)
    assert len(insts) == 1
    inst = insts[0]
    # v 1 visible -> COCO 2, 2 labelled but invisible -> 1, 3 not labelled -> 0 at (0, 0)
    assert inst.keypoints[:3].tolist() == [[15.0, 30.0, 2.0], [16.0, 31.0, 1.0], [0.0, 0.0, 0.0]]
    center, scale = box_to_center_scale((10.0, 20.0, 40.0, 80.0), 0.75)  # raw [x1, y1, x2, y2] -> x, y, w, h
    assert np.allclose(inst.center, center) and np.allclose(inst.scale, scale) and inst.bbox == (10.0, 20.0, 40.0, 80.0)
    assert (inst.image_id, inst.ann_id, inst.image_size) == (1, 0, (80, 120))
    unl = load_aic(tmp_path / "ann.json", tmp_path / "images", kind="unlabeled", aspect=0.75, num_joints=16)
    assert unl[0].keypoints.shape == (16, 3) and not unl[0].keypoints.any()  # labels dropped (MPII + AIC)


def _bad_aic(**patch) -> dict:
    img = _aic_image()
    for key, value in patch.items():
        if key == "person":
            img["keypoint_annotations"]["human1"] = value
        elif key == "box":
            img["human_annotations"]["human1"] = value
        elif key == "extra_person":
            img["keypoint_annotations"]["human2"] = value
        else:
            img[key] = value
    return img


@pytest.mark.parametrize(
    "image, expected",
    [
        ([1, 2], "images[0] is a list, expected an object"),
        ({"image_id": "img1", "human_annotations": {}}, "images[0] has no 'keypoint_annotations'"),
        (_bad_aic(image_id=7), "images[0]: image_id 7 is not a string"),
        (_bad_aic(box=[1, 2, 3]), "images[0] (img1) person 'human1': human_annotations box [1, 2, 3] is not"),
        (_bad_aic(person=[1.0] * 40), "person 'human1': keypoint_annotations must be 14 x [x, y, v] = 42 numbers"),
        (_bad_aic(person=[1.0, 1.0, 4] * 14), "person 'human1': keypoint visibility must be 1, 2 or 3, got [4.0]"),
        (_bad_aic(extra_person=[1.0, 1.0, 1] * 14), "person 'human2' has keypoints but no human_annotations box"),
        (_bad_aic(keypoint_annotations=[]), "images[0] (img1): keypoint_annotations must map person keys"),
    ],
)
def test_aic_reader_rejects_malformed_input_in_one_line(tmp_path, image, expected):
    _image(tmp_path / "images" / "img1.jpg")
    path = tmp_path / "keypoint_train_annotation.json"
    path.write_text(json.dumps([image]))
    with pytest.raises(ValueError) as err:
        load_aic(path, tmp_path / "images", kind="labeled", aspect=1.0)
    msg = str(err.value)
    assert str(path) in msg and expected in msg and "\n" not in msg


# ---------------------------------------------------------------------------------------------------------------
# Synthetic native layouts
# ---------------------------------------------------------------------------------------------------------------

_EXTRA = {
    "pelvis": [50.0, 70.0, 2],
    "thorax": [50.0, 40.0, 2],
    "upper_neck": [50.5, 33.0, 2],
    "head_top": [51.0, 20.0, 2],
}


def _coco_root(tmp_path: Path, with_extra: bool) -> Path:
    """A one-image synth-layout COCO dataset: one person, optionally with `extra_joints` and `head_box`."""
    root = tmp_path / "coco"
    kpts = np.zeros((17, 3))
    for j in range(17):
        kpts[j] = [30.0 + 2 * j, 25.0 + 4 * j, 2]
    ann = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [20.0, 10.0, 60.0, 90.0], "area": 3000.0, "iscrowd": 0,
           "keypoints": kpts.reshape(-1).tolist(), "num_keypoints": 17}  # fmt: skip
    if with_extra:
        ann |= {"extra_joints": _EXTRA, "head_box": [44.0, 18.0, 58.0, 34.0]}
    for split, iid in (("train", 1), ("val", 1_000_000_001)):
        _image(root / "images" / split / f"{iid:012d}.jpg", 120, 110)
        coco = {"images": [{"id": iid, "file_name": f"{iid:012d}.jpg", "width": 120, "height": 110}],
                "annotations": [ann | {"image_id": iid}], "categories": []}  # fmt: skip
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(coco))
    return root


def test_synthetic_mpii_and_aic_use_the_generators_extra_joints_when_present(tmp_path):
    root = _coco_root(tmp_path, with_extra=True)
    write_mpii(root, tmp_path / "mpii")
    entry = json.loads((tmp_path / "mpii" / "annot" / "valid.json").read_text())[0]
    for name, (x, y, _) in _EXTRA.items():
        assert entry["joints"][MPII16.names.index(name)] == [x + 1, y + 1]  # 1-based, verbatim
    kpts = np.array(json.loads((root / "annotations" / "person_keypoints_val.json").read_text())["annotations"][0]
                    ["keypoints"]).reshape(17, 3)  # fmt: skip
    ra = COCO17.names.index("right_ankle")
    assert entry["joints"][0] == [kpts[ra, 0] + 1, kpts[ra, 1] + 1] and entry["joints_vis"] == [1] * 16
    assert entry["center"] == [51.0, 56.0] and entry["scale"] == pytest.approx(90 / 200)  # box centre, height/200
    gt = read_pckh_gt(tmp_path / "mpii" / "annot" / "gt_valid.mat")
    assert gt["headboxes"][0].tolist() == [[45.0, 19.0], [59.0, 35.0]] and not gt["missing"].any()
    write_aic(root, tmp_path / "aic")
    img = json.loads((tmp_path / "aic" / "train" / "keypoint_train_annotation.json").read_text())[0]
    flat = np.array(img["keypoint_annotations"]["human1"]).reshape(14, 3)
    assert flat[AIC14.names.index("neck")].tolist() == [50.0, 40.0, 1]  # neck = the thorax, AIC v 1 = visible
    assert flat[AIC14.names.index("head_top")].tolist() == [51.0, 20.0, 1]
    assert img["human_annotations"]["human1"] == [20.0, 10.0, 80.0, 100.0]
    assert (tmp_path / "aic" / "train" / "images" / f"{img['image_id']}.jpg").is_file()


def test_synthetic_mpii_uses_a_real_synth_datasets_extra_joints(synth_root, tmp_path):
    """`sshpe synth` writes the joints MPII needs and the head boxes; the MPII layout carries them (1-based)."""
    summary = write_mpii(synth_root, tmp_path / "mpii")
    coco = json.loads((synth_root / "annotations" / "person_keypoints_val.json").read_text())
    entries = json.loads((tmp_path / "mpii" / "annot" / "valid.json").read_text())
    gt = read_pckh_gt(tmp_path / "mpii" / "annot" / "gt_valid.mat")
    assert summary["persons"]["valid"] == len(entries) == len(gt["pos"]) == len(coco["annotations"]) > 0
    for ann, e, box in zip(coco["annotations"], entries, gt["headboxes"]):
        j = np.array(e["joints"])
        for name in ("pelvis", "thorax", "upper_neck", "head_top"):
            x, y, v = ann["extra_joints"][name]
            assert np.allclose(j[MPII16.names.index(name)], [x + 1, y + 1] if v > 0 else [-1, -1])
        assert np.allclose(box, np.reshape(ann["head_box"], (2, 2)) + 1)
    _check_mpii_readable(tmp_path / "mpii", entries)


def test_synthetic_mpii_derives_extra_joints_when_the_dataset_lacks_them(synth_root, tmp_path):
    root = tmp_path / "bare"
    shutil.copytree(synth_root / "images", root / "images")
    (root / "annotations").mkdir()
    for f in (synth_root / "annotations").glob("*.json"):
        data = json.loads(f.read_text())
        for ann in data.get("annotations", []) if isinstance(data, dict) else []:
            ann.pop("extra_joints"), ann.pop("head_box")
        (root / "annotations" / f.name).write_text(json.dumps(data))
    summary = write_mpii(root, tmp_path / "mpii")
    coco = json.loads((root / "annotations" / "person_keypoints_val.json").read_text())
    entries = json.loads((tmp_path / "mpii" / "annot" / "valid.json").read_text())
    gt = read_pckh_gt(tmp_path / "mpii" / "annot" / "gt_valid.mat")
    assert summary["persons"]["valid"] == len(entries) == len(gt["pos"]) > 0
    by_center = {tuple(e["center"]): e for e in entries}
    checked = 0
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        e = by_center.get((x + w / 2 + 1, y + h / 2 + 1))
        if e is None:
            continue  # persons without a derivable head box are not MPII validation persons
        k = np.array(ann["keypoints"]).reshape(17, 3)
        j = np.array(e["joints"])
        hips, shoulders = k[[11, 12]], k[[5, 6]]
        if (hips[:, 2] > 0).all():
            assert np.allclose(j[MPII16.names.index("pelvis")], hips[:, :2].mean(0) + 1)  # mid-hips
        thorax = shoulders[:, :2].mean(0) + 1
        assert np.allclose(j[MPII16.names.index("thorax")], thorax)  # mid-shoulders
        neck, top = j[MPII16.names.index("upper_neck")], j[MPII16.names.index("head_top")]
        # thorax, upper neck and head top are collinear, at the documented fractions of one direction
        assert np.allclose((neck - thorax) * HEAD_TOP_AT, (top - thorax) * UPPER_NECK_AT)
        box = gt["headboxes"][entries.index(e)]
        side = np.linalg.norm(top - neck)
        assert np.allclose(box[1] - box[0], [side, side]) and np.allclose(box.mean(0), (top + neck) / 2)
        checked += 1
    assert checked == len(entries)
    _check_mpii_readable(tmp_path / "mpii", entries)


def _check_mpii_readable(root: Path, entries: list) -> None:
    src = find_sources(root)
    assert src.format == "mpii" and src.val_pckh is not None
    insts = load_mpii(src.val_ann, src.val_images, kind="val", aspect=1.0)
    assert len(insts) == len(entries) and insts[0].file_name == entries[0]["image"]
