"""COCO instance loading, shard writing and the manifest, on a tiny COCO-format dataset in tmp_path."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _fixtures_coco import INPUT_HW, CocoFixture, K, make_coco, shard_fixture

from sshpe import geometry
from sshpe.data.prepare import find_sources, shard_dataset
from sshpe.data.readers.coco import load_instances
from sshpe.data.shard_access import index_shard, read_sample
from sshpe.data.shard_folder import write_shard_folder
from sshpe.data.shard_writer import InvalidImage, manifest_dict, read_manifest, write_split
from sshpe.data.streams import ValDataset
from sshpe.schema import COCO17

ASPECT = INPUT_HW[1] / INPUT_HW[0]


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> CocoFixture:
    return make_coco(tmp_path_factory.mktemp("coco"))


def _load(fx: CocoFixture, **kw):
    kw.setdefault("kind", "labeled")
    return load_instances(fx.ann_file, fx.images_dir, aspect=ASPECT, num_joints=K, **kw)


def _raw_anns(fx: CocoFixture) -> dict[int, dict]:
    return {a["id"]: a for a in json.loads(fx.ann_file.read_text())["annotations"]}


def _snapshot(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


# ---------------------------------------------------------------------------------------------------------------
# load_instances
# ---------------------------------------------------------------------------------------------------------------


def test_load_instances_picks_valid_in_image_order(fx):
    inst = _load(fx)
    assert [i.ann_id for i in inst] == fx.valid_ann_ids
    raw = _raw_anns(fx)
    for i in inst:
        a = raw[i.ann_id]
        w, h = i.image_size
        assert i.bbox == geometry.clean_box(tuple(a["bbox"]), w, h)
        center, scale = geometry.box_to_center_scale(i.bbox, ASPECT)
        np.testing.assert_allclose(i.center, center)
        np.testing.assert_allclose(i.scale, scale)
        np.testing.assert_array_equal(i.keypoints, np.asarray(a["keypoints"], dtype=float).reshape(K, 3))
        assert i.num_keypoints == a["num_keypoints"] and i.score == 1.0 and i.area == a["area"]
        assert i.image_path == fx.images_dir / i.file_name
    cleaned = next(i for i in inst if i.ann_id == 201)  # box started at x = -10
    assert cleaned.bbox == (0.0, 30.0, 59.0, 99.0)


def test_limit_takes_first_n_and_unlabeled_drops_keypoints(fx):
    full = _load(fx)
    assert [i.ann_id for i in _load(fx, limit=3)] == [i.ann_id for i in full[:3]]
    unl = _load(fx, kind="unlabeled")
    assert [i.ann_id for i in unl] == [i.ann_id for i in full]
    assert all(not i.keypoints.any() and i.num_keypoints == 0 for i in unl)
    assert [i.bbox for i in unl] == [i.bbox for i in full]


@pytest.mark.parametrize("ann_file_attr", ["ann_file", "info_file"])
def test_detections_are_raw_person_boxes_in_image_order(fx, ann_file_attr):
    inst = load_instances(getattr(fx, ann_file_attr), fx.images_dir, kind="unlabeled", aspect=ASPECT,
                          num_joints=K, det_file=fx.det_file)  # fmt: skip
    assert [(i.image_id, i.bbox, i.score) for i in inst] == fx.det_boxes
    assert all(i.ann_id == -1 and not i.keypoints.any() for i in inst)
    center, scale = geometry.box_to_center_scale(fx.det_boxes[0][1], ASPECT)  # raw box, not cleaned
    np.testing.assert_allclose(inst[0].center, center)
    np.testing.assert_allclose(inst[0].scale, scale)


def _edit_ann(fx: CocoFixture, tmp_path: Path, edit) -> Path:
    data = json.loads(fx.ann_file.read_text())
    edit(data)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def _drop_bbox(d: dict) -> None:
    del d["annotations"][2]["bbox"]


def _short_keypoints(d: dict) -> None:
    next(a for a in d["annotations"] if a["id"] == 101)["keypoints"].pop()


def _all_crowd(d: dict) -> None:
    for a in d["annotations"]:
        a["iscrowd"] = 1


@pytest.mark.parametrize(
    "edit, error, words",
    [
        (_drop_bbox, ValueError, ["annotations[2]", "'bbox'"]),
        (_short_keypoints, ValueError, ["50 keypoint values", "51"]),
        (_all_crowd, ValueError, ["no valid person instances", "kind=labeled"]),
    ],
)
def test_bad_annotations_raise_clear_errors(fx, tmp_path, edit, error, words):
    path = _edit_ann(fx, tmp_path, edit)
    with pytest.raises(error) as info:
        load_instances(path, fx.images_dir, kind="labeled", aspect=ASPECT, num_joints=K)
    assert str(path) in str(info.value) and all(w in str(info.value) for w in words)


def test_missing_and_invalid_files_raise(fx, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_instances(tmp_path / "nope.json", fx.images_dir, kind="val", aspect=ASPECT, num_joints=K)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        load_instances(bad, fx.images_dir, kind="val", aspect=ASPECT, num_joints=K)
    with pytest.raises(ValueError, match="no 'annotations' key"):
        load_instances(fx.info_file, fx.images_dir, kind="val", aspect=ASPECT, num_joints=K)


# ---------------------------------------------------------------------------------------------------------------
# write_shards / manifest
# ---------------------------------------------------------------------------------------------------------------


def test_write_read_round_trip_preserves_records(fx, tmp_path):
    out = tmp_path / "shards"
    entry = shard_fixture(fx, out, shard_size=5, split="val")
    manifest = read_manifest(out)
    side = geometry.canvas_side(INPUT_HW)
    assert manifest["canvas_side"] == side and manifest["input_size"] == list(INPUT_HW)
    assert manifest["splits"]["val"] == entry and [s["count"] for s in entry["shards"]] == [5, 5, 2]
    assert manifest["sources"]["val_annotations"]["path"] == str(fx.ann_file.resolve())
    assert manifest["schema"] == COCO17.as_metadata()
    for s in entry["shards"]:
        assert hashlib.sha256((out / s["name"]).read_bytes()).hexdigest() == s["sha256"]
        assert len(index_shard(out / s["name"])) == s["count"]

    inst = _load(fx)
    ds = ValDataset(out, "val")
    assert len(ds) == manifest["splits"]["val"]["count"] == len(inst)
    exact = sum(geometry.canvas_frame(i.center, i.scale, i.image_size, side).exact for i in inst)
    assert 0 < exact < len(inst)  # the fixture has persons of both kinds at this input size
    for i, sample in zip(inst, (ds[j] for j in range(len(ds)))):
        rec = sample["record"]
        frame = geometry.canvas_frame(i.center, i.scale, i.image_size, side)
        c2i = frame.canvas_to_image
        assert rec["key"] == f"toy_{i.image_id:012d}_{i.ann_id:012d}"
        assert (rec["dataset"], rec["split"], rec["image_id"], rec["ann_id"]) == ("toy", "val", i.image_id, i.ann_id)
        assert rec["file_name"] == i.file_name and rec["image_size"] == list(i.image_size)
        assert rec["bbox"] == list(i.bbox) and rec["score"] == i.score and rec["area"] == i.area
        assert rec["center"] == list(i.center) and rec["scale"] == list(i.scale)
        assert rec["canvas_to_image"] == c2i.tolist() and rec["num_keypoints"] == i.num_keypoints
        kpts_canvas = np.asarray(rec["keypoints"])
        vis = i.keypoints[:, 2] > 0
        np.testing.assert_array_equal(kpts_canvas[:, 2], i.keypoints[:, 2])
        back = kpts_canvas[vis, :2] @ c2i[:, :2].T + c2i[:, 2]  # canvas -> image recovers the labels
        np.testing.assert_allclose(back, i.keypoints[vis, :2], atol=1e-9)
        assert not kpts_canvas[~vis].any()
        assert sample["canvas"].shape == (*frame.hw, 3) and sample["canvas"].dtype == np.uint8
    pixels = [ds[j]["canvas"].shape[0] * ds[j]["canvas"].shape[1] for j in range(len(ds))]
    assert entry["canvas_pixels"] == {"total": sum(pixels), "mean": np.mean(pixels), "median": np.median(pixels),
                                      "max": max(pixels), "exact_crops": exact}  # fmt: skip


def test_writes_are_reproducible_with_and_without_workers(fx, tmp_path):
    inst = _load(fx, kind="unlabeled")
    kw = dict(dataset="toy", schema=COCO17, input_hw=INPUT_HW, sources={}, shard_size=4, progress=False)
    a = write_shard_folder(tmp_path / "a", {"unlabeled": (inst, {})}, **kw)
    b = write_shard_folder(tmp_path / "b", {"unlabeled": (inst, {})}, workers=2, **kw)
    again = write_shard_folder(tmp_path / "a", {"unlabeled": (inst, {})}, **kw)
    assert a.splits == b.splits == again.splits and len(a.splits["unlabeled"]["shards"]) == 3
    assert _snapshot(tmp_path / "a") == _snapshot(tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no staging folder left behind


def test_detection_keys_use_a_running_index_per_image(fx, tmp_path):
    inst = load_instances(fx.info_file, fx.images_dir, kind="unlabeled", aspect=ASPECT, num_joints=K,
                          det_file=fx.det_file)  # fmt: skip
    entry = write_split(inst, tmp_path, dataset="toy", split="wild", canvas=geometry.canvas_side(INPUT_HW),
                        progress=False)  # fmt: skip
    locs = index_shard(tmp_path / entry["shards"][0]["name"])
    assert [loc.key for loc in locs] == ["toy_000000000003_000000000000", "toy_000000000001_000000000000",
                                         "toy_000000000001_000000000001"]  # fmt: skip
    rec = read_sample(tmp_path / entry["shards"][0]["name"], locs[2])["record"]
    assert rec["ann_id"] == -1 and rec["score"] == 0.3 and rec["bbox"] == [60.0, 20.0, 30.0, 60.0]


def _break_last_image(fx: CocoFixture, inst, how: str, tmp_path: Path):
    """Copy the instances with the last one pointing at a missing or corrupt image."""
    from dataclasses import replace

    bad = tmp_path / "bad.jpg"
    if how == "corrupt":
        bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return inst[:-1] + [replace(inst[-1], image_path=bad)], bad


@pytest.mark.parametrize("how, workers", [("missing", 0), ("corrupt", 2)])
def test_failed_write_leaves_directory_untouched(fx, tmp_path, how, workers):
    out = tmp_path / "shards"
    shard_fixture(fx, out, shard_size=3)
    before = _snapshot(out)
    inst, bad = _break_last_image(fx, _load(fx), how, tmp_path)
    with pytest.raises(InvalidImage) as info:
        write_shard_folder(out, {"train": (inst, {})}, dataset="toy", schema=COCO17, input_hw=INPUT_HW, sources={},
                           shard_size=3, workers=workers, progress=False)  # fmt: skip
    assert str(bad) in str(info.value) and f"annotation id {inst[-1].ann_id}" in str(info.value)
    assert "--skip-invalid" in str(info.value)
    assert _snapshot(out) == before  # old tars and manifest unchanged
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["shards", bad.name] if how == "corrupt" else
                                                                 ["shards"])  # no staging folder left  # fmt: skip


def test_manifest_merges_splits_and_guards_mismatches(fx, tmp_path):
    shard_fixture(fx, tmp_path, shard_size=6, split="train")
    shard_fixture(fx, tmp_path, shard_size=4, split="val")
    manifest = read_manifest(tmp_path)
    assert sorted(manifest["splits"]) == ["train", "val"]
    assert sorted(manifest["sources"]) == ["train_annotations", "val_annotations"]
    with pytest.raises(ValueError, match="input_size"):
        write_shard_folder(tmp_path, {"x": (_load(fx), {})}, dataset="toy", schema=COCO17, input_hw=(96, 64),
                           sources={}, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="val_annotations"):
        manifest_dict(dataset="toy", schema=COCO17, input_hw=INPUT_HW, canvas=64, sources={},
                      splits={"val": manifest["splits"]["val"]})  # fmt: skip
    with pytest.raises(FileNotFoundError, match="run `sshpe shard` first"):
        read_manifest(tmp_path / "other")


# ---------------------------------------------------------------------------------------------------------------
# Canvas correctness (DESIGN decision 1): augmenting from the canvas equals augmenting from the image
# ---------------------------------------------------------------------------------------------------------------


def _chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].double()


@pytest.mark.parametrize("input_hw", [(64, 48), (256, 192)])
def test_crops_from_canvas_equal_crops_from_image(fx, tmp_path, input_hw):
    """At 64x48 most of the fixture's sources are finer than the densest view needs (their canvases are
    downsampled); at 256x192 all are coarser, so every canvas is an exact crop and its views equal the image's."""
    inst = load_instances(fx.ann_file, fx.images_dir, kind="labeled", aspect=input_hw[1] / input_hw[0], num_joints=K)
    entry = write_shard_folder(tmp_path, {"train": (inst, {})}, dataset="toy", schema=COCO17, input_hw=input_hw,
                               sources={}, progress=False).splits["train"]  # fmt: skip
    n_exact = entry["canvas_pixels"]["exact_crops"]
    assert n_exact == len(inst) if input_hw == (256, 192) else n_exact < len(inst) // 2
    ds = ValDataset(tmp_path, "train")
    side, (h_in, w_in) = geometry.canvas_side(input_hw), input_hw
    for j in range(len(ds)):
        sample = ds[j]
        rec = sample["record"]
        exact = rec["canvas_to_image"][0][:2] == [1.0, 0.0] and rec["canvas_to_image"][1][:2] == [0.0, 1.0]
        img = cv2.cvtColor(cv2.imread(str(fx.images_dir / rec["file_name"])), cv2.COLOR_BGR2RGB)
        c2i = torch.tensor([rec["canvas_to_image"]], dtype=torch.float64)
        h, w = sample["canvas"].shape[:2]
        assert h * w <= img.shape[0] * img.shape[1] and max(h, w) <= side + 2  # never larger than its source
        # The canvas without JPEG, to separate interpolation error from compression error.
        exact_canvas = cv2.warpAffine(img, cv2.invertAffineTransform(c2i[0].numpy()), (w, h), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_CONSTANT, borderValue=0)  # fmt: skip
        if exact:  # the image's own pixels: an integer translation
            x0, y0 = int(rec["canvas_to_image"][0][2]), int(rec["canvas_to_image"][1][2])
            assert rec["canvas_to_image"] == [[1.0, 0.0, x0], [0.0, 1.0, y0]]
            np.testing.assert_array_equal(exact_canvas, img[y0 : y0 + h, x0 : x0 + w])
        assert np.abs(exact_canvas.astype(float) - sample["canvas"]).mean() < 2.5  # JPEG q95 and RGB order
        center, kpts_img = torch.tensor([rec["center"]], dtype=torch.float64), inst[j].keypoints
        kpts_canvas = torch.tensor([rec["keypoints"]], dtype=torch.float64)[..., :2]
        for f in (0.75, 1.0, 1.25):
            for r in (-60.0, -20.0, 45.0, 60.0):
                scale_x = torch.tensor([rec["scale"][0] * f], dtype=torch.float64)
                img_to_crop = geometry.crop_matrix(center, scale_x, torch.tensor([r], dtype=torch.float64),
                                                   (w_in, h_in))  # fmt: skip
                canvas_to_crop = geometry.compose(img_to_crop, c2i)
                ref = geometry.warp_images(_chw(img), img_to_crop, input_hw)
                from_exact = geometry.warp_images(_chw(exact_canvas), canvas_to_crop, input_hw)
                if exact:
                    torch.testing.assert_close(from_exact, ref, atol=1e-9, rtol=0)  # the same pixels, the same view
                else:
                    assert (from_exact - ref).abs().mean() < 3.0
                assert (geometry.warp_images(_chw(sample["canvas"]), canvas_to_crop, input_hw) - ref).abs().mean() < 5
                # Every pixel of the view that the image covers, the canvas covers (the reachable region, cut to
                # the image); a resampled canvas's one-pixel margin may reach past the image (black there).
                cover_img = geometry.warp_images(torch.ones(1, 1, *img.shape[:2], dtype=torch.float64), img_to_crop,
                                                 input_hw)  # fmt: skip
                cover_canvas = geometry.warp_images(torch.ones(1, 1, h, w, dtype=torch.float64), canvas_to_crop,
                                                    input_hw)  # fmt: skip
                if exact:
                    torch.testing.assert_close(cover_canvas, cover_img, atol=1e-9, rtol=0)
                else:
                    assert (cover_img - cover_canvas).max() < 0.5
                vis = kpts_img[:, 2] > 0
                via_img = geometry.apply_affine(img_to_crop, torch.from_numpy(kpts_img[None, :, :2]))
                via_canvas = geometry.apply_affine(canvas_to_crop, kpts_canvas)
                torch.testing.assert_close(via_canvas[:, vis], via_img[:, vis], atol=1e-9, rtol=0)


def test_shard_refuses_an_input_size_no_recipe_accepts(synth_root, tmp_path):
    out = tmp_path / "O"
    with pytest.raises(ValueError, match=r"--input-size 100x75: .* multiples of 32 .*; no recipe could train"):
        shard_dataset(find_sources(synth_root), out, dataset="synth", input_hw=(100, 75), progress=False)
    assert not out.exists()


def test_manifests_of_older_writers_still_read(fx, tmp_path):
    """Writers before variable canvases stored no canvas_pixels (every canvas was a canvas_side square); their
    manifests validate and their samples read and batch as before."""
    shard_fixture(fx, tmp_path, shard_size=5)
    path = tmp_path / "manifest.json"
    raw = json.loads(path.read_text())
    for entry in raw["splits"].values():
        del entry["canvas_pixels"]
    path.write_text(json.dumps(raw))
    assert read_manifest(tmp_path)["splits"]["train"]["canvas_pixels"] is None
    ds = ValDataset(tmp_path, "train")
    assert len(ds) == 12 and ds[3]["canvas"].ndim == 3
