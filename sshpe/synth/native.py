"""`sshpe synth --format mpii|aic`: the synthetic COCO-format dataset rewritten in MPII's HRNet-style layout or AI
Challenger's, so the MPII + AIC protocol (reference §1.2, §1.9) runs and is tested with no download.

MPII and AIC label joints COCO lacks (pelvis, thorax, upper neck, head top, neck) and MPII scores with head boxes.
A synthetic annotation may carry them (`extra_joints`: {name: [x, y, v]} image px, COCO v; `head_box`: [x1, y1, x2,
y2]); otherwise they are derived from the COCO joints by the rules of `derive_extra_joints` / `derive_head_box`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from sshpe.atomic import atomic_write_text
from sshpe.data.readers.mpii import write_pckh_gt
from sshpe.schema import get_schema
from sshpe.synth.figures import EXTRA_NAMES

FORMATS = ("coco", "mpii", "aic")

# Derivation rules, as fractions of d = (face centre - thorax), the face centre being the mean of the visible nose,
# eyes and ears: the upper neck (chin level) lies at thorax + 0.6 d, the head top at thorax + 1.55 d (a human's head
# top is about 0.55 d above the eyes).
UPPER_NECK_AT, HEAD_TOP_AT = 0.6, 1.55
_COCO = {n: i for i, n in enumerate(get_schema("coco17").names)}
# `dataset_joints` of MPII's gt_valid.mat (the reference looks joints up by these short names).
MPII_MAT_NAMES = ["rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelvis", "thorax", "neck", "head", "rwri", "relb",
                  "rsho", "lsho", "lelb", "lwri"]  # fmt: skip
COCO_TO_AIC_VIS = {2: 1, 1: 2, 0: 3}


def _mid(kpts: np.ndarray, a: str, b: str) -> np.ndarray:
    """Midpoint of two COCO joints with v = min of theirs, or zeros when either is unlabelled."""
    pa, pb = kpts[_COCO[a]], kpts[_COCO[b]]
    if pa[2] <= 0 or pb[2] <= 0:
        return np.zeros(3)
    return np.array([(pa[0] + pb[0]) / 2, (pa[1] + pb[1]) / 2, min(pa[2], pb[2])])


def derive_extra_joints(kpts: np.ndarray) -> dict[str, np.ndarray]:
    """MPII's extra joints from COCO-17 joints (K, 3) image px: pelvis = mid-hips, thorax = mid-shoulders, upper neck
    and head top on the line from the thorax through the face centre (`UPPER_NECK_AT`, `HEAD_TOP_AT`). A joint whose
    sources are unlabelled is [0, 0, 0]; derived joints get v = 2 (their sources are labelled)."""
    pelvis, thorax = _mid(kpts, "left_hip", "right_hip"), _mid(kpts, "left_shoulder", "right_shoulder")
    face = kpts[[_COCO[n] for n in ("nose", "left_eye", "right_eye", "left_ear", "right_ear")]]
    face = face[face[:, 2] > 0]
    neck, top = np.zeros(3), np.zeros(3)
    if thorax[2] > 0 and len(face):
        d = face[:, :2].mean(0) - thorax[:2]
        neck = np.array([*(thorax[:2] + UPPER_NECK_AT * d), 2.0])
        top = np.array([*(thorax[:2] + HEAD_TOP_AT * d), 2.0])
    return {"pelvis": pelvis, "thorax": thorax, "upper_neck": neck, "head_top": top}


def derive_head_box(extra: dict[str, np.ndarray]) -> np.ndarray | None:
    """MPII head rectangle (2, 2) corners from the upper neck and head top: an axis-aligned square centred between
    them with side = their distance; None when either is unlabelled or they coincide."""
    neck, top = extra["upper_neck"], extra["head_top"]
    if neck[2] <= 0 or top[2] <= 0:
        return None
    side = float(np.linalg.norm(top[:2] - neck[:2]))
    if side <= 0:
        return None
    c = (top[:2] + neck[:2]) / 2
    return np.array([c - side / 2, c + side / 2])


def person_joints(ann: dict) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """(COCO-17 joints (17, 3), extra joints, head box (2, 2) or None) of one synthetic annotation: the
    annotation's own `extra_joints` / `head_box` when present, else derived."""
    kpts = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
    if "extra_joints" in ann:
        extra = {n: np.asarray(ann["extra_joints"][n], dtype=np.float64) for n in EXTRA_NAMES}
    else:
        extra = derive_extra_joints(kpts)
    box = np.asarray(ann["head_box"], dtype=np.float64).reshape(2, 2) if "head_box" in ann else derive_head_box(extra)
    return kpts, extra, box


def _joints(kpts: np.ndarray, extra: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """(len(names), 3) joints in a target order from COCO names, extra-joint names and AIC's `neck` (= thorax)."""
    out = []
    for n in names:
        if n in _COCO:
            out.append(kpts[_COCO[n]])
        else:
            out.append(extra["thorax" if n == "neck" else n])
    return np.stack(out)


def _place_image(src: Path, dst: Path) -> None:
    """Hard-link (or copy) one image into the native layout."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _mpii_split(coco: dict, images_src: Path, images_dst: Path, need_head: bool) -> tuple[list[dict], list]:
    """HRNet-style entries of one COCO split, and the (joints, head box) of each for gt_valid.mat."""
    names = get_schema("mpii16").names
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    entries, gt = [], []
    for ann in coco["annotations"]:
        kpts, extra, box = person_joints(ann)
        if need_head and box is None:
            continue  # no head box, no PCKh: MPII's validation persons all have one
        joints = _joints(kpts, extra, names)
        x, y, w, h = ann["bbox"]
        vis = (joints[:, 2] > 0).astype(int)
        entries.append({
            "image": files[ann["image_id"]],
            "center": [x + w / 2 + 1, y + h / 2 + 1],  # 1-based MATLAB pixels, as MPII
            "scale": h / 200.0,  # MPII's scale: person height / 200 px
            "joints": [[float(j[0]) + 1, float(j[1]) + 1] if v else [-1.0, -1.0] for j, v in zip(joints, vis)],
            "joints_vis": vis.tolist(),
        })  # fmt: skip
        gt.append((joints, box))
        _place_image(images_src / files[ann["image_id"]], images_dst / files[ann["image_id"]])
    return entries, gt


def write_mpii(coco_root: Path, out: Path) -> dict:
    """Write `annot/{train,valid}.json`, `annot/gt_valid.mat` and `images/` from a `sshpe synth` COCO dataset.

    Train keeps every person; validation keeps the persons with a head box (PCKh needs one). Coordinates are
    1-based; missing joints are [-1, -1] with `joints_vis` 0; `center` is the box centre and `scale` its height / 200.
    """
    coco_root, out = Path(coco_root), Path(out)
    counts = {}
    for split, native in (("train", "train"), ("val", "valid")):
        coco = json.loads((coco_root / "annotations" / f"person_keypoints_{split}.json").read_text())
        entries, gt = _mpii_split(coco, coco_root / "images" / split, out / "images", need_head=split == "val")
        if split == "val":
            if not entries:
                raise ValueError(f"{coco_root}: no validation person has a head box; generate more val images")
            pos = np.stack([j[:, :2] + 1 for j, _ in gt])
            missing = np.stack([j[:, 2] <= 0 for j, _ in gt])
            write_pckh_gt(out / "annot" / "gt_valid.mat", pos, missing, np.stack([b + 1 for _, b in gt]),
                          MPII_MAT_NAMES)  # fmt: skip
        atomic_write_text(out / "annot" / f"{native}.json", json.dumps(entries))
        counts[native] = len(entries)
    return {"format": "mpii", "persons": counts, "root": str(out)}


def write_aic(coco_root: Path, out: Path) -> dict:
    """Write `train/keypoint_train_annotation.json` and `train/images/` (AI Challenger's layout as SHP reads it)
    from the train split of a `sshpe synth` COCO dataset. Visibility: COCO 2 -> 1, 1 -> 2, 0 -> 3 (not labelled,
    at [0, 0]); the neck is the thorax (the base of the neck); boxes are [x1, y1, x2, y2]."""
    coco_root, out = Path(coco_root), Path(out)
    coco = json.loads((coco_root / "annotations" / "person_keypoints_train.json").read_text())
    names = get_schema("aic14").names
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images, persons = [], 0
    for im in coco["images"]:
        stem = Path(im["file_name"]).stem
        boxes, kps = {}, {}
        for n, ann in enumerate(by_image.get(im["id"], []), start=1):
            kpts, extra, _ = person_joints(ann)
            joints = _joints(kpts, extra, names)
            x, y, w, h = ann["bbox"]
            boxes[f"human{n}"] = [x, y, x + w, y + h]
            flat = []
            for jx, jy, v in joints:
                vis = COCO_TO_AIC_VIS[int(v)]
                flat += [float(jx), float(jy), vis] if vis != 3 else [0.0, 0.0, 3]
            kps[f"human{n}"] = flat
        if not boxes:
            continue
        persons += len(boxes)
        images.append({"image_id": stem, "human_annotations": boxes, "keypoint_annotations": kps})
        _place_image(coco_root / "images" / "train" / im["file_name"], out / "train" / "images" / f"{stem}.jpg")
    atomic_write_text(out / "train" / "keypoint_train_annotation.json", json.dumps(images))
    return {"format": "aic", "images": len(images), "persons": persons, "root": str(out)}


def generate_native(out: Path, fmt: str, **synth_args) -> dict:
    """`sshpe synth` into a temporary folder beside `out`, then rewritten in `fmt` ("mpii" or "aic") into `out`.

    Args:
        synth_args: passed to `sshpe.synth.generate` (num_train, num_val, seed, workers, ...).
    """
    from sshpe.synth import generate

    writers = {"mpii": write_mpii, "aic": write_aic}
    if fmt not in writers:
        raise ValueError(f"format {fmt!r}: the native layouts are {sorted(writers)} (or coco, `sshpe synth`'s own)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.coco-", dir=out.parent))
    try:
        generate(tmp, progress=False, **synth_args)
        return writers[fmt](tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
