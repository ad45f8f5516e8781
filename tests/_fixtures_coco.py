"""A tiny COCO-format keypoint dataset written into a temporary directory, for the shard and stream tests.

Images are smooth random fields with coloured rectangles (so interpolation error is small and colour order
shows); annotations include a crowd, a person without keypoints, an empty box and a non-person object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sshpe.data.readers.coco import load_instances
from sshpe.data.shard_folder import write_shard_folder
from sshpe.schema import COCO17

INPUT_HW = (64, 48)
K = 17


@dataclass(frozen=True)
class CocoFixture:
    """Paths of the fixture and the annotation ids `load_instances` must return, in order."""

    root: Path
    images_dir: Path
    ann_file: Path
    info_file: Path
    det_file: Path
    valid_ann_ids: list[int]
    det_boxes: list[tuple[int, tuple[float, ...], float]]  # (image_id, raw box, score) in expected order


def _image(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """(h, w, 3) uint8 BGR: a smooth random field plus a few saturated, slightly blurred rectangles."""
    low = rng.uniform(40, 215, size=(max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    colours = [(0, 0, 255), (0, 255, 0), (255, 0, 0)]  # red, green, blue in BGR
    for c in colours:
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        cv2.rectangle(img, (x0, y0), (x0 + int(rng.integers(10, 30)), y0 + int(rng.integers(10, 30))), c, -1)
    return cv2.GaussianBlur(img, (0, 0), 1.0)  # soft edges: resampling twice stays close to resampling once


def _keypoints(rng: np.random.Generator, box: tuple[float, float, float, float]) -> list[float]:
    """17 COCO keypoints inside the box, a third of them unlabeled (0, 0, 0)."""
    x, y, w, h = box
    out = []
    for _ in range(K):
        v = int(rng.choice([0, 1, 2]))
        out += [0.0, 0.0, 0] if v == 0 else [round(x + rng.uniform(0, w), 2), round(y + rng.uniform(0, h), 2), v]
    return out


def make_coco(root: Path, n_filler: int = 4, seed: int = 0) -> CocoFixture:
    """Write images, `ann.json`, `info.json` (no annotations) and `dets.json` under `root`."""
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    sizes = {3: (150, 110), 1: (160, 120), 2: (120, 160)}  # the images array lists id 3 first
    sizes.update({10 + i: (140 + 10 * i, 130) for i in range(n_filler)})
    images, anns = [], []
    for img_id, (w, h) in sizes.items():
        name = f"{img_id:06d}.jpg"
        cv2.imwrite(str(images_dir / name), _image(rng, w, h), [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({"id": img_id, "file_name": name, "width": w, "height": h})

    def ann(ann_id: int, img_id: int, box: tuple, *, crowd: int = 0, cat: int = 1, kpts: bool = True) -> dict:
        a = {"id": ann_id, "image_id": img_id, "category_id": cat, "bbox": list(box), "iscrowd": crowd,
             "area": float(box[2] * box[3])}  # fmt: skip
        if cat == 1:
            a["keypoints"] = _keypoints(rng, box) if kpts else [0] * (3 * K)
            a["num_keypoints"] = sum(1 for v in a["keypoints"][2::3] if v > 0)
        return a

    anns += [
        ann(101, 1, (20.5, 10.0, 40.0, 80.0)),
        ann(102, 1, (5.0, 5.0, 60.0, 60.0), crowd=1),
        ann(103, 1, (70.0, 20.0, 30.0, 50.0), kpts=False),
        ann(201, 2, (-10.0, 30.0, 60.0, 100.0)),  # sticks out of the image: cleaned
        ann(202, 2, (40.0, 40.0, 0.0, 30.0)),  # empty box
        ann(203, 2, (10.0, 10.0, 20.0, 20.0), cat=2),  # not a person, no keypoints key
        ann(301, 3, (30.0, 20.0, 50.0, 70.0)),
        ann(302, 3, (90.0, 40.0, 40.0, 60.0)),
    ]
    valid = [301, 302, 101, 201]
    for i in range(n_filler):
        for j in range(2):
            anns.append(ann(1000 + 10 * i + j, 10 + i, (15.0 + 50 * j, 20.0, 45.0, 90.0)))
            valid.append(1000 + 10 * i + j)
    anns = anns[3:] + anns[:3]  # annotation file order differs from image order
    valid = [a for a in valid if a < 1000] + sorted(a for a in valid if a >= 1000)

    ann_file, info_file, det_file = root / "ann.json", root / "info.json", root / "dets.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1}]}))
    info_file.write_text(json.dumps({"images": images}))
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [10.0, 10.0, 50.0, 90.0], "score": 0.9},
        {"image_id": 3, "category_id": 1, "bbox": [-5.0, 0.0, 60.0, 80.0], "score": 0.05},
        {"image_id": 1, "category_id": 2, "bbox": [10.0, 10.0, 50.0, 90.0], "score": 0.8},
        {"image_id": 999, "category_id": 1, "bbox": [10.0, 10.0, 50.0, 90.0], "score": 0.7},
        {"image_id": 1, "category_id": 1, "bbox": [60.0, 20.0, 30.0, 60.0], "score": 0.3},
    ]
    det_file.write_text(json.dumps(dets))
    det_boxes = [(3, (-5.0, 0.0, 60.0, 80.0), 0.05), (1, (10.0, 10.0, 50.0, 90.0), 0.9),
                 (1, (60.0, 20.0, 30.0, 60.0), 0.3)]  # fmt: skip
    return CocoFixture(root, images_dir, ann_file, info_file, det_file, valid, det_boxes)


def shard_fixture(fx: CocoFixture, out_dir: Path, *, shard_size: int, split: str = "train", workers: int = 0) -> dict:
    """Load the labeled instances and add them to `out_dir` as one split (other splits kept); returns its entry."""
    inst = load_instances(fx.ann_file, fx.images_dir, kind="labeled", aspect=INPUT_HW[1] / INPUT_HW[0], num_joints=K)
    sources = {"val_annotations": fx.ann_file} if split == "val" else {"train_annotations": fx.ann_file}
    result = write_shard_folder(out_dir, {split: (inst, {})}, dataset="toy", schema=COCO17, input_hw=INPUT_HW,
                                sources=sources, keep_other_splits=True, shard_size=shard_size, workers=workers,
                                progress=False)  # fmt: skip
    return result.splits[split]
