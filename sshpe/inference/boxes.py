"""Person boxes for `sshpe predict --boxes`: COCO detection results (`image_id`, `bbox`, `score`) named through an
image-info file, or `{file_name, bbox, score}` lists; every entry validated, then matched to the input images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sshpe.data.readers.coco import PERSON_CATEGORY, read_json


@dataclass(frozen=True)
class PersonBox:
    """One person box: `bbox` (x, y, w, h) in image px, the detector's `score`, and `entry`, its index in the file."""

    bbox: tuple[float, float, float, float]
    score: float
    entry: int


@dataclass
class BoxFile:
    """The boxes of a `--boxes` file.

    Attributes:
        path: the file read.
        by_name: file name ('/'-separated, as written in the file or the image-info file) -> the boxes kept for it.
            Every image the file knows is a key, also when none of its boxes was kept (a COCO image-info image
            without detections, or boxes all below the score threshold).
        image_ids: file name -> COCO image id (for COCO detection results).
        notes: one line per kind of box left out (degenerate, other categories, below the score threshold).
    """

    path: Path
    by_name: dict[str, list[PersonBox]] = field(default_factory=dict)
    image_ids: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _normal_name(name: str) -> str:
    """A file name as '/'-separated components without `.` parts (`./a\\b.jpg` -> `a/b.jpg`)."""
    return str(PurePosixPath(name.replace("\\", "/")))


def _image_names(image_info: Path) -> dict[int, str]:
    """COCO image id -> file name from any COCO file with an `images` array."""
    data = read_json(image_info, "image-info file")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{image_info}: no 'images' array; pass a COCO file with images (person_keypoints_*.json)")
    names = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("id"), int) or not isinstance(img.get("file_name"), str):
            raise ValueError(f"{image_info}: images[{i}] needs an integer 'id' and a string 'file_name'")
        names[img["id"]] = _normal_name(img["file_name"])
    return names


def read_boxes(path: Path, image_info: Path | None = None, score_thr: float = 0.0) -> BoxFile:
    """Read and validate a boxes file.

    Each entry is a JSON object with `bbox` [x, y, w, h] (image px) and either `file_name` (relative to nothing:
    matched against the end of the input paths) or `image_id` (named through `image_info`'s `images`); `score`
    defaults to 1 and `category_id`, when present, must be the person category (1) for the box to be used.

    Args:
        path: the boxes JSON (a list).
        image_info: COCO file with `images` (id, file_name); required when entries use `image_id`.
        score_thr: boxes scored below it are left out.

    Raises:
        ValueError: naming the file and the entry index, for an entry that is not an object, lacks `bbox` or both
            `file_name` and `image_id`, has a malformed bbox or score, or an `image_id` the image-info file lacks.
    """
    path = Path(path)
    entries = read_json(path, "boxes file")
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of {{file_name or image_id, bbox, score}} entries")
    names = _image_names(Path(image_info)) if image_info is not None else None
    out = BoxFile(path, {} if names is None else {n: [] for n in names.values()})
    if names is not None:
        out.image_ids = {n: i for i, n in names.items()}
    degenerate, other_category, low = [], 0, 0
    for i, e in enumerate(entries):
        where = f"{path}: entry [{i}]"
        if not isinstance(e, dict):
            raise ValueError(f"{where} is a {type(e).__name__}, expected an object with file_name/image_id and bbox")
        if "bbox" not in e:
            raise ValueError(f"{where} has no 'bbox'; every entry needs bbox [x, y, w, h] in image px")
        bbox = e["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
            raise ValueError(f"{where} has bbox {str(bbox)[:80]}; expected [x, y, w, h], four finite numbers")
        if "score" in e and not _number(e["score"]):
            raise ValueError(f"{where} has score {str(e['score'])[:40]}; expected a finite number")
        if "file_name" in e:
            if not isinstance(e["file_name"], str) or not e["file_name"].strip():
                raise ValueError(f"{where} has file_name {str(e['file_name'])[:80]!r}; expected the image's file name")
            name = _normal_name(e["file_name"])
        elif "image_id" in e:
            if names is None:
                raise ValueError(
                    f"{where} names its image by image_id only; pass --image-info with a COCO file whose `images` "
                    "give the file names (e.g. annotations/person_keypoints_val2017.json)"
                )
            if e["image_id"] not in names:
                raise ValueError(f"{where} has image_id {str(e['image_id'])[:40]}, which {image_info} does not list")
            name = names[e["image_id"]]
        else:
            raise ValueError(f"{where} has neither 'file_name' nor 'image_id'; every entry needs one of them")
        boxes = out.by_name.setdefault(name, [])
        score = float(e["score"]) if "score" in e else 1.0
        if "category_id" in e and e["category_id"] != PERSON_CATEGORY:
            other_category += 1
        elif not (bbox[2] > 0 and bbox[3] > 0):
            degenerate.append(i)
        elif score < score_thr:
            low += 1
        else:
            boxes.append(PersonBox(tuple(float(v) for v in bbox), score, i))
    if degenerate:
        out.notes.append(
            f"{path}: skipped {len(degenerate)} degenerate box(es) (width or height <= 0), entries {degenerate[:5]}"
            + (" ..." if len(degenerate) > 5 else "")
        )
    if other_category:
        out.notes.append(f"{path}: skipped {other_category} box(es) whose category_id is not person (1)")
    if low:
        out.notes.append(f"{path}: skipped {low} box(es) scored below --score-thr {score_thr}")
    return out


def match_images(images: list[Path], names: list[str], boxes_file: Path) -> dict[Path, str | None]:
    """The boxes-file name of each input image: the longest name whose path components end the image's path
    (`000001.jpg` and `val/000001.jpg` both match `data/val/000001.jpg`); None when no name matches.

    Raises:
        ValueError: when one name matches two inputs (`same.jpg` in two folders); the fix is a name with more
            folders.
    """
    by_base: dict[str, list[tuple[str, ...]]] = {}
    for name in names:
        parts = PurePosixPath(name).parts
        if parts:
            by_base.setdefault(parts[-1], []).append(parts)
    found: dict[Path, str | None] = {}
    owner: dict[tuple[str, ...], Path] = {}
    for img in images:
        parts = img.resolve().parts
        hits = [k for k in by_base.get(img.name, []) if len(k) <= len(parts) and parts[-len(k) :] == k]
        best = max(hits, key=len) if hits else None
        if best is not None and best in owner:
            raise ValueError(
                f"{boxes_file}: file name {'/'.join(best)!r} matches two inputs, {owner[best]} and {img}; write the "
                "file names with enough of their folders to tell them apart (e.g. 'a/same.jpg')"
            )
        if best is not None:
            owner[best] = img
        found[img] = str(PurePosixPath(*best)) if best is not None else None
    return found
