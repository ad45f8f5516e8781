"""AI Challenger keypoints (reference §1.9): `keypoint_{split}_annotation.json` -> `Instance`s.

The file is a list of images, each with `image_id` (the image is `<images>/<image_id>.jpg`), `human_annotations`
{person key: [x1, y1, x2, y2]} and `keypoint_annotations` {person key: 14 x [x, y, v]}, v = 1 visible, 2 labelled but
invisible, 3 not labelled. Every malformed input is rejected with one line naming the file, the image and the field.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sshpe.data.readers.coco import Instance, InstanceKind, image_size, read_json_list
from sshpe.geometry import box_to_center_scale

NUM_JOINTS = 14
# AIC visibility -> COCO visibility: 1 visible -> 2, 2 labelled but invisible -> 1, 3 not labelled -> 0.
AIC_TO_COCO_VIS = {1: 2.0, 2: 1.0, 3: 0.0}


def _image_entry(entry: object, i: int, path: Path) -> tuple[str, dict, dict]:
    where = f"{path}: images[{i}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is a {type(entry).__name__}, expected an object with image_id and annotations")
    for key in ("image_id", "human_annotations", "keypoint_annotations"):
        if key not in entry:
            raise ValueError(f"{where} has no {key!r}; AIC images need image_id, human_ and keypoint_annotations")
    image_id, boxes, kpts = entry["image_id"], entry["human_annotations"], entry["keypoint_annotations"]
    if not isinstance(image_id, str) or not image_id:
        raise ValueError(f"{where}: image_id {image_id!r} is not a string (the image file is <image_id>.jpg)")
    for key, value in (("human_annotations", boxes), ("keypoint_annotations", kpts)):
        if not isinstance(value, dict):
            raise ValueError(f"{where} ({image_id}): {key} must map person keys to lists")
    return image_id, boxes, kpts


def _person(box: object, kpts: object, where: str) -> tuple[tuple[float, float, float, float], np.ndarray]:
    """Validate one person -> ((x, y, w, h) box, (14, 3) keypoints with COCO visibility)."""
    try:
        b = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError):
        b = np.zeros(0)
    if b.shape != (4,) or not np.isfinite(b).all():
        raise ValueError(f"{where}: human_annotations box {box!r} is not [x1, y1, x2, y2]")
    try:
        k = np.asarray(kpts, dtype=np.float64)
    except (TypeError, ValueError):
        k = np.zeros(0)
    if k.shape != (3 * NUM_JOINTS,) or not np.isfinite(k).all():
        raise ValueError(f"{where}: keypoint_annotations must be {NUM_JOINTS} x [x, y, v] = {3 * NUM_JOINTS} numbers")
    k = k.reshape(NUM_JOINTS, 3)
    if not np.isin(k[:, 2], list(AIC_TO_COCO_VIS)).all():
        raise ValueError(f"{where}: keypoint visibility must be 1, 2 or 3, got {sorted(set(k[:, 2].tolist()))}")
    vis = np.vectorize(AIC_TO_COCO_VIS.get)(k[:, 2].astype(int))
    out = np.zeros((NUM_JOINTS, 3))
    out[:, :2] = np.where(vis[:, None] > 0, k[:, :2], 0.0)
    out[:, 2] = vis
    return (float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])), out


def load_aic(
    ann_file: Path,
    images_dir: Path,
    *,
    kind: InstanceKind,
    aspect: float,
    num_joints: int = NUM_JOINTS,
    limit: int | None = None,
) -> list[Instance]:
    """Person instances of an AIC annotation file: images in file order, persons in `keypoint_annotations` order.

    Boxes are used raw (x1, y1, x2 - x1, y2 - y1), without cleaning, and go through the same box -> centre/scale step
    as COCO (aspect fix, x 1.25), as SHP ai_challenger.py; a box with no area has no crop and is skipped.

    Args:
        ann_file: `keypoint_train_annotation.json` (or another split's).
        images_dir: folder holding `<image_id>.jpg`.
        kind: "unlabeled" zeroes the keypoints (the MPII + AIC protocol drops AIC's labels); "labeled"/"val" keep
            joints with v < 3.
        aspect: model input width / height.
        num_joints: K of the keypoints written (14; another K only for unlabeled instances feeding other shards).
        limit: keep the first `limit` instances.

    Returns:
        Instances with `image_id` = 1-based image index in the file and `ann_id` = running person index.
    """
    ann_file, images_dir = Path(ann_file), Path(images_dir)
    data = read_json_list(ann_file, "images (keypoint_*_annotation.json)", "AI Challenger", kind,
                          (NUM_JOINTS, num_joints))  # fmt: skip
    out: list[Instance] = []
    for i, raw in enumerate(data):
        image_id, boxes, kpts = _image_entry(raw, i, ann_file)
        path = images_dir / f"{image_id}.jpg"
        size = None
        for key, person_kpts in kpts.items():
            where = f"{ann_file}: images[{i}] ({image_id}) person {key!r}"
            if key not in boxes:
                raise ValueError(f"{where} has keypoints but no human_annotations box")
            box, k = _person(boxes[key], person_kpts, where)
            if box[2] <= 0 or box[3] <= 0:
                continue
            size = size or image_size(path, f"{ann_file} images[{i}]")
            center, scale = box_to_center_scale(box, aspect)
            k = np.zeros((num_joints, 3)) if kind == "unlabeled" else k
            out.append(
                Instance(
                    image_id=i + 1, ann_id=len(out), file_name=path.name, image_path=path, image_size=size,
                    bbox=box, score=1.0, center=center, scale=scale, keypoints=k,
                    num_keypoints=int((k[:, 2] > 0).sum()), area=box[2] * box[3], raw_bbox=box,
                )
            )  # fmt: skip
            if limit is not None and len(out) >= limit:
                return out
    if not out:
        raise ValueError(f"{ann_file}: no person with a non-empty box; check human_annotations")
    return out
