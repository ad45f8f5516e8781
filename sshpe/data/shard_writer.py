"""WebDataset shards of person canvases and their manifest (DESIGN decision 1; layout in shards/README.md).

Owns the on-disk format: sample keys, the JSON record, shard naming, atomic and byte-reproducible writes, and
`manifest.json`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text
from webdataset import TarWriter

from sshpe import geometry
from sshpe.data.coco import Instance
from sshpe.portable_paths import candidates, first_existing, portable
from sshpe.schema import KeypointSchema

MANIFEST_FORMAT = "sshpe-shards/1"
MANIFEST_NAME = "manifest.json"
MAX_SCALE, MIN_SCALE, PADDING = 1.25, 0.75, 1.25
_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
_TMP_SUFFIX = ".partial"


# ---------------------------------------------------------------------------------------------------------------
# One sample
# ---------------------------------------------------------------------------------------------------------------


def _render_canvas(job: tuple[str, str, np.ndarray, int, int]) -> bytes:
    """Read one image, warp its canvas and JPEG-encode it (runs in pool workers).

    Args:
        job: (image path, what to call the box in errors, (2, 3) `img_to_canvas`, canvas side px, JPEG quality).

    Returns:
        A standard (colour-correct) JPEG of the (side, side) canvas.
    """
    path, label, img_to_canvas, side, quality = job
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} ({label}) does not exist; check images_dir and the file_name")
    img_bgr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img_bgr is None:
        raise ValueError(f"image {path} ({label}) could not be decoded; replace the file or drop the image")
    # Warping the BGR array and encoding it with OpenCV stores a normal JPEG: decoders give the right colours.
    canvas = cv2.warpAffine(
        img_bgr, img_to_canvas, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for {path} ({label})")
    return buf.tobytes()


def _invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of a (2, 3) float64 affine."""
    lin_inv = np.linalg.inv(m[:, :2])
    return np.concatenate([lin_inv, -lin_inv @ m[:, 2:]], axis=1)


def _canvas_keypoints(kpts_img: np.ndarray, img_to_canvas: np.ndarray) -> list[list[float]]:
    """(K, 3) image-px keypoints -> canvas px; joints with v = 0 stay (0, 0, 0) as in the COCO files."""
    out = np.zeros_like(kpts_img)
    vis = kpts_img[:, 2] > 0
    out[vis, :2] = kpts_img[vis, :2] @ img_to_canvas[:, :2].T + img_to_canvas[:, 2]
    out[:, 2] = kpts_img[:, 2]
    return [[float(v) for v in row] for row in out]


def _sample_index(instances: list[Instance]) -> list[int]:
    """The second number of each key: the annotation id, or a running index per image for detection boxes."""
    seen: dict[int, int] = {}
    out = []
    for inst in instances:
        if inst.ann_id >= 0:
            out.append(inst.ann_id)
        else:
            out.append(seen.get(inst.image_id, 0))
            seen[inst.image_id] = out[-1] + 1
    return out


def _record(inst: Instance, key: str, dataset: str, split: str, canvas_to_img: np.ndarray) -> dict:
    """The JSON record of one sample (field order and frames documented in shards/README.md)."""
    return {
        "key": key,
        "dataset": dataset,
        "split": split,
        "image_id": int(inst.image_id),
        "ann_id": int(inst.ann_id),
        "file_name": inst.file_name,
        "image_size": [int(inst.image_size[0]), int(inst.image_size[1])],
        "bbox": [float(v) for v in inst.bbox],
        "score": float(inst.score),
        "center": [float(v) for v in inst.center],
        "scale": [float(v) for v in inst.scale],
        "canvas_to_image": [[float(v) for v in row] for row in canvas_to_img],
        "keypoints": _canvas_keypoints(inst.keypoints, _invert_affine(canvas_to_img)),
        "num_keypoints": int(inst.num_keypoints),
        "area": float(inst.area),
    }


# ---------------------------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------------------------


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed or 0.0:.1f} samples/s")


@contextmanager
def _rendered(jobs: list[tuple], workers: int) -> Iterator[Iterator[bytes]]:
    """JPEG bytes of every job, in job order; a spawn Pool when workers > 0 (same bytes either way)."""
    if workers <= 0:
        yield map(_render_canvas, jobs)
        return
    chunk = max(1, min(32, len(jobs) // (4 * workers)))
    with multiprocessing.get_context("spawn").Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        yield pool.imap(_render_canvas, jobs, chunksize=chunk)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_name(value: str, what: str) -> None:
    if not _NAME_RE.match(value):
        raise ValueError(f"{what} {value!r} may only use letters, digits and '_' (it goes into keys and file names)")


def write_shards(
    instances: list[Instance],
    out_dir: Path,
    *,
    dataset: str,
    split: str,
    input_hw: tuple[int, int],
    canvas: int | None = None,
    shard_size: int = 1000,
    jpeg_quality: int = 95,
    workers: int = 0,
    progress: bool = True,
) -> dict:
    """Write the canvases of `instances` as `{out_dir}/{dataset}-{split}-{000000}.tar`, atomically.

    Every tar is written under a temporary name and renamed once all are complete; on any error the temporary
    files are removed and existing files stay untouched. Output bytes depend only on the inputs (mtime 0, instance
    order), not on `workers`. Older shards of this split beyond the new count are removed after success.

    Args:
        instances: the split's person boxes, in the order they are stored.
        out_dir: shard directory (created if needed).
        dataset: dataset name used in keys and file names.
        split: split name ("train", "val", "unlabeled", ...).
        input_hw: model input (H, W) the canvases serve.
        canvas: canvas side in px; default `geometry.canvas_side(input_hw)`.
        shard_size: samples per tar.
        jpeg_quality: JPEG quality of the canvases.
        workers: decode/warp/encode processes (0: in this process).
        progress: show a rich progress bar.

    Returns:
        The split's manifest entry `{"count", "shards": [{"name", "count", "sha256"}]}` for `write_manifest`.
    """
    _check_name(dataset, "dataset name")
    _check_name(split, "split name")
    if not instances:
        raise ValueError(f"no instances to write for split {split!r}")
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    side = int(canvas) if canvas is not None else geometry.canvas_side(input_hw)
    out_dir = Path(out_dir)
    _check_compatible(out_dir, dataset=dataset, input_hw=input_hw, canvas=side)
    out_dir.mkdir(parents=True, exist_ok=True)

    c2i = [geometry.canvas_to_image_matrix(inst.center, inst.scale, side, MAX_SCALE) for inst in instances]
    jobs = [
        (str(inst.image_path), _describe(inst), _invert_affine(m), side, jpeg_quality)
        for inst, m in zip(instances, c2i)
    ]
    keys = [f"{dataset}_{inst.image_id:012d}_{idx:012d}" for inst, idx in zip(instances, _sample_index(instances))]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate sample keys in split {split!r}: the instances repeat an (image_id, ann_id)")
    n_shards = (len(instances) + shard_size - 1) // shard_size
    names = [f"{dataset}-{split}-{i:06d}.tar" for i in range(n_shards)]
    temps = [out_dir / f".{name}{_TMP_SUFFIX}" for name in names]
    entries = []
    columns = (TextColumn(f"shard {dataset}/{split}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
               TimeElapsedColumn())  # fmt: skip
    try:
        with Progress(*columns, disable=not progress) as bar, _rendered(jobs, workers) as jpgs:
            task = bar.add_task("shard", total=len(instances))
            for s, (name, tmp) in enumerate(zip(names, temps)):
                lo, hi = s * shard_size, min(len(instances), (s + 1) * shard_size)
                with tmp.open("wb") as f, TarWriter(f, encoder=False, mtime=0) as tar:
                    for i in range(lo, hi):
                        record = _record(instances[i], keys[i], dataset, split, c2i[i])
                        tar.write({"__key__": keys[i], "jpg": next(jpgs), "json": json.dumps(record).encode()})
                        bar.advance(task)
                entries.append({"name": name, "count": hi - lo, "sha256": _sha256(tmp)})
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    for name, tmp in zip(names, temps):
        os.replace(tmp, out_dir / name)
    for old in out_dir.glob(f"{dataset}-{split}-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        if old.name not in names:
            old.unlink()
    return {"count": len(instances), "shards": entries}


def _describe(inst: Instance) -> str:
    if inst.ann_id >= 0:
        return f"annotation id {inst.ann_id}"
    return f"detection box of image id {inst.image_id}"


# ---------------------------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------------------------


def read_manifest(shard_dir: Path) -> dict:
    """Load `{shard_dir}/manifest.json`; errors say to run `sshpe shard` first."""
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `sshpe shard` first to write shards into {shard_dir}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); run `sshpe shard` again") from err
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not an {MANIFEST_FORMAT} manifest; run `sshpe shard` again")
    return manifest


def source_candidates(manifest: dict, shard_dir: Path, name: str) -> list[Path]:
    """Where the manifest's source file `name` may be now: its absolute path, then its path relative to the shard
    folder (manifests written before relative paths were stored have only the first)."""
    if name not in manifest["sources"]:
        raise ValueError(
            f"{Path(shard_dir) / MANIFEST_NAME} has no sources.{name} (has {sorted(manifest['sources'])}); "
            "re-run `sshpe shard` with the annotation file"
        )
    return candidates(manifest["sources"][name], shard_dir)


def source_file(manifest: dict, shard_dir: Path, name: str) -> Path:
    """The manifest's source file `name` (e.g. `val_annotations`), found absolute first, then relative to the shard
    folder; the error names both."""
    return first_existing(
        source_candidates(manifest, shard_dir, name), f"{Path(shard_dir) / MANIFEST_NAME}: sources.{name}",
        "move the file back, move it together with the shard folder, or re-run `sshpe shard`",
    )  # fmt: skip


def _check_compatible(out_dir: Path, *, dataset: str, input_hw: tuple[int, int], canvas: int) -> None:
    """Refuse to mix splits of different datasets or canvas geometry in one directory."""
    if not (Path(out_dir) / MANIFEST_NAME).is_file():
        return
    old = read_manifest(out_dir)
    new = {"dataset": dataset, "input_size": [int(input_hw[0]), int(input_hw[1])], "canvas_side": int(canvas)}
    for field, value in new.items():
        if old[field] != value:
            raise ValueError(
                f"{Path(out_dir) / MANIFEST_NAME} has {field}={old[field]!r} but this write has {value!r}; "
                "write to a fresh directory or delete the old shards and manifest"
            )


def write_manifest(
    out_dir: Path,
    *,
    dataset: str,
    schema: KeypointSchema,
    input_hw: tuple[int, int],
    canvas: int,
    splits: dict[str, dict],
    sources: dict[str, Path],
) -> Path:
    """Write (or merge into) `{out_dir}/manifest.json` atomically.

    Splits and sources already in a compatible manifest are kept unless given again, so splits can be written
    one at a time. A `val` split requires a `val_annotations` source (evaluation reads it).

    Args:
        out_dir: the shard directory.
        dataset: dataset name (as in `write_shards`).
        schema: keypoint schema of the records' keypoints.
        input_hw: model input (H, W).
        canvas: canvas side in px.
        splits: split name -> the entry `write_shards` returned.
        sources: name -> file the shards came from (annotation, detection files); stored with its absolute path,
            its path relative to `out_dir` (found again when both move together, `source_file`) and sha256.

    Returns:
        The manifest path.
    """
    out_dir = Path(out_dir)
    path = out_dir / MANIFEST_NAME
    _check_compatible(out_dir, dataset=dataset, input_hw=input_hw, canvas=canvas)
    old = read_manifest(out_dir) if path.is_file() else {"splits": {}, "sources": {}, "schema": schema.as_metadata()}
    if old["schema"] != schema.as_metadata():
        raise ValueError(f"{path} holds schema {old['schema']['name']!r}, not {schema.name!r}; use a fresh directory")
    new_sources = {}
    for name, src in sources.items():
        src = Path(src).resolve()
        if not src.is_file():
            raise FileNotFoundError(f"source {name!r}: {src} does not exist")
        new_sources[name] = portable(src, out_dir) | {"sha256": _sha256(src)}
    h, w = int(input_hw[0]), int(input_hw[1])
    manifest = {
        "format": MANIFEST_FORMAT,
        "dataset": dataset,
        "schema": schema.as_metadata(),
        "input_size": [h, w],
        "aspect": w / h,
        "canvas_side": int(canvas),
        "max_scale": MAX_SCALE,
        "min_scale": MIN_SCALE,
        "padding": PADDING,
        "splits": {**old["splits"], **splits},
        "sources": {**old["sources"], **new_sources},
    }
    if "val" in manifest["splits"] and "val_annotations" not in manifest["sources"]:
        raise ValueError(f"{path}: a 'val' split needs sources['val_annotations'] (the GT file evaluation reads)")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{MANIFEST_NAME}{_TMP_SUFFIX}"
    try:
        tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
