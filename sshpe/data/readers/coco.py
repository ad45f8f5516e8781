"""COCO-format person instances: the reference's instance protocol (SSHPE_REFERENCE §1.2, §1.3.2-3).

Turns a keypoint annotation file (or an image-info file plus a detection results file) into `Instance`s, one per
person box, in the reference's order. Nothing here reads pixels; `shard_writer` does.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from sshpe import geometry
from sshpe.errors import quoted

InstanceKind = Literal["labeled", "unlabeled", "val"]
PERSON_CATEGORY = 1
_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANN_KEYS = ("id", "image_id", "category_id", "bbox", "iscrowd", "area")
_DET_KEYS = ("image_id", "category_id", "bbox", "score")
_MAX_LISTED = 10  # invalid annotations listed in one error (the count says how many more)


class Invalid(NamedTuple):
    """Why one annotation or image cannot become a sample.

    Attributes:
        reason: a short key counted in the manifest's `skipped` (`non_finite_keypoints`, `bad_visibility`,
            `bad_box`, `bad_area`, `bad_score`, `missing_image`, `truncated_image`, `undecodable_image`).
        message: what is wrong, naming the annotation (and file).
    """

    reason: str
    message: str


class InvalidAnnotations(ValueError):
    """Annotations that cannot become samples; the message lists them and suggests `--skip-invalid`."""


@dataclass(frozen=True)
class Instance:
    """One person box of one image.

    Attributes:
        image_id: COCO image id.
        ann_id: COCO annotation id, or -1 for a detection box.
        file_name: image file name relative to the images directory.
        image_path: full path of the image.
        image_size: (W, H) of the image in px.
        bbox: (x, y, w, h) in image px: the cleaned GT box, or the raw detection box.
        score: box score (1.0 for GT boxes).
        center: (2,) float64 box centre in image px.
        scale: (2,) float64 padded box size in units of 200 image px (`geometry.box_to_center_scale`).
        keypoints: (K, 3) float64 (x, y, v) in image px with COCO visibility v; zeros when unlabeled.
        num_keypoints: number of joints with v > 0.
        area: annotation area in image px^2 (w * h for detection boxes).
        hidden_keypoints: (K, 3) the ground truth the unlabeled protocol drops (GT boxes of a labelled file
            sharded as unlabeled), kept for measuring pseudo-labels only; None otherwise.
        raw_bbox: the box as the source file gives it (x, y, w, h), before cleaning; results files carry it as SHP/MA
            write it (reference §10.19). None means `bbox`.
    """

    image_id: int
    ann_id: int
    file_name: str
    image_path: Path
    image_size: tuple[int, int]
    bbox: tuple[float, float, float, float]
    score: float
    center: np.ndarray
    scale: np.ndarray
    keypoints: np.ndarray
    num_keypoints: int
    area: float
    hidden_keypoints: np.ndarray | None = None
    raw_bbox: tuple[float, float, float, float] | None = None


def image_size(path: Path, where: str) -> tuple[int, int]:
    """(W, H) of an image from its header (no decode); the error names the image and the entry that uses it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return int(img.size[0]), int(img.size[1])
    except FileNotFoundError:
        raise FileNotFoundError(f"image {path} ({where}) does not exist; check the images folder") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"image {path} ({where}) is not a readable image ({err})") from None


def read_json_list(path: Path, what: str, dataset: str, kind: str, joints: tuple[int, int]) -> list:
    """A native-format annotation file that must be a non-empty JSON list (MPII, AI Challenger).

    Args:
        what: what the list holds, for the error ("person entries (HRNet's annot/*.json)").
        dataset: the dataset's name, for the error.
        kind: the instance kind being read; only "unlabeled" may use another joint count.
        joints: (the dataset's joint count, the shards' schema's joint count).
    """
    if kind != "unlabeled" and joints[0] != joints[1]:
        raise ValueError(
            f"{path}: {dataset} labels have {joints[0]} joints but the shards' schema has {joints[1]}; use the "
            "dataset's own schema, or write it as unlabeled (labels dropped)"
        )
    data = read_json(path, f"{dataset} annotation file")
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list of {what}")
    return data


def read_json(path: Path, what: str) -> object:
    """Parse a JSON file, raising errors that name the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist; check the path (COCO: annotations/*.json)")
    try:
        with path.open("r", encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{what} {path} is not valid JSON ({err}); re-download or regenerate it") from None
    except RecursionError:
        raise ValueError(f"{what} {path} nests too deeply to be COCO-format JSON; regenerate it") from None


def _require(entry: object, keys: tuple[str, ...], path: Path, where: str) -> dict:
    """Check that `entry` is a dict holding every key; the error names the file, the entry and the key."""
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: {where} is a {type(entry).__name__}, expected a JSON object")
    for key in keys:
        if key not in entry:
            raise ValueError(f"{path}: {where} has no {key!r} key; every entry needs {list(keys)}")
    return entry


def _load_images(data: object, ann_file: Path) -> list[dict]:
    """The `images` array of a COCO file, validated."""
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{ann_file}: no 'images' key; expected a COCO-format annotation or image-info file")
    if not isinstance(data["images"], list):
        raise ValueError(f"{ann_file}: 'images' is a {type(data['images']).__name__}, expected a list")
    images = [_require(img, _IMAGE_KEYS, ann_file, f"images[{i}]") for i, img in enumerate(data["images"])]
    for i, img in enumerate(images):
        w, h = img["width"], img["height"]
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            raise ValueError(f"{ann_file}: images[{i}] has width {quoted(w)}, height {quoted(h)}; expected positive "
                             "integers (px)")  # fmt: skip
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise ValueError(f"{ann_file}: images[{i}] has file_name {quoted(img['file_name'])}; expected a path")
    return images


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _box(entry: dict, path: Path, where: str) -> tuple[float, float, float, float]:
    """The entry's `bbox` as four floats (x, y, w, h); the error names the entry."""
    box = entry["bbox"]
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise ValueError(f"{path}: {where} has bbox {quoted(box)}; expected [x, y, w, h] numbers in image px")
    return (float(box[0]), float(box[1]), float(box[2]), float(box[3]))


def _check_keypoints(kpts: object, num_joints: int, path: Path, where: str) -> np.ndarray:
    """COCO flat keypoint list -> (K, 3) float64; the error names the entry and both lengths."""
    if not isinstance(kpts, list) or not all(_is_number(v) for v in kpts):
        raise ValueError(f"{path}: {where} has keypoints {quoted(kpts)}; expected a flat list of numbers")
    if len(kpts) != 3 * num_joints:
        raise ValueError(
            f"{path}: {where} has {len(kpts)} keypoint values, expected 3 * num_joints = {3 * num_joints}; "
            "pick the keypoint schema that matches this dataset"
        )
    return np.asarray(kpts, dtype=np.float64).reshape(num_joints, 3)


def _gt_problem(kpts: np.ndarray, box: tuple[float, ...], area: object, what: str) -> Invalid | None:
    """What makes a person annotation unusable (beyond the reference's silent filters), or None."""
    bad = np.flatnonzero(~np.isfinite(kpts).all(axis=1))
    if bad.size:
        row = kpts[bad[0]].tolist()
        return Invalid("non_finite_keypoints", f"{what}: keypoint {int(bad[0])} is {row} (not finite)")
    vis = np.flatnonzero(~np.isin(kpts[:, 2], (0.0, 1.0, 2.0)))
    if vis.size:
        return Invalid("bad_visibility", f"{what}: keypoint {int(vis[0])} has visibility {kpts[vis[0], 2]:g}, "
                                         "expected 0, 1 or 2")  # fmt: skip
    if not all(math.isfinite(v) for v in box):
        return Invalid("bad_box", f"{what}: bbox {list(box)} is not finite")
    if box[2] < 0 or box[3] < 0:
        return Invalid("bad_box", f"{what}: bbox {list(box)} has a negative width or height")
    if not _is_number(area) or not math.isfinite(area):
        return Invalid("bad_area", f"{what}: area {quoted(area)} is not a finite number")
    return None


def _collect(problem: Invalid, problems: list[Invalid], skipped: dict[str, int] | None) -> None:
    """Count a skipped problem (`skipped` given) or keep it for the error raised at the end."""
    if skipped is not None:
        skipped[problem.reason] = skipped.get(problem.reason, 0) + 1
    else:
        problems.append(problem)


def _raise_problems(problems: list[Invalid], path: Path) -> None:
    if not problems:
        return
    shown = [f"  {p.message}" for p in problems[:_MAX_LISTED]]
    more = [f"  ... and {len(problems) - _MAX_LISTED} more"] if len(problems) > _MAX_LISTED else []
    raise InvalidAnnotations(
        "\n".join([f"{path}: {len(problems)} invalid annotation(s); fix them, or pass --skip-invalid to skip them "
                   "(the manifest counts what was skipped):", *shown, *more])
    )  # fmt: skip


def _gt_instances(
    data: dict,
    images: list[dict],
    ann_file: Path,
    images_dir: Path,
    kind: InstanceKind,
    aspect: float,
    num_joints: int,
    limit: int | None,
    skipped: dict[str, int] | None,
) -> list[Instance]:
    """Instances from GT boxes in the order of the `images` array (reference §1.2), up to `limit`."""
    if "annotations" not in data:
        raise ValueError(f"{ann_file}: no 'annotations' key; pass a keypoint annotation file or a det_file")
    if not isinstance(data["annotations"], list):
        raise ValueError(f"{ann_file}: 'annotations' is a {type(data['annotations']).__name__}, expected a list")
    by_image: dict[int, list[tuple[int, dict]]] = defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        ann = _require(ann, _ANN_KEYS, ann_file, f"annotations[{i}]")
        for key in ("id", "image_id", "category_id"):
            if key in ann and (not isinstance(ann[key], int) or isinstance(ann[key], bool)):
                raise ValueError(f"{ann_file}: annotations[{i}].{key} is {quoted(ann[key])}, expected an integer")
        by_image[ann["image_id"]].append((i, ann))
    out: list[Instance] = []
    problems: list[Invalid] = []
    for img in images:
        w_img, h_img = int(img["width"]), int(img["height"])
        for i, ann in by_image[img["id"]]:
            if limit is not None and len(out) >= limit:
                break
            if ann["iscrowd"] or ann["category_id"] != PERSON_CATEGORY:
                continue
            _require(ann, ("keypoints",), ann_file, f"annotations[{i}] (a person)")
            kpts = _check_keypoints(ann["keypoints"], num_joints, ann_file, f"annotations[{i}]")
            raw_box = _box(ann, ann_file, f"annotations[{i}]")
            what = f"annotation id {quoted(ann['id'])} (image id {quoted(img['id'])}, {img['file_name']})"
            problem = _gt_problem(kpts, raw_box, ann["area"], what)
            if problem is not None:
                _collect(problem, problems, skipped)
                continue
            if kpts.max() <= 0:
                continue
            box = geometry.clean_box(raw_box, w_img, h_img)
            if box is None or float(ann["area"]) <= 0:  # the reference also requires the annotated area > 0
                continue
            if box[2] <= 0 and box[3] <= 0:  # at most 1x1 px: no crop exists (zero scale)
                _collect(Invalid("bad_box", f"{what}: bbox {list(raw_box)} is at most 1x1 px"), problems, skipped)
                continue
            hidden = None
            if kind == "unlabeled":
                kpts, hidden = np.zeros_like(kpts), kpts
            inst = _make_instance(img, images_dir, int(ann["id"]), box, 1.0, kpts, float(ann["area"]), aspect)
            out.append(replace(inst, hidden_keypoints=hidden, raw_bbox=raw_box))
    _raise_problems(problems, ann_file)
    return out


def _det_instances(
    images: list[dict],
    det_file: Path,
    images_dir: Path,
    aspect: float,
    num_joints: int,
    skipped: dict[str, int] | None,
) -> list[Instance]:
    """Instances from person detection boxes (raw, uncleaned, every score kept), in `images` order."""
    dets = read_json(det_file, "detection file")
    if not isinstance(dets, list):
        raise ValueError(f"{det_file}: expected a COCO detection results list [{{image_id, bbox, score, ...}}]")
    by_image: dict[int, list[tuple[tuple[float, float, float, float], dict]]] = defaultdict(list)
    problems: list[Invalid] = []
    for i, det in enumerate(dets):
        det = _require(det, _DET_KEYS, det_file, f"entry [{i}]")
        box = _box(det, det_file, f"entry [{i}]")
        if det["category_id"] != PERSON_CATEGORY:
            continue
        what = f"detection [{i}] (image id {quoted(det['image_id'])})"
        if not all(math.isfinite(v) for v in box):
            _collect(Invalid("bad_box", f"{what}: bbox {list(box)} is not finite"), problems, skipped)
        elif not _is_number(det["score"]) or not math.isfinite(det["score"]):
            _collect(Invalid("bad_score", f"{what}: score {quoted(det['score'])} is not a finite number"), problems,
                     skipped)  # fmt: skip
        elif box[2] > 0 and box[3] > 0:  # an empty box has no crop
            by_image[det["image_id"]].append((box, det))
    _raise_problems(problems, det_file)
    out = []
    zeros = np.zeros((num_joints, 3), dtype=np.float64)
    for img in images:
        for box, det in by_image[img["id"]]:
            out.append(_make_instance(img, images_dir, -1, box, float(det["score"]), zeros, box[2] * box[3], aspect))
    return out


def _make_instance(
    img: dict,
    images_dir: Path,
    ann_id: int,
    box: tuple[float, ...],
    score: float,
    kpts: np.ndarray,
    area: float,
    aspect: float,
) -> Instance:
    center, scale = geometry.box_to_center_scale(box, aspect)
    return Instance(
        image_id=int(img["id"]),
        ann_id=ann_id,
        file_name=str(img["file_name"]),
        image_path=Path(images_dir) / str(img["file_name"]),
        image_size=(int(img["width"]), int(img["height"])),
        bbox=(box[0], box[1], box[2], box[3]),
        score=score,
        center=center,
        scale=scale,
        keypoints=kpts,
        num_keypoints=int((kpts[:, 2] > 0).sum()),
        area=area,
    )


def load_instances(
    ann_file: Path,
    images_dir: Path,
    *,
    kind: InstanceKind,
    aspect: float,
    num_joints: int,
    limit: int | None = None,
    det_file: Path | None = None,
    skipped: dict[str, int] | None = None,
) -> list[Instance]:
    """Person instances of a COCO-format split, in the reference's order.

    GT mode: images in the order of the JSON `images` array; per image, in file order, the non-crowd category-1
    annotations whose cleaned box is non-empty, whose `area` > 0 and with `max(keypoints) > 0`.
    Detection mode (`det_file` given): the category-1 boxes of `det_file` for the images of `ann_file`, raw,
    every score kept, `ann_id` -1; `ann_file` may then be an image-info file without `annotations`.

    Args:
        ann_file: COCO keypoint annotation file, or image-info file with `det_file`.
        images_dir: directory that holds the images' `file_name`s.
        kind: "unlabeled" zeroes keypoints (and keeps them as `hidden_keypoints`); "labeled" and "val" keep them
            (image px, COCO v).
        aspect: model input width / height; boxes are grown to it and padded 1.25x.
        num_joints: K; every annotation must have 3 * K keypoint values.
        limit: keep only the first `limit` instances (the reference's labeled subsets `db[:TRAIN_LEN]`).
        det_file: COCO detection results JSON (list of {image_id, category_id, bbox, score}).
        skipped: None (strict): invalid annotations (non-finite keypoints or boxes, visibilities outside
            {0, 1, 2}, negative or 1x1-px boxes, non-finite areas or scores) raise `InvalidAnnotations` listing
            them. A dict: they are skipped and counted in it by `Invalid.reason` (only those met before `limit`).

    Returns:
        The instances; never empty.

    Raises:
        FileNotFoundError: a file is missing.
        InvalidAnnotations: invalid annotations (strict mode).
        ValueError: invalid JSON, missing keys, wrong keypoint length, or no valid instance.
    """
    if kind not in ("labeled", "unlabeled", "val"):
        raise ValueError(f"kind must be 'labeled', 'unlabeled' or 'val', got {kind!r}")
    if limit is not None and limit <= 0:
        raise ValueError(f"limit must be positive or None, got {limit}")
    ann_file = Path(ann_file)
    data = read_json(ann_file, "annotation file")
    images = _load_images(data, ann_file)
    if det_file is not None:
        instances = _det_instances(images, Path(det_file), Path(images_dir), aspect, num_joints, skipped)
        instances = instances[:limit] if limit is not None else instances
    else:
        instances = _gt_instances(data, images, ann_file, Path(images_dir), kind, aspect, num_joints, limit, skipped)
    if not instances:
        source = f"{det_file} for the images of {ann_file}" if det_file is not None else str(ann_file)
        raise ValueError(
            f"no valid person instances in {source} (kind={kind}); check the category ids (person = 1), "
            "boxes and keypoints"
        )
    return instances
