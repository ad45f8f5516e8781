"""WebDataset shards of person canvases and their manifest (DESIGN decision 1; layout in shards/README.md).

Owns the on-disk format: sample keys, the JSON record, shard naming, byte-reproducible tars and `manifest.json`.
Whole folders are written as one transaction by `sshpe.data.shard_folder`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text
from webdataset import TarWriter

from sshpe import geometry
from sshpe.data.locations import ShardLocation, remote_source, shard_location
from sshpe.data.readers.coco import Instance, Invalid
from sshpe.data.shard_format import MANIFEST_FORMAT, ShardFormatError, validate_manifest
from sshpe.parallel import ordered_map
from sshpe.portable_paths import candidates, first_existing, portable
from sshpe.schema import KeypointSchema

MANIFEST_NAME = "manifest.json"
MAX_SCALE, MIN_SCALE, PADDING = 1.25, 0.75, 1.25
_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class InvalidImage(ValueError):
    """An image that cannot become a canvas (missing, truncated, undecodable); the message names it."""


# ---------------------------------------------------------------------------------------------------------------
# One sample
# ---------------------------------------------------------------------------------------------------------------


def _truncation(data: bytes) -> str | None:
    """Why an encoded image ends early, or None: a JPEG whose last scan has no end-of-image marker after it (what
    libjpeg only warns about as "Premature end of JPEG file"), or a PNG without its IEND chunk."""
    if data[:2] == b"\xff\xd8":
        if data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):  # 0xFF is byte-stuffed inside scans
            return "truncated: the JPEG ends before its end-of-image marker"
    elif data[:8] == _PNG_MAGIC and b"IEND" not in data[-16:]:
        return "truncated: the PNG has no IEND chunk"
    return None


def _render_canvas(job: tuple[str, str, geometry.CanvasFrame, int]) -> bytes | Invalid:
    """Read one image, cut or warp its canvas and JPEG-encode it (runs in pool workers).

    Args:
        job: (image path, what to call the box in errors, the canvas frame (`geometry.canvas_frame`), JPEG quality).

    Returns:
        A standard (colour-correct) JPEG of the canvas, or why the image cannot be used.
    """
    path, label, frame, quality = job
    try:
        data = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return Invalid("missing_image", f"image {path} ({label}) does not exist; check images_dir and the file_name")
    problem = _truncation(data)
    if problem is not None:
        return Invalid("truncated_image", f"image {path} ({label}) is {problem}; replace the file or drop the image")
    img_bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img_bgr is None:
        return Invalid("undecodable_image", f"image {path} ({label}) could not be decoded; replace the file or drop "
                                            "the image")  # fmt: skip
    # Cutting or warping the BGR array and encoding it with OpenCV stores a normal JPEG: decoders give the right
    # colours.
    h, w = frame.hw
    if frame.exact:
        canvas = _cut(img_bgr, int(frame.canvas_to_image[0, 2]), int(frame.canvas_to_image[1, 2]), h, w)
    else:
        canvas = cv2.warpAffine(img_bgr, _invert_affine(frame.canvas_to_image), (w, h), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)  # fmt: skip
    ok, buf = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"JPEG encoding failed for {path} ({label})")
    return buf.tobytes()


def _cut(img: np.ndarray, x0: int, y0: int, h: int, w: int) -> np.ndarray:
    """The (h, w) window of `img` at column x0, row y0; pixels outside the image are 0 (an image smaller than its
    annotation says reads as the warp of the whole image would)."""
    window = img[y0 : y0 + h, x0 : x0 + w]
    if window.shape[:2] == (h, w):
        return np.ascontiguousarray(window)
    out = np.zeros((h, w, img.shape[2]), img.dtype)
    out[: window.shape[0], : window.shape[1]] = window
    return out


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
    record = {
        "key": key,
        "dataset": dataset,
        "split": split,
        "image_id": int(inst.image_id),
        "ann_id": int(inst.ann_id),
        "file_name": inst.file_name,
        "image_size": [int(inst.image_size[0]), int(inst.image_size[1])],
        "bbox": [float(v) for v in inst.bbox],
        "raw_bbox": [float(v) for v in (inst.raw_bbox or inst.bbox)],
        "score": float(inst.score),
        "center": [float(v) for v in inst.center],
        "scale": [float(v) for v in inst.scale],
        "canvas_to_image": [[float(v) for v in row] for row in canvas_to_img],
        "keypoints": _canvas_keypoints(inst.keypoints, _invert_affine(canvas_to_img)),
        "num_keypoints": int(inst.num_keypoints),
        "area": float(inst.area),
    }
    if inst.hidden_keypoints is not None:  # read by pseudo-label metrics only, never by training
        record["hidden_keypoints"] = _canvas_keypoints(inst.hidden_keypoints, _invert_affine(canvas_to_img))
    return record


# ---------------------------------------------------------------------------------------------------------------
# One split
# ---------------------------------------------------------------------------------------------------------------


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed or 0.0:.1f} samples/s")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_name(value: str, what: str) -> None:
    """Dataset and split names go into keys and file names: letters, digits and '_' only."""
    if not _NAME_RE.match(value):
        raise ValueError(f"{what} {value!r} may only use letters, digits and '_' (it goes into keys and file names)")


def _describe(inst: Instance) -> str:
    if inst.ann_id >= 0:
        return f"annotation id {inst.ann_id}"
    return f"detection box of image id {inst.image_id}"


def write_split(
    instances: list[Instance],
    folder: Path,
    *,
    dataset: str,
    split: str,
    canvas: int,
    shard_size: int = 1000,
    jpeg_quality: int = 95,
    workers: int = 0,
    skip_invalid: bool = False,
    progress: bool = True,
) -> dict:
    """Write the canvases of `instances` as `{folder}/{dataset}-{split}-{000000}.tar`.

    `folder` is a private staging folder (`sshpe.data.shard_folder` commits it); nothing here is atomic on its
    own. Output bytes depend only on the inputs (mtime 0, instance order), not on `workers`.

    Args:
        instances: the split's person boxes, in the order they are stored.
        folder: where the tars go (created if needed).
        dataset: dataset name used in keys and file names.
        split: split name ("labeled", "val", "unlabeled", ...).
        canvas: the largest canvas side in px (`geometry.canvas_side` of the model input); each canvas is the
            person's reachable square cut to its image, at this density or the source's, whichever is lower
            (`geometry.canvas_frame`).
        shard_size: samples per tar.
        jpeg_quality: JPEG quality of the canvases.
        workers: decode/warp/encode processes (0: in this process).
        skip_invalid: skip missing, truncated or undecodable images (counted by reason) instead of raising.
        progress: show a rich progress bar.

    Returns:
        The split's manifest entry `{"count", "shards": [{"name", "count", "sha256", "size"}], "skipped",
        "canvas_pixels": {"total", "mean", "median", "max", "exact_crops"}}`.

    Raises:
        InvalidImage: an image cannot be used (without `skip_invalid`); it names the file and the annotation.
    """
    check_name(dataset, "dataset name")
    check_name(split, "split name")
    if not instances:
        raise ValueError(f"no instances to write for split {split!r}")
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    frames = [geometry.canvas_frame(i.center, i.scale, i.image_size, canvas, MAX_SCALE) for i in instances]
    jobs = [(str(i.image_path), _describe(i), f, jpeg_quality) for i, f in zip(instances, frames)]
    keys = [f"{dataset}_{inst.image_id:012d}_{idx:012d}" for inst, idx in zip(instances, _sample_index(instances))]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate sample keys in split {split!r}: the instances repeat an (image_id, ann_id)")
    tars = _TarSequence(folder, dataset, split, shard_size)
    stats = _CanvasStats()
    skipped: dict[str, int] = {}
    columns = (TextColumn(f"shard {dataset}/{split}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
               TimeElapsedColumn())  # fmt: skip
    chunk = max(1, min(32, len(jobs) // (4 * max(workers, 1))))
    with (
        Progress(*columns, disable=not progress) as bar,
        ordered_map(_render_canvas, jobs, workers=workers, what=f"sshpe shard {split}", chunksize=chunk,
                    initializer=cv2.setNumThreads, initargs=(1,)) as jpgs,
    ):  # fmt: skip
        task = bar.add_task("shard", total=len(instances))
        try:
            for i, jpg in enumerate(jpgs):
                bar.advance(task)
                if isinstance(jpg, Invalid):
                    if not skip_invalid:
                        raise InvalidImage(f"{jpg.message} (or pass --skip-invalid to skip such images)")
                    skipped[jpg.reason] = skipped.get(jpg.reason, 0) + 1
                    continue
                record = _record(instances[i], keys[i], dataset, split, frames[i].canvas_to_image)
                tars.add({"__key__": keys[i], "jpg": jpg, "json": json.dumps(record).encode()})
                stats.add(frames[i])
        except BaseException:
            tars.abandon()
            raise
    entries = tars.close()
    if not entries:
        raise InvalidImage(f"split {split!r}: every image was skipped as invalid ({skipped}); nothing to write")
    return {"count": sum(e["count"] for e in entries), "shards": entries, "skipped": skipped,
            "canvas_pixels": stats.summary()}  # fmt: skip


class _CanvasStats:
    """Pixel counts of a split's canvases, for the manifest (how much each epoch decodes)."""

    def __init__(self) -> None:
        self.pixels: list[int] = []
        self.exact = 0

    def add(self, frame: geometry.CanvasFrame) -> None:
        self.pixels.append(frame.hw[0] * frame.hw[1])
        self.exact += frame.exact

    def summary(self) -> dict:
        px = np.asarray(self.pixels, dtype=np.int64)
        return {"total": int(px.sum()), "mean": float(px.mean()), "median": float(np.median(px)),
                "max": int(px.max()), "exact_crops": self.exact}  # fmt: skip


class _TarSequence:
    """Numbered tars of `shard_size` samples each, opened as samples arrive (so skipped samples leave no gaps)."""

    def __init__(self, folder: Path, dataset: str, split: str, shard_size: int) -> None:
        self.folder, self.prefix, self.shard_size = folder, f"{dataset}-{split}-", shard_size
        self.entries: list[dict] = []
        self.file = self.tar = None
        self.count = 0

    def add(self, sample: dict) -> None:
        if self.tar is None:
            self.path = self.folder / f"{self.prefix}{len(self.entries):06d}.tar"
            self.file = self.path.open("wb")
            self.tar = TarWriter(self.file, encoder=False, mtime=0)
        self.tar.write(sample)
        self.count += 1
        if self.count == self.shard_size:
            self._finish()

    def _finish(self) -> None:
        self.tar.close()
        self.file.close()
        size = self.path.stat().st_size
        self.entries.append({"name": self.path.name, "count": self.count, "sha256": sha256_file(self.path),
                             "size": size})  # fmt: skip
        self.file = self.tar = None
        self.count = 0

    def close(self) -> list[dict]:
        if self.tar is not None:
            self._finish()
        return self.entries

    def abandon(self) -> None:
        """Close an unfinished tar after an error (the staging folder holding it is removed by the caller)."""
        if self.tar is not None:
            self.tar.close()
            self.file.close()


# ---------------------------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------------------------


def read_manifest(shard_dir: str | Path | ShardLocation) -> dict:
    """Load and validate `{shard_dir}/manifest.json` (`sshpe.data.shard_format.Manifest`) from a local folder or a
    remote base (`sshpe.data.locations`); errors name the file or URL, the field and the fix (run `sshpe shard`)."""
    location = shard_location(shard_dir)
    path = location.where(MANIFEST_NAME)
    if not location.is_remote and not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist; run `sshpe shard` first to write shards into {shard_dir}")
    try:
        raw = json.loads(location.read_bytes(MANIFEST_NAME).decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardFormatError(f"{path} is not valid JSON ({err}); run `sshpe shard` again") from None
    except RecursionError:
        raise ShardFormatError(f"{path} nests too deeply to be a manifest; run `sshpe shard` again") from None
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise ShardFormatError(f"{path} is not an {MANIFEST_FORMAT} manifest; run `sshpe shard` again")
    return validate_manifest(raw, path)


def source_candidates(manifest: dict, shard_dir: Path, name: str) -> list[Path]:
    """Where the manifest's source file `name` may be now: its absolute path, then its path relative to the shard
    folder (manifests written before relative paths were stored have only the first)."""
    if name not in manifest["sources"]:
        raise ValueError(
            f"{shard_location(shard_dir).where(MANIFEST_NAME)} has no sources.{name} (has "
            f"{sorted(manifest['sources'])}); re-run `sshpe shard` with the annotation file"
        )
    return candidates(manifest["sources"][name], shard_dir)


def source_file(manifest: dict, shard_dir: str | Path | ShardLocation, name: str) -> Path:
    """The manifest's source file `name` (e.g. `val_annotations`), found absolute first, then relative to the shard
    folder; the error names both. Under a remote base (a URL) the relative one is fetched into a local cache
    (`sshpe.data.locations.remote_source`)."""
    location = shard_location(shard_dir)
    if location.is_remote and name in manifest["sources"]:
        return remote_source(location, manifest["sources"][name], f"sources.{name}")
    return first_existing(
        source_candidates(manifest, shard_dir, name), f"{Path(shard_dir) / MANIFEST_NAME}: sources.{name}",
        "move the file back, move it together with the shard folder, or re-run `sshpe shard`",
    )  # fmt: skip


def check_compatible(old: dict, path: Path, *, dataset: str, input_hw: tuple[int, int], canvas: int,
                     schema: KeypointSchema) -> None:  # fmt: skip
    """Refuse to mix splits of different datasets, canvas geometry or keypoint schemas in one folder."""
    new = {"dataset": dataset, "input_size": [int(input_hw[0]), int(input_hw[1])], "canvas_side": int(canvas)}
    for field, value in new.items():
        if old[field] != value:
            raise ValueError(
                f"{path} has {field}={old[field]!r} but this write has {value!r}; "
                "write to a fresh directory or delete the old shards and manifest"
            )
    if old["schema"] != schema.as_metadata():
        raise ValueError(f"{path} holds schema {old['schema']['name']!r}, not {schema.name!r}; use a fresh directory")


def manifest_dict(
    *,
    dataset: str,
    schema: KeypointSchema,
    input_hw: tuple[int, int],
    canvas: int,
    splits: dict[str, dict],
    sources: dict[str, dict],
) -> dict:
    """The manifest of a folder holding `splits` (entries from `write_split`) made from `sources` ({name: {path,
    relative, sha256}}, `source_entry`); validated like a manifest that is read."""
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
        "splits": splits,
        "sources": sources,
    }
    if "val" in splits and "val_annotations" not in sources:
        raise ValueError("a 'val' split needs sources['val_annotations'] (the GT file evaluation reads)")
    return validate_manifest(manifest, Path(MANIFEST_NAME))


def source_entry(name: str, path: Path, shard_dir: Path) -> dict:
    """{path, relative, sha256} of one source file: its absolute path and its path relative to the shard folder
    (found again when both move together, `source_file`)."""
    src = Path(path).resolve()
    if not src.is_file():
        raise FileNotFoundError(f"source {name!r}: {src} does not exist")
    return portable(src, shard_dir) | {"sha256": sha256_file(src)}


def write_manifest(folder: Path, manifest: dict) -> Path:
    """Write `manifest` as `{folder}/manifest.json` (folder: a staging folder; the commit makes it durable)."""
    path = Path(folder) / MANIFEST_NAME
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path
