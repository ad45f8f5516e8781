"""`sshpe synth`: writes the built-in synthetic COCO-format person-keypoint dataset (DESIGN decision 11).

Owns the on-disk layout, the COCO JSON files, per-image seeding and the worker pool; the pictures themselves come
from `sshpe.synth.scene` (composition) and `sshpe.synth.figures` (people).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
from rich.progress import track

from sshpe.parallel import ordered_map
from sshpe.schema import COCO17
from sshpe.synth.scene import SceneKnobs, render_scene
from sshpe.synth.stats import person_stats

SPLITS = ("train", "val")
VAL_ID_OFFSET = 1_000_000_000  # val image/annotation ids start here, so ids never clash across splits
JPEG_QUALITY = 90


def coco_categories() -> list[dict]:
    """The COCO `categories` entry: one person category with COCO-17 names and the 1-based COCO skeleton."""
    return [{
        "id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO17.names),
        "skeleton": [[a + 1, b + 1] for a, b in COCO17.skeleton],
    }]  # fmt: skip


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to a temporary sibling, then rename it over `path`; no partial file survives a failure."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _render_task(task: tuple) -> dict:
    """Render, encode and write one image; returns its record (persons, detections) for the JSON files."""
    split, image_id, ss, out_path, image_size, knobs = task
    scene = render_scene(ss, image_size, knobs)
    ok, buf = cv2.imencode(".jpg", scene.img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"sshpe synth: OpenCV could not encode {out_path} as JPEG")
    _write_atomic(Path(out_path), buf.tobytes())
    persons = [{**p, "keypoints": [round(float(x), 4) for x in p["keypoints"].reshape(-1)]} for p in scene.persons]
    return {"split": split, "image_id": image_id, "persons": persons, "detections": scene.detections}


def _prepare_dirs(out_dir: Path) -> dict[str, Path]:
    """Create images/{train,val} and annotations/ under `out_dir`, with an error that says what to do."""
    dirs = {s: out_dir / "images" / s for s in SPLITS} | {"annotations": out_dir / "annotations"}
    for d in dirs.values():
        try:
            d.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as e:
            raise NotADirectoryError(
                f"sshpe synth: cannot create {d}: {e.filename or out_dir} exists and is not a directory; "
                "pass a new or existing directory as the output"
            ) from e
    return dirs


def _run(tasks: list[tuple], workers: int, progress: bool) -> list[dict]:
    """Render all tasks in order, in this process (workers=0) or in a spawn pool; results keep task order, and a
    dead worker fails the run (`sshpe.parallel.WorkerDied`) instead of hanging it."""
    chunk = max(1, min(16, len(tasks) // (4 * max(workers, 1))))
    with ordered_map(_render_task, tasks, workers=workers, what="sshpe synth", chunksize=chunk) as results:
        if progress:
            results = track(results, total=len(tasks), description="sshpe synth: rendering")
        return list(results)


def _coco_dicts(records: list[dict], split: str, image_size: tuple[int, int], info: dict) -> tuple[dict, list]:
    """The person_keypoints_{split}.json dict and the detection list for one split's records."""
    w, h = image_size
    images, anns, dets = [], [], []
    ann_id = VAL_ID_OFFSET if split == "val" else 0
    for rec in records:
        iid = rec["image_id"]
        images.append({"id": iid, "file_name": f"{iid:012d}.jpg", "width": w, "height": h})
        for p in rec["persons"]:
            ann_id += 1
            anns.append({
                "id": ann_id, "image_id": iid, "category_id": 1, "keypoints": p["keypoints"],
                "num_keypoints": p["num_keypoints"], "bbox": p["bbox"], "area": p["area"], "iscrowd": 0,
                "segmentation": [], "facing": p["facing"], "pose": p["pose"], "extra_joints": p["extra_joints"],
                "head_box": p["head_box"],
            })  # fmt: skip
        dets += [{"image_id": iid, "category_id": 1, **d} for d in rec["detections"]]
    coco = {"info": info, "images": images, "annotations": anns, "categories": coco_categories()}
    return coco, dets


def _write_annotations(records: list[dict], ann_dir: Path, image_size: tuple[int, int], info: dict) -> dict:
    """Write the detection and keypoint JSON files (atomically, val detections first, keypoint files last) and
    return the summary counts and paths."""
    summary: dict = {"images": {}, "persons": {}, "keypoints_labelled": {}, "stats": {}, "paths": {}}
    for split in SPLITS:
        coco, dets = _coco_dicts([r for r in records if r["split"] == split], split, image_size, info)
        if split == "val":
            det_path = ann_dir / "person_detections_val.json"
            _write_atomic(det_path, json.dumps(dets, separators=(",", ":")).encode())
            summary["paths"]["detections_val"] = str(det_path)
        ann_path = ann_dir / f"person_keypoints_{split}.json"
        _write_atomic(ann_path, json.dumps(coco, separators=(",", ":")).encode())
        anns = coco["annotations"]
        summary["paths"][split] = str(ann_path)
        summary["images"][split] = len(coco["images"])
        summary["persons"][split] = len(anns)
        summary["keypoints_labelled"][split] = sum(a["num_keypoints"] for a in anns)
        summary["stats"][split] = person_stats(coco)
    return summary


def _check_args(num_train: int, num_val: int, image_size: tuple[int, ...], workers: int, knobs: SceneKnobs) -> None:
    """Raise one ValueError listing every bad argument."""
    problems = []
    if num_train < 0 or num_val < 0:
        problems.append(f"num_train={num_train}, num_val={num_val}: counts must be >= 0")
    if len(image_size) != 2 or min(image_size) < 32:
        problems.append(f"image_size={image_size}: give (W, H), each >= 32 px")
    if workers < 0:
        problems.append(f"workers={workers}: use 0 (in process) or a positive count")
    if knobs.max_people < 1:
        problems.append(f"max_people={knobs.max_people}: must be >= 1")
    lo, hi = knobs.person_height
    if not 0.05 <= lo <= hi <= 3:
        problems.append(
            f"person_height={knobs.person_height}: give (min, max) standing heights as fractions of the image "
            "height, 0.05 <= min <= max <= 3"
        )
    if knobs.clutter < 0 or not 0 <= knobs.occluders <= 1 or knobs.photometric < 0:
        problems.append("clutter and photometric must be >= 0 and occluders in [0, 1]")
    if problems:
        raise ValueError("sshpe synth: " + "; ".join(problems))


def generate(
    out_dir: Path,
    *,
    num_train: int,
    num_val: int,
    seed: int = 0,
    image_size: tuple[int, int] = (480, 360),
    workers: int = 0,
    progress: bool = True,
    clutter: float = 0.5,
    occluders: float = 0.2,
    max_people: int = 4,
    person_height: tuple[float, float] = (0.3, 1.0),
    photometric: float = 0.5,
) -> dict:
    """Write a synthetic COCO-format person-keypoint dataset.

    Layout: `images/{train,val}/{id:012d}.jpg`, `annotations/person_keypoints_{train,val}.json` (COCO keypoints
    format; each annotation also carries `facing`, `pose`, `extra_joints` (pelvis, thorax, upper_neck, head_top as
    [x, y, v]: the joints MPII/AIC label that COCO lacks) and `head_box` [x1, y1, x2, y2] (MPII's head rectangle)),
    `annotations/person_detections_val.json` (COCO
    detection results). Keypoints are the drawn joint centres in image px (pixel centres at integers). Images
    are written first, the JSON files last and atomically: they are the commit point. The same arguments give
    byte-identical files, for any `workers`.

    Args:
        out_dir: output directory (created; existing files with the same names are replaced).
        num_train: training images (ids 1..num_train).
        num_val: validation images (ids VAL_ID_OFFSET + 1 ...).
        seed: root seed; image i of a split is seeded by `SeedSequence(seed).spawn(2)[split].spawn(n)[i]`, so
            adding images never changes the earlier ones.
        image_size: (W, H) px.
        workers: processes rendering in parallel (0 = this process).
        progress: show a progress bar.
        clutter: background clutter density (shapes, lines, limb-like strokes); 0 = gradient and texture only.
        occluders: probability that an object (counter, crate, pole) stands in front of each person.
        max_people: people per image are drawn uniformly from 1..max_people; nearer ones overlap farther ones.
        person_height: (min, max) standing height as a fraction of the image height, drawn log-uniformly.
        photometric: strength of per-image brightness/contrast/blur/noise (0 = off).

    Returns:
        Summary: `images`, `persons`, `keypoints_labelled` (v>0) counts and `stats` (`sshpe.synth.stats.
        person_stats`) per split, `paths` written, `seconds` and `images_per_s`.
    """
    knobs = SceneKnobs(float(clutter), float(occluders), int(max_people), tuple(map(float, person_height)),
                       float(photometric))  # fmt: skip
    image_size = tuple(int(v) for v in image_size)
    _check_args(num_train, num_val, image_size, workers, knobs)
    out_dir = Path(out_dir)
    dirs = _prepare_dirs(out_dir)
    split_ss = dict(zip(SPLITS, np.random.SeedSequence(seed).spawn(2)))
    tasks = []
    for split, count in (("train", num_train), ("val", num_val)):
        offset = VAL_ID_OFFSET if split == "val" else 0
        for i, ss in enumerate(split_ss[split].spawn(count)):
            iid = offset + i + 1
            tasks.append((split, iid, ss, str(dirs[split] / f"{iid:012d}.jpg"), image_size, knobs))
    start = time.perf_counter()
    records = _run(tasks, workers, progress)
    seconds = time.perf_counter() - start
    info = {"description": "sshpe synthetic persons", "seed": seed, "image_size": list(image_size),
            "knobs": {k: getattr(knobs, k) for k in knobs.__dataclass_fields__}}  # fmt: skip
    summary = _write_annotations(records, dirs["annotations"], image_size, info)
    summary["paths"]["images"] = str(out_dir / "images")
    summary["seconds"] = seconds
    summary["images_per_s"] = len(tasks) / max(seconds, 1e-9)
    return summary
