"""`sshpe predict` as people use it: COCO detection results with the image-info file, boxes validated per entry,
unmatched images refused, batched crops that land back in their own boxes, unique overlay names, left/right
colours, the `sshpe.load_model` API and `sshpe --version`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import smoke_recipe

import sshpe
from sshpe.export import export_model, read_metadata
from sshpe.inference.boxes import match_images, read_boxes
from sshpe.inference.overlay import SIDE_BGR, draw_person, limb_side
from sshpe.inference.pose_model import PosePredictor, resolve_device
from sshpe.models import build_model
from sshpe.runner import overlay_names, predict_images
from sshpe.schema import get_schema, joint_sides

CLI = [sys.executable, "-m", "sshpe._cli.app"]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = build_model("test_resnet", 17, head_channels=(16, 16, 16)).eval()
    out = tmp_path_factory.mktemp("model")
    return export_model(net, out / "model.safetensors", smoke_recipe(out), "student")


def _strict_json(path: Path) -> dict:
    def refuse(token: str):
        raise AssertionError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------------------------------------------------------
# COCO detection results, as `sshpe synth` writes them
# ---------------------------------------------------------------------------------------------------------------


def test_coco_detection_results_with_image_info(model, synth_root, tmp_path):
    ann = synth_root / "annotations"
    dets = json.loads((ann / "person_detections_val.json").read_text())
    res = subprocess.run(
        [*CLI, "predict", str(model), str(synth_root / "images" / "val"), "--out", str(tmp_path / "p"),
         "--boxes", str(ann / "person_detections_val.json"), "--image-info", str(ann / "person_keypoints_val.json"),
         "--device", "cpu", "--batch-size", "3"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    pred = _strict_json(tmp_path / "p" / "keypoints.json")
    per_image = Counter(d["image_id"] for d in dets if d["category_id"] == 1)
    assert {r["image_id"]: len(r["people"]) for r in pred["images"]} == {
        i: per_image.get(i, 0) for i in (r["image_id"] for r in pred["images"])
    }
    assert sum(len(r["people"]) for r in pred["images"]) == sum(per_image.values()) > 0
    first = pred["images"][0]
    by_id = [d for d in dets if d["image_id"] == first["image_id"]]
    assert [p["bbox"] for p in first["people"]] == [[round(v, 2) for v in d["bbox"]] for d in by_id]
    assert [p["box_score"] for p in first["people"]] == [d["score"] for d in by_id]
    for r in pred["images"]:
        assert (tmp_path / "p" / r["overlay"]).is_file()
        for p in r["people"]:
            assert np.array(p["keypoints"]).shape == (17, 3) and 0 <= p["score"] <= p["box_score"]
    assert f"{sum(per_image.values())} people in {len(pred['images'])} images" in res.stdout


def test_score_threshold_leaves_out_low_boxes(model, synth_root, tmp_path):
    ann = synth_root / "annotations"
    dets = json.loads((ann / "person_detections_val.json").read_text())
    thr = float(np.median([d["score"] for d in dets]))
    out = predict_images(
        model, [synth_root / "images" / "val"], tmp_path, ann / "person_detections_val.json", overlay=False,
        image_info=ann / "person_keypoints_val.json", score_thr=thr, device="cpu",
    )  # fmt: skip
    kept = [p["box_score"] for r in _strict_json(out.path)["images"] for p in r["people"]]
    assert sorted(kept) == sorted(d["score"] for d in dets if d["score"] >= thr)
    assert out.people == len(kept) < len(dets)
    assert any(f"scored below --score-thr {thr}" in n for n in out.notes)


# ---------------------------------------------------------------------------------------------------------------
# Box files: one-line errors naming the file and the entry
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"file_name": "a.jpg", "bbox": [0, 0, 5, 5]}, {"bbox": [0, 0, 5, 5]}], r"entry \[1\] has neither"),
        ([{"file_name": "a.jpg"}], r"entry \[0\] has no 'bbox'"),
        ([{"file_name": "a.jpg", "bbox": [0, 0, 5]}], r"entry \[0\] has bbox \[0, 0, 5\]"),
        ([{"file_name": "a.jpg", "bbox": [0, 0, "5", 5]}], r"entry \[0\] has bbox"),
        ([{"file_name": "a.jpg", "bbox": [0, 0, 5, 5], "score": "high"}], r"entry \[0\] has score"),
        ([7], r"entry \[0\] is a int"),
        ([{"file_name": 5, "bbox": [0, 0, 5, 5]}], r"entry \[0\] has file_name '5'"),
        ({"file_name": "a.jpg"}, "expected a JSON list"),
        ([{"image_id": 3, "bbox": [0, 0, 5, 5]}], r"entry \[0\] names its image by image_id only; pass --image-info"),
    ],
)
def test_malformed_box_entries_are_named(tmp_path, entries, message):
    path = _write_json(tmp_path / "boxes.json", entries)
    with pytest.raises(ValueError, match=message) as err:
        read_boxes(path)
    assert str(path) in str(err.value)


def test_nan_bbox_and_unknown_image_id_are_named(tmp_path):
    (tmp_path / "nan.json").write_text('[{"file_name": "a.jpg", "bbox": [0, 0, NaN, 5]}]')
    with pytest.raises(ValueError, match=r"nan.json: entry \[0\] has bbox \[0, 0, nan, 5\]"):
        read_boxes(tmp_path / "nan.json")
    info = _write_json(tmp_path / "info.json", {"images": [{"id": 1, "file_name": "a.jpg"}]})
    dets = _write_json(
        tmp_path / "dets.json", [{"image_id": 1, "bbox": [0, 0, 5, 5]}, {"image_id": 2, "bbox": [1, 1, 5, 5]}]
    )
    with pytest.raises(ValueError, match=r"dets.json: entry \[1\] has image_id 2, which .*info.json does not list"):
        read_boxes(dets, info)
    with pytest.raises(ValueError, match="no 'images' array"):
        read_boxes(dets, _write_json(tmp_path / "bad_info.json", {"annotations": []}))


def test_cli_box_errors_have_no_traceback(model, tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((20, 20, 3), np.uint8))
    boxes = _write_json(tmp_path / "boxes.json", [{"file_name": "a.jpg", "bbox": [0, 0, 5, 5]}, {"score": 1}])
    res = subprocess.run([*CLI, "predict", str(model), str(tmp_path / "a.jpg"), "--boxes", str(boxes)],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "boxes.json: entry [1] has no 'bbox'" in " ".join(res.stderr.split())


def test_other_categories_are_left_out(tmp_path):
    boxes = read_boxes(_write_json(tmp_path / "b.json", [
        {"file_name": "a.jpg", "bbox": [0, 0, 5, 5], "category_id": 1},
        {"file_name": "a.jpg", "bbox": [0, 0, 5, 5], "category_id": 3},
    ]))  # fmt: skip
    assert [b.entry for b in boxes.by_name["a.jpg"]] == [0]
    assert boxes.notes == [f"{tmp_path / 'b.json'}: skipped 1 box(es) whose category_id is not person (1)"]


# ---------------------------------------------------------------------------------------------------------------
# Images the boxes do not name; degenerate boxes
# ---------------------------------------------------------------------------------------------------------------


def test_unmatched_image_is_an_error_unless_whole_image(model, tmp_path):
    for name in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(tmp_path / name), np.full((30, 40, 3), 100, np.uint8))
    boxes = _write_json(tmp_path / "boxes.json", [{"file_name": "a.jpg", "bbox": [2, 3, 10, 20], "score": 0.5}])
    files = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    with pytest.raises(ValueError, match=r"1 input image\(s\) have no entry in .*boxes.json: .*b.jpg; .*--whole-image"):
        predict_images(model, files, tmp_path / "p", boxes, overlay=False, device="cpu")
    assert not (tmp_path / "p").exists()  # refused before any output
    out = predict_images(model, files, tmp_path / "p", boxes, overlay=False, whole_image=True, device="cpu")
    a, b = _strict_json(out.path)["images"]
    assert [(p["bbox"], p["box_score"]) for p in a["people"]] == [([2, 3, 10, 20], 0.5)]
    assert [(p["bbox"], p["box_score"]) for p in b["people"]] == [([0, 0, 40, 30], 1.0)]


def test_degenerate_boxes_are_skipped_and_never_nan(model, tmp_path):
    cv2.imwrite(str(tmp_path / "a.jpg"), np.full((30, 40, 3), 100, np.uint8))
    boxes = _write_json(tmp_path / "boxes.json", [
        {"file_name": "a.jpg", "bbox": [5, 5, 0, 0]},
        {"file_name": "a.jpg", "bbox": [5, 5, 10, 12]},
        {"file_name": "a.jpg", "bbox": [5, 5, -3, 12]},
    ])  # fmt: skip
    out = predict_images(model, [tmp_path / "a.jpg"], tmp_path / "p", boxes, device="cpu")
    (rec,) = _strict_json(out.path)["images"]
    assert [p["bbox"] for p in rec["people"]] == [[5, 5, 10, 12]]
    assert np.isfinite(np.array(rec["people"][0]["keypoints"])).all()
    assert out.notes == [f"{boxes}: skipped 2 degenerate box(es) (width or height <= 0), entries [0, 2]"]
    pose = sshpe.load_model(model, device="cpu")
    with pytest.raises(ValueError, match=r"image 0: box 1 \[5.0, 5.0, 0.0, 0.0\] is degenerate"):
        pose([np.zeros((30, 40, 3), np.uint8)], [[[1, 1, 5, 5], [5, 5, 0, 0]]])


# ---------------------------------------------------------------------------------------------------------------
# Output names
# ---------------------------------------------------------------------------------------------------------------


def test_same_name_in_two_folders_gives_two_overlays(model, tmp_path):
    rng = np.random.default_rng(0)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        cv2.imwrite(str(tmp_path / d / "same.jpg"), rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    files = [tmp_path / "a" / "same.jpg", tmp_path / "b" / "same.jpg"]
    out = predict_images(model, files, tmp_path / "p", device="cpu")
    recs = _strict_json(out.path)["images"]
    assert [r["overlay"] for r in recs] == ["a/same_pose.jpg", "b/same_pose.jpg"]
    a, b = (cv2.imread(str(tmp_path / "p" / r["overlay"])) for r in recs)
    assert a.shape == b.shape == (40, 30, 3) and not np.array_equal(a, b)
    ambiguous = _write_json(tmp_path / "boxes.json", [{"file_name": "same.jpg", "bbox": [1, 1, 9, 9]}])
    with pytest.raises(ValueError, match=r"file name 'same.jpg' matches two inputs, .*a/same.jpg and .*b/same.jpg"):
        predict_images(model, files, tmp_path / "q", ambiguous, device="cpu")
    named = _write_json(tmp_path / "boxes2.json", [
        {"file_name": "a/same.jpg", "bbox": [1, 1, 9, 9]},
        {"file_name": "./b/same.jpg", "bbox": [1, 1, 9, 9]}, {"file_name": "b/same.jpg", "bbox": [2, 2, 9, 9]},
    ])  # fmt: skip
    out = predict_images(model, files, tmp_path / "q", named, overlay=False, device="cpu")
    assert [len(r["people"]) for r in _strict_json(out.path)["images"]] == [1, 2]


def test_overlay_names_are_unique():
    files = [Path("/x/a.jpg"), Path("/x/a.png"), Path("/x/sub/a.jpg"), Path("/x/b.jpg")]
    assert overlay_names(files) == ["a_pose.jpg", "a_pose-2.jpg", "sub/a_pose.jpg", "b_pose.jpg"]
    assert overlay_names([Path("/data/one/x.jpg")]) == ["x_pose.jpg"]


def test_boxes_match_the_end_of_the_input_path(tmp_path):
    files = [tmp_path / "val" / "1.jpg", tmp_path / "train" / "1.jpg", tmp_path / "2.jpg"]
    got = match_images(files, ["val/1.jpg", "train/1.jpg", "1.jpg"], tmp_path / "b.json")
    assert got == {files[0]: "val/1.jpg", files[1]: "train/1.jpg", files[2]: None}


# ---------------------------------------------------------------------------------------------------------------
# Batched inference
# ---------------------------------------------------------------------------------------------------------------


class _BrightSpot(torch.nn.Module):
    """Stand-in pose net: every joint's heatmap is the crop's brightness pooled to the heatmap grid (stride 4)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x[:, :1], 4).expand(-1, 17, -1, -1).contiguous()


def test_batched_crops_land_in_their_own_boxes(model):
    """Seven boxes over three images (one without boxes), each holding one bright dot: every joint comes back on
    its own box's dot, in order, whatever the batch size."""
    rng = np.random.default_rng(1)
    images, boxes, dots = [], [], []
    for n in (2, 0, 5):
        img = np.zeros((240, 240, 3), np.uint8)
        cells = rng.permutation(9)[:n]
        bx, ds = [], []
        for c in cells:
            x0, y0 = 80 * (c % 3) + 20, 80 * (c // 3) + 20
            dot = (x0 + int(rng.integers(8, 32)), y0 + int(rng.integers(8, 32)))
            cv2.circle(img, dot, 2, (255, 255, 255), -1)
            bx.append([x0, y0, 40, 40])
            ds.append(dot)
        images.append(img)
        boxes.append(bx)
        dots.append(np.array(ds, dtype=np.float64).reshape(-1, 2))
    meta = read_metadata(model)
    cell = 4 * 1.25 * 40 / 64  # one heatmap px in image px: stride x padded box / input width
    results = {}
    for bs in (1, 3, 64):
        out = PosePredictor(_BrightSpot(), meta, torch.device("cpu"), batch_size=bs)(images, boxes)
        assert [k.shape for k in out] == [(2, 17, 3), (0, 17, 3), (5, 17, 3)]
        for k, d in zip(out, dots):
            assert np.abs(k[..., :2] - d[:, None]).max(initial=0.0) < cell
        results[bs] = out
    assert all(np.allclose(a, b, atol=1e-9) for a, b in zip(results[1], results[64]))
    assert all(np.allclose(a, b, atol=1e-9) for a, b in zip(results[3], results[64]))


def test_load_model_api(model, tmp_path):
    pose = sshpe.load_model(model, device="cpu", batch_size=4)
    img = np.random.default_rng(0).integers(0, 255, (50, 40, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "x.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    one = pose(img, [[2, 2, 20, 30], [10, 5, 25, 40]])
    assert one.shape == (2, 17, 3) and pose.names[0] == "nose"
    from_file = pose(tmp_path / "x.png", [[2, 2, 20, 30], [10, 5, 25, 40]])
    assert np.allclose(one, from_file)  # RGB arrays and files give the same pixels to the net
    both = pose([img, img], None)  # whole images
    assert [b.shape for b in both] == [(1, 17, 3), (1, 17, 3)] and np.allclose(both[0], both[1])
    with pytest.raises(ValueError, match="2 images but 1 box lists"):
        pose([img, img], [[[1, 1, 5, 5]]])
    assert "load_model" in sshpe.__all__


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="choose one of"):
        resolve_device("tpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(ValueError, match="no CUDA device is visible"):
            resolve_device("cuda")


# ---------------------------------------------------------------------------------------------------------------
# Overlays and version
# ---------------------------------------------------------------------------------------------------------------


def test_joint_sides_follow_names_then_flip_pairs():
    coco = joint_sides(get_schema("coco17").names, get_schema("coco17").flip_pairs)
    assert coco[:3] == ["centre", "left", "right"] and coco[15:] == ["left", "right"]
    mpii = get_schema("mpii16")
    sides = joint_sides(mpii.names, mpii.flip_pairs)
    assert sides[0] == "right" and sides[5] == "left" and sides[6] == "centre"  # pair (0, 5) is (right, left)
    assert joint_sides(["a", "b", "c"], [(0, 1)]) == ["left", "right", "centre"]
    assert [limb_side(*p) for p in [("left", "centre"), ("left", "right"), ("right", "right")]] == [
        "left", "centre", "right",
    ]  # fmt: skip


def test_overlay_draws_sides_in_their_colours():
    names = get_schema("coco17").names
    sides = joint_sides(names, get_schema("coco17").flip_pairs)
    kpts = np.zeros((17, 3))
    kpts[:, 2] = 0.9
    kpts[:, :2] = [30, 30]
    kpts[0, :2], kpts[9, :2], kpts[10, :2] = (60, 20), (20, 100), (100, 100)  # nose, left wrist, right wrist
    kpts[13, 2] = 0.1  # a left knee below the threshold is not drawn
    kpts[13, :2] = (60, 140)
    img = np.zeros((160, 120, 3), np.uint8)
    draw_person(img, kpts, [5, 5, 110, 150], 0.93, 0.71, [[7, 9]], sides)
    assert tuple(img[20, 60]) == SIDE_BGR["centre"]
    assert tuple(img[100, 20]) == SIDE_BGR["left"]
    assert tuple(img[100, 100]) == SIDE_BGR["right"]
    assert tuple(img[140, 60]) == (0, 0, 0)
    assert SIDE_BGR["left"] in {tuple(p) for p in img[65, 20:30]}  # the left forearm (30, 30) -> (20, 100) at x=25
    assert tuple(img[80, 5]) == (255, 255, 255)  # the box
    assert img[:16, 5:60].any()  # the score label above the box


def test_version():
    res = subprocess.run([*CLI, "--version"], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout.strip() == f"sshpe {sshpe.__version__}"
    assert version("sshpe") == sshpe.__version__  # the installed distribution (pyproject.toml) agrees
