"""The schema of what `sshpe shard` writes: pydantic models of `manifest.json` and of each sample's JSON record.

Validated with the same strictness as recipes (frozen, `extra="forbid"`, finite numbers), once where the files are
read; errors name the file (and the shard and sample key for a record), the field and the fix, with quoted values
cut short. Field meanings and frames are documented in shards/README.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sshpe.errors import quoted
from sshpe.schema import SchemaFile

MANIFEST_FORMAT = "sshpe-shards/1"
_SHA256 = r"^[0-9a-f]{64}$"
_NAME = r"^[A-Za-z0-9_]+$"
_MAX_PROBLEMS = 10


class ShardFormatError(ValueError):
    """A manifest or record that does not match the shard format; the message says where and what to do."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------------------------
# manifest.json
# ---------------------------------------------------------------------------------------------------------------


class ShardEntry(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_]+-[A-Za-z0-9_]+-\d{6}\.tar$", description="tar file name in the folder")
    count: int = Field(ge=1, description="samples in the tar")
    sha256: str = Field(pattern=_SHA256, description="sha256 of the tar's bytes")
    size: int | None = Field(None, ge=0, description="tar size in bytes (absent in manifests of older writers)")


class CanvasPixels(_Strict):
    total: int = Field(ge=0, description="pixels of all the split's canvases (what one epoch decodes)")
    mean: float = Field(ge=0, description="pixels per canvas, mean")
    median: float = Field(ge=0, description="pixels per canvas, median")
    max: int = Field(ge=0, description="pixels of the largest canvas")
    exact_crops: int = Field(ge=0, description="canvases that are the source's own pixels (not resampled)")


class SplitEntry(_Strict):
    count: int = Field(ge=1, description="samples in the split")
    shards: tuple[ShardEntry, ...] = Field(min_length=1, description="the split's tars in sample order")
    skipped: dict[str, int] = Field(
        default_factory=dict, description="invalid annotations/images skipped by --skip-invalid, by reason"
    )
    canvas_pixels: CanvasPixels | None = Field(
        None, description="canvas sizes (absent for writers before variable canvases: canvas_side square each)"
    )

    @model_validator(mode="after")
    def _counts_add_up(self) -> SplitEntry:
        total = sum(s.count for s in self.shards)
        if total != self.count:
            raise ValueError(f"count {self.count} but its shards hold {total} samples")
        return self


class SourceEntry(_Strict):
    path: str = Field(description="absolute path of the source file")
    relative: str | None = Field(None, description="its path relative to the shard folder (absent in older manifests)")
    sha256: str = Field(pattern=_SHA256, description="sha256 of the source file")


class Manifest(_Strict):
    format: Literal["sshpe-shards/1"] = Field(description="format tag")
    dataset: str = Field(pattern=_NAME, description="dataset name used in keys and file names")
    schema_: SchemaFile = Field(alias="schema", description="keypoint schema of the records (a schema file, in full)")
    input_size: tuple[int, int] = Field(description="model input (H, W) the canvases serve")
    aspect: float = Field(gt=0, description="W / H of the model input")
    canvas_side: int = Field(ge=1, description="largest canvas side in px (the densest view's)")
    max_scale: float = Field(gt=0)
    min_scale: float = Field(gt=0)
    padding: float = Field(gt=0)
    splits: dict[str, SplitEntry] = Field(description="split name -> its tars")
    sources: dict[str, SourceEntry] = Field(description="files the shards came from")

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, populate_by_name=True)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        h, w = self.input_size
        if h <= 0 or w <= 0 or abs(self.aspect - w / h) > 1e-6:
            raise ValueError(f"input_size {list(self.input_size)} and aspect {self.aspect} disagree")
        for split, entry in self.splits.items():
            if not re.match(_NAME, split):
                raise ValueError(f"split name {quoted(split)} may only use letters, digits and '_'")
            for s in entry.shards:
                if not s.name.startswith(f"{self.dataset}-{split}-"):
                    raise ValueError(f"splits.{split}: shard {s.name!r} is not named {self.dataset}-{split}-NNNNNN.tar")
        if "val" in self.splits and "val_annotations" not in self.sources:
            raise ValueError("a 'val' split needs sources.val_annotations (the GT file evaluation reads)")
        return self


def _problems(err: ValidationError) -> str:
    lines = []
    for e in err.errors(include_url=False)[:_MAX_PROBLEMS]:
        where = ".".join(str(p) for p in e["loc"]) or "<top>"
        msg = e["msg"].removeprefix("Value error, ")
        got = f" (got {quoted(e['input'])})" if e["type"] not in ("missing", "value_error") and "input" in e else ""
        lines.append(f"{where}: {msg}{got}")
    more = err.error_count() - len(lines)
    return "; ".join(lines) + (f"; and {more} more" if more > 0 else "")


def validate_manifest(raw: object, path: Path) -> dict:
    """Check a parsed manifest.json; returns it as a plain dict (defaults filled in).

    Raises:
        ShardFormatError: naming the file, every bad field (up to 10) and the fix.
    """
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as err:
        raise ShardFormatError(
            f"{path} is not a valid {MANIFEST_FORMAT} manifest: {_problems(err)}; run `sshpe shard` again"
        ) from None
    out = manifest.model_dump(mode="json", by_alias=True)
    out["schema"] = manifest.schema_.model_dump(mode="json", exclude_none=True)  # as `KeypointSchema.as_metadata`
    return out


# ---------------------------------------------------------------------------------------------------------------
# Sample records
# ---------------------------------------------------------------------------------------------------------------

_Row3 = tuple[float, float, float]


class SampleRecord(_Strict):
    key: str
    dataset: str
    split: str
    image_id: int
    ann_id: int
    file_name: str
    image_size: tuple[int, int]
    bbox: tuple[float, float, float, float]
    raw_bbox: tuple[float, float, float, float] | None = None  # the source's box before cleaning (older shards: absent)
    score: float
    center: tuple[float, float]
    scale: tuple[float, float]
    canvas_to_image: tuple[_Row3, _Row3]
    keypoints: tuple[_Row3, ...]
    num_keypoints: int = Field(ge=0)
    area: float
    hidden_keypoints: tuple[_Row3, ...] | None = None  # the unlabeled split's dropped GT (pseudo-label metrics only)

    @model_validator(mode="after")
    def _sane(self) -> SampleRecord:
        if min(self.scale) <= 0:
            raise ValueError(f"scale {list(self.scale)} must be positive")
        if any(v not in (0.0, 1.0, 2.0) for _x, _y, v in self.keypoints):
            raise ValueError("keypoint visibilities must be 0, 1 or 2")
        return self


def check_record(record: object, *, num_joints: int, shard: Path, key: str) -> None:
    """Check one decoded sample record against the format and the manifest's keypoint count.

    Raises:
        ShardFormatError: naming the shard, the sample key and the problem.
    """
    try:
        rec = SampleRecord.model_validate(record)
    except ValidationError as err:
        raise ShardFormatError(
            f"corrupt sample {key!r} in shard {shard}: bad record ({_problems(err)}); run `sshpe shard` again"
        ) from None
    for field, rows in (("keypoints", rec.keypoints), ("hidden_keypoints", rec.hidden_keypoints)):
        if rows is not None and len(rows) != num_joints:
            raise ShardFormatError(
                f"corrupt sample {key!r} in shard {shard}: {len(rows)} {field} but the manifest's schema has "
                f"{num_joints}; the shard does not belong to this manifest, run `sshpe shard` again"
            )
    if rec.key != key:
        raise ShardFormatError(f"corrupt sample {key!r} in shard {shard}: its record says key {quoted(rec.key)}")
