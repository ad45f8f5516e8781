"""MPII in HRNet's layout (reference §1.9): `annot/{train,valid}.json` person entries -> `Instance`s, the PCKh ground
truth `annot/gt_valid.mat`, and the `pred.mat` the reference writes.

Every malformed entry is rejected with one line naming the file, the entry and the field.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sshpe.data.readers.coco import Instance, InstanceKind, image_size, read_json_list
from sshpe.geometry import box_to_center_scale

NUM_JOINTS = 16
CENTER_SHIFT = 15.0  # the reader moves the centre down by 15 * scale px (HRNet mpii.py)
SCALE_PAD = 1.25  # and grows the scale x 1.25


def _numbers(value: object, shape: tuple[int, ...]) -> np.ndarray | None:
    """`value` as a float64 array of `shape`, or None when it is not numbers of that shape."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == shape and np.isfinite(arr).all() else None


def _entry(entry: object, i: int, path: Path, labeled: bool) -> tuple[str, np.ndarray, float, np.ndarray, np.ndarray]:
    """Validate one annotation entry -> (image, centre (2,), scale, joints (16, 2) 1-based, joints_vis (16,))."""
    where = f"{path}: entry [{i}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} is a {type(entry).__name__}, expected an object with image, center, scale")
    for key in ("image", "center", "scale") + (("joints", "joints_vis") if labeled else ()):
        if key not in entry:
            raise ValueError(f"{where} has no {key!r}; MPII entries need image, center, scale, joints, joints_vis")
    image = entry["image"]
    if not isinstance(image, str) or not image:
        raise ValueError(f"{where}: image {image!r} is not a file name")
    where = f"{where} ({image})"
    center = _numbers(entry["center"], (2,))
    scale = entry["scale"]
    if center is None:
        raise ValueError(f"{where}: center {entry['center']!r} is not [x, y]")
    if not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"{where}: scale {scale!r} must be a positive number (person height / 200)")
    joints = np.full((NUM_JOINTS, 2), -1.0)
    vis = np.zeros(NUM_JOINTS)
    if labeled:
        joints = _numbers(entry["joints"], (NUM_JOINTS, 2))
        vis = _numbers(entry["joints_vis"], (NUM_JOINTS,))
        if joints is None:
            raise ValueError(f"{where}: joints must be {NUM_JOINTS} x [x, y] numbers (MPII joint order)")
        if vis is None or not np.isin(vis, (0, 1)).all():
            raise ValueError(f"{where}: joints_vis must be {NUM_JOINTS} values of 0 or 1")
    return image, center, float(scale), joints, vis


def _joint_box(joints: np.ndarray, vis: np.ndarray, center: np.ndarray, scale: float) -> tuple[float, ...]:
    """The reference's person box from the joints (x > 0): their extent x 1.2 wide and x 1.1 high, image px
    (x, y, w, h); a square of side 200 * scale around the centre when no joint is there."""
    pts = joints[(vis > 0) & (joints[:, 0] > 0)]
    if len(pts) == 0:
        side = 200.0 * scale
        return (center[0] - side / 2, center[1] - side / 2, side, side)
    (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
    w, h = (x2 - x1) * 1.2, (y2 - y1) * 1.1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return (float(cx - w / 2), float(cy - h / 2), float(w), float(h))


def load_mpii(
    ann_file: Path,
    images_dir: Path,
    *,
    kind: InstanceKind,
    aspect: float,
    num_joints: int = NUM_JOINTS,
    limit: int | None = None,
) -> list[Instance]:
    """Person instances of an MPII annotation file, one per entry, in file order (the reference keeps them all, so
    `valid.json` entry i is column i of `gt_valid.mat`).

    Geometry (HRNet mpii.py): joints and centre are 1-based MATLAB pixels and become 0-based; when the centre is
    valid (x != -1) it moves down by 15 x scale px and the scale grows x 1.25. The scale (s, s) is then grown to
    the model aspect like a COCO box (for aspect <= 1 this only lengthens the height, so the crop's zoom, which the
    width sets, equals the reference's).

    Args:
        ann_file: `annot/train.json` or `annot/valid.json`.
        images_dir: folder holding the entries' `image` files.
        kind: "unlabeled" zeroes the keypoints; "labeled"/"val" keep them (visibility 1 -> COCO v = 2).
        aspect: model input width / height.
        num_joints: K of the keypoints written (16; another K only for unlabeled instances feeding other shards).
        limit: keep the first `limit` entries.

    Returns:
        Instances with `image_id` = 1-based index of the image among the file's distinct images and `ann_id` = the
        entry index.

    Raises:
        ValueError: malformed JSON or entry (the message names the file, the entry and the field).
    """
    ann_file, images_dir = Path(ann_file), Path(images_dir)
    data = read_json_list(ann_file, "person entries (HRNet's annot/*.json)", "MPII", kind, (NUM_JOINTS, num_joints))
    labeled = kind != "unlabeled"
    image_ids: dict[str, int] = {}
    out = []
    for i, raw in enumerate(data[:limit] if limit else data):
        image, center, scale, joints, vis = _entry(raw, i, ann_file, labeled)
        s = np.array([scale, scale])
        if center[0] != -1:  # x = -1 marks an entry without a valid centre
            center = center + np.array([0.0, CENTER_SHIFT * scale])
            s = s * SCALE_PAD
        joints, center = joints - 1.0, center - 1.0  # 1-based MATLAB -> 0-based
        _, s = box_to_center_scale((0.0, 0.0, 200 * s[0], 200 * s[1]), aspect, padding=1.0)  # to the model aspect
        kpts = np.zeros((num_joints, 3))
        if labeled:
            kpts[:, :2] = np.where(vis[:, None] > 0, joints, 0.0)
            kpts[:, 2] = np.where(vis > 0, 2.0, 0.0)
        box = _joint_box(joints, vis, center, scale)
        path = images_dir / image
        img_id = image_ids.setdefault(image, len(image_ids) + 1)
        out.append(
            Instance(
                image_id=img_id, ann_id=i, file_name=image, image_path=path,
                image_size=image_size(path, f"{ann_file} entry [{i}]"), bbox=box, score=1.0, center=center,
                scale=s, keypoints=kpts, num_keypoints=int((kpts[:, 2] > 0).sum()), area=box[2] * box[3],
                raw_bbox=box,
            )
        )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------------------
# PCKh ground truth and predictions (.mat)
# ---------------------------------------------------------------------------------------------------------------


def read_pckh_gt(path: Path, num_joints: int = NUM_JOINTS) -> dict[str, np.ndarray]:
    """Read `gt_valid.mat`: `jnt_missing` (K x N), `pos_gt_src` (K x 2 x N), `headboxes_src` (2 x 2 x N).

    Returns:
        {"pos": (N, K, 2) float64 1-based px, "missing": (N, K) bool, "headboxes": (N, 2, 2) corners (x, y)}.

    Raises:
        ValueError: the file is not a MAT file or a field is missing or mis-shaped (the message names it).
    """
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PCKh ground truth {path} does not exist (MPII: annot/gt_valid.mat)")
    try:
        mat = loadmat(str(path))
    except Exception as err:  # scipy raises several types for a bad file
        raise ValueError(f"{path}: not a readable MATLAB file ({err}); re-download gt_valid.mat") from None
    for key in ("jnt_missing", "pos_gt_src", "headboxes_src"):
        if key not in mat:
            raise ValueError(f"{path}: no {key!r} field; expected jnt_missing, pos_gt_src, headboxes_src")
    missing, pos, boxes = (np.asarray(mat[k], dtype=np.float64) for k in ("jnt_missing", "pos_gt_src", "headboxes_src"))
    n = missing.shape[-1] if missing.ndim == 2 else -1
    expected = {"jnt_missing": (num_joints, n), "pos_gt_src": (num_joints, 2, n), "headboxes_src": (2, 2, n)}
    for key, arr in zip(expected, (missing, pos, boxes)):
        if n < 0 or arr.shape != expected[key]:
            raise ValueError(f"{path}: {key} has shape {arr.shape}, expected {expected[key]} (K={num_joints} joints)")
    return {
        "pos": pos.transpose(2, 0, 1),
        "missing": missing.T.astype(bool),
        "headboxes": boxes.transpose(2, 0, 1),
    }


def write_pckh_gt(path: Path, pos: np.ndarray, missing: np.ndarray, headboxes: np.ndarray, names: list[str]) -> None:
    """Write a `gt_valid.mat` (inverse of `read_pckh_gt`; `names` become `dataset_joints`), atomically."""
    from scipy.io import savemat

    joints = np.empty((1, len(names)), dtype=object)
    joints[0, :] = names
    _save_atomic(
        Path(path),
        lambda f: savemat(f, {
            "dataset_joints": joints,
            "jnt_missing": np.asarray(missing, dtype=np.float64).T,
            "pos_gt_src": np.asarray(pos, dtype=np.float64).transpose(1, 2, 0),
            "headboxes_src": np.asarray(headboxes, dtype=np.float64).transpose(1, 2, 0),
        }),
    )  # fmt: skip


def write_pred_mat(path: Path, preds: np.ndarray) -> None:
    """Write the reference's `pred.mat` (`preds`: N x K x 3, xy 1-based px + confidence), atomically."""
    from scipy.io import savemat

    _save_atomic(Path(path), lambda f: savemat(f, {"preds": np.asarray(preds, dtype=np.float64)}))


def _save_atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
