"""Keypoint schemas as data: names, flip pairs, OKS sigmas or PCKh settings, skeleton, joint weights and the
mapping into the reference's 24-joint union (DESIGN decision 7).

A schema is a YAML/JSON file (`sshpe/schemas/*.yaml` are the built-in coco17, mpii16, aic14 and union24), validated
strictly here; no other module branches on the dataset. The file format is documented in docs/keypoint-schemas.md.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

log = logging.getLogger(__name__)

BUILTIN_NAMES = ("coco17", "mpii16", "aic14", "union24")
UNION_NAME = "union24"
# OKS sigma given to every joint of a schema read from a COCO file's categories (no sigmas there): the mean of COCO's
# body-joint sigmas, rounded. OKS AP depends on it; write a schema file with real sigmas for published numbers.
DEFAULT_SIGMA = 0.07


# ---------------------------------------------------------------------------------------------------------------
# The resolved schema every other module uses
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PckhSpec:
    """How PCKh scores this keypoint set (reference §1.9).

    Attributes:
        head_size_factor: head size = factor x the head box diagonal (MPII: SC_BIAS 0.6).
        threshold: a joint is correct when its error / head size <= threshold (0.5 for PCKh@0.5).
        columns: table columns as (title, joint indices); a column is the unweighted mean of its joints' PCKh.
        mean_excludes: joints left out of the visible-count-weighted Mean (MPII: pelvis and thorax).
    """

    head_size_factor: float
    threshold: float
    columns: tuple[tuple[str, tuple[int, ...]], ...]
    mean_excludes: tuple[int, ...]


@dataclass(frozen=True)
class KeypointSchema:
    """One keypoint definition.

    Attributes:
        name: schema key used by recipes and manifests.
        names: joint names, in channel order.
        flip_pairs: 0-based (left, right) channel pairs swapped by a horizontal flip.
        sigmas: per-joint OKS sigmas (COCO convention: the values divided by 10 in the COCO paper).
        skeleton: 0-based limb pairs for drawing.
        joint_weights: per-joint loss weights (HRNet's `use_different_joints_weight`; 1 = off).
        union: for each joint the union24 channel it fills, -1 for none; empty when the schema has no mapping.
        pckh: PCKh settings, or None when the set is scored with OKS only.
    """

    name: str
    names: tuple[str, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    sigmas: tuple[float, ...]
    skeleton: tuple[tuple[int, int], ...]
    joint_weights: tuple[float, ...]
    union: tuple[int, ...] = field(default=())
    pckh: PckhSpec | None = None

    @property
    def num_joints(self) -> int:
        return len(self.names)

    def flip_index(self) -> list[int]:
        """Channel permutation that a horizontal flip applies: `hm_flipped = hm[:, flip_index()]`."""
        return flip_index_from_pairs(self.num_joints, self.flip_pairs)

    def as_metadata(self) -> dict:
        """The whole schema as JSON-ready data (a valid schema file); stored in manifests and model metadata."""
        meta: dict = {
            "name": self.name,
            "names": list(self.names),
            "flip_pairs": [list(p) for p in self.flip_pairs],
            "sigmas": list(self.sigmas),
            "skeleton": [list(p) for p in self.skeleton],
            "joint_weights": list(self.joint_weights),
        }
        if self.union:
            union_names = get_schema(UNION_NAME).names
            meta["union"] = [union_names[u] if u >= 0 else None for u in self.union]
        if self.pckh is not None:
            p = self.pckh
            meta["pckh"] = {
                "head_size_factor": p.head_size_factor,
                "threshold": p.threshold,
                "columns": {title: list(joints) for title, joints in p.columns},
                "mean_excludes": list(p.mean_excludes),
            }
        return meta


def flip_index_from_pairs(num_joints: int, flip_pairs) -> list[int]:
    """Channel permutation swapping every (left, right) pair; also used on schemas read from model metadata."""
    perm = list(range(num_joints))
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    return perm


_SIDE_WORDS = {"left": "left", "l": "left", "right": "right", "r": "right"}


def joint_sides(names: Sequence[str], flip_pairs: Iterable[Sequence[int]]) -> list[str]:
    """Per joint "left", "right" or "centre", for drawing: a side word in the name (`left_knee`, `r_ankle`) decides;
    a flip-paired joint without one takes "left" for the first of its pair and "right" for the second; joints in no
    pair and without a side word are "centre"."""
    sides = ["centre"] * len(names)
    for a, b in flip_pairs:
        sides[a], sides[b] = "left", "right"
    for i, name in enumerate(names):
        words = [_SIDE_WORDS[w] for w in re.split(r"[^a-z]+", name.lower()) if w in _SIDE_WORDS]
        if words:
            sides[i] = words[0]
    return sides


# ---------------------------------------------------------------------------------------------------------------
# The file format (validated once, here)
# ---------------------------------------------------------------------------------------------------------------

JointRef = Union[int, str]
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


class PckhFile(BaseModel):
    """The `pckh` section of a schema file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    head_size_factor: float = Field(0.6, gt=0, description="head size = factor x head-box diagonal (MPII: 0.6)")
    threshold: float = Field(0.5, gt=0, description="normalised error at or below which a joint is correct")
    columns: dict[str, tuple[JointRef, ...]] = Field(
        description="table column title -> joints (names or 0-based indices) averaged into it"
    )
    mean_excludes: tuple[JointRef, ...] = Field((), description="joints left out of the Mean (MPII: pelvis, thorax)")


class SchemaFile(BaseModel):
    """A keypoint schema file: joints are referred to by name or 0-based index."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="schema name stored in manifests and model metadata (letters, digits, _ . -)")
    names: tuple[str, ...] = Field(min_length=1, description="joint names in channel order")
    flip_pairs: tuple[tuple[JointRef, JointRef], ...] = Field((), description="(left, right) joints a flip swaps")
    sigmas: tuple[float, ...] | None = Field(
        None, description=f"per-joint OKS sigmas (COCO convention); default {DEFAULT_SIGMA} each, with a warning"
    )
    skeleton: tuple[tuple[JointRef, JointRef], ...] = Field((), description="limbs drawn by `sshpe predict`")
    joint_weights: tuple[float, ...] | None = Field(None, description="per-joint loss weights; default 1 each")
    union: tuple[str | None, ...] | None = Field(
        None, description="per joint, the union24 joint it fills (null: none); lets a union24 head train on it"
    )
    pckh: PckhFile | None = Field(None, description="PCKh settings (needs head boxes in the ground truth)")

    @model_validator(mode="after")
    def _consistent(self) -> SchemaFile:
        problems = []
        if not _NAME_RE.match(self.name):
            problems.append(f"name: {self.name!r} may only use letters, digits, '_', '.' and '-'")
        dup = sorted({n for n in self.names if self.names.count(n) > 1})
        if dup:
            problems.append(f"names: {dup} appear more than once")
        k = len(self.names)
        for fld in ("sigmas", "joint_weights", "union"):
            value = getattr(self, fld)
            if value is not None and len(value) != k:
                problems.append(f"{fld}: {len(value)} entries for {k} names")
        for fld in ("sigmas", "joint_weights"):
            if any(v <= 0 for v in getattr(self, fld) or ()):
                problems.append(f"{fld}: every value must be > 0")
        refs = [("flip_pairs", r) for p in self.flip_pairs for r in p]
        refs += [("skeleton", r) for p in self.skeleton for r in p]
        if self.pckh is not None:
            refs += [(f"pckh.columns.{t}", r) for t, js in self.pckh.columns.items() for r in js]
            refs += [("pckh.mean_excludes", r) for r in self.pckh.mean_excludes]
        for fld, ref in refs:
            if _index(ref, self.names) is None:
                problems.append(f"{fld}: {ref!r} is not a joint name or an index below {k}")
        flipped = [_index(r, self.names) for p in self.flip_pairs for r in p]
        if None not in flipped and len(set(flipped)) != len(flipped):
            problems.append("flip_pairs: a joint appears in more than one pair")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _index(ref: JointRef, names: tuple[str, ...]) -> int | None:
    if isinstance(ref, int):
        return ref if 0 <= ref < len(names) else None
    return names.index(ref) if ref in names else None


def _resolve(spec: SchemaFile, where: str) -> KeypointSchema:
    """A validated file -> the schema with indices; the union is resolved against the built-in union24."""
    k, idx = len(spec.names), lambda r: _index(r, spec.names)  # noqa: E731
    sigmas = spec.sigmas
    if sigmas is None:
        log.warning("%s: no sigmas given; using %s for every joint (OKS AP depends on it)", where, DEFAULT_SIGMA)
        sigmas = (DEFAULT_SIGMA,) * k
    union: tuple[int, ...] = ()
    if spec.union is not None:
        union_names = get_schema(UNION_NAME).names
        unknown = [u for u in spec.union if u is not None and u not in union_names]
        if unknown:
            raise ValueError(f"{where}: union: {unknown} are not union24 joints; choose from {list(union_names)}")
        union = tuple(union_names.index(u) if u is not None else -1 for u in spec.union)
    pckh = None
    if spec.pckh is not None:
        p = spec.pckh
        pckh = PckhSpec(
            head_size_factor=p.head_size_factor,
            threshold=p.threshold,
            columns=tuple((t, tuple(idx(r) for r in js)) for t, js in p.columns.items()),
            mean_excludes=tuple(idx(r) for r in p.mean_excludes),
        )
    return KeypointSchema(
        name=spec.name,
        names=tuple(spec.names),
        flip_pairs=tuple((idx(a), idx(b)) for a, b in spec.flip_pairs),
        sigmas=tuple(float(s) for s in sigmas),
        skeleton=tuple((idx(a), idx(b)) for a, b in spec.skeleton),
        joint_weights=tuple(float(w) for w in spec.joint_weights) if spec.joint_weights else (1.0,) * k,
        union=union,
        pckh=pckh,
    )


def _validate(raw: object, where: str) -> SchemaFile:
    """Validate raw file content; one line naming `where` and every bad field."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a keypoint schema is a mapping with `name`, `names`, ...; got {type(raw).__name__}")
    try:
        return SchemaFile.model_validate(raw)
    except ValidationError as err:
        parts = []
        for e in err.errors(include_url=False):
            loc = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        raise ValueError(f"{where}: " + "; ".join(parts) + " (format: docs/keypoint-schemas.md)") from None


def read_schema_file(path: Path | str) -> SchemaFile:
    """Parse and validate a YAML/JSON schema file; errors name the file and the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"keypoint schema file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {err}") from None
    return _validate(raw, str(path))


def load_schema_file(path: Path | str) -> KeypointSchema:
    """A schema file -> `KeypointSchema`."""
    return _resolve(read_schema_file(path), str(path))


@lru_cache(maxsize=None)
def _builtin(name: str) -> KeypointSchema:
    ref = resources.files("sshpe") / "schemas" / f"{name}.yaml"
    with resources.as_file(ref) as path:
        return load_schema_file(path)


def get_schema(spec: str | Path) -> KeypointSchema:
    """A built-in schema by name (coco17, mpii16, aic14, union24) or a schema file by path."""
    if str(spec) in BUILTIN_NAMES:
        return _builtin(str(spec))
    path = Path(spec)
    if not path.is_file():
        raise ValueError(
            f"unknown keypoint schema {str(spec)!r}: not a built-in ({', '.join(BUILTIN_NAMES)}) and no such file; "
            "pass a built-in name or the path of a schema file (docs/keypoint-schemas.md)"
        )
    return load_schema_file(path)


def schema_from_data(raw: dict, where: str) -> KeypointSchema:
    """Rebuild a schema from `as_metadata()` output (a manifest or model metadata) or an inline recipe mapping."""
    return _resolve(_validate(raw, where), where)


_CACHE: dict[str, KeypointSchema] = {}


def resolve_schema(value: str | SchemaFile) -> KeypointSchema:
    """A recipe's `model.schema` value (a built-in name or an already validated inline schema) -> the schema."""
    if isinstance(value, str):
        return get_schema(value)
    key = value.model_dump_json()
    if key not in _CACHE:
        _CACHE[key] = _resolve(value, f"model.schema ({value.name})")
    return _CACHE[key]


# ---------------------------------------------------------------------------------------------------------------
# Schemas from a COCO file's categories
# ---------------------------------------------------------------------------------------------------------------


def infer_flip_pairs(names: tuple[str, ...]) -> list[tuple[int, int]]:
    """(left, right) index pairs of names that differ only by the word left/right (left_eye/right_eye,
    LeftFin/RightFin); abbreviations such as l_eye/r_eye are not recognised (write a schema file for those)."""
    pairs = []
    for i, n in enumerate(names):
        for left, right in (("left", "right"), ("Left", "Right"), ("LEFT", "RIGHT")):
            if left in n:
                partner = n.replace(left, right)
                if partner in names:
                    pairs.append((i, names.index(partner)))
                break
    return pairs


def schema_from_coco_category(category: object, where: str) -> KeypointSchema:
    """The schema of a COCO keypoint file's `categories[0]`: its `keypoints` and 1-based `skeleton`, flip pairs from
    left/right names, sigmas `DEFAULT_SIGMA` (warned). A category naming exactly the COCO-17 joints is coco17."""
    if not isinstance(category, dict) or not isinstance(category.get("keypoints"), list) or not category["keypoints"]:
        raise ValueError(f"{where}: categories[0] has no `keypoints` list; pass --schema (docs/keypoint-schemas.md)")
    names = tuple(str(n) for n in category["keypoints"])
    coco = get_schema("coco17")
    if names == coco.names:
        return coco
    skeleton = category.get("skeleton") or []
    if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) for v in p) for p in skeleton):
        raise ValueError(f"{where}: categories[0].skeleton must be a list of [a, b] 1-based joint numbers")
    raw = {
        "name": re.sub(r"[^A-Za-z0-9_.-]", "_", str(category.get("name", "custom"))) or "custom",
        "names": list(names),
        "flip_pairs": infer_flip_pairs(names),
        "skeleton": [[a - 1, b - 1] for a, b in skeleton],
    }
    return _resolve(_validate(raw, f"{where} categories[0]"), f"{where} categories[0]")


# ---------------------------------------------------------------------------------------------------------------
# Between a dataset's joints and a model's channels
# ---------------------------------------------------------------------------------------------------------------


def joint_map(data: KeypointSchema, model: KeypointSchema) -> tuple[int, ...]:
    """For each model channel, the data joint that labels it (-1: none).

    Same joint names: identity (any order). A union24 model: through the data schema's `union` mapping (reference
    §1.1: COCO, MPII and AIC all train the 24-channel head; channels a dataset lacks are dummies).

    Raises:
        ValueError: no mapping exists, naming both schemas and the fix.
    """
    if set(data.names) == set(model.names):
        return tuple(data.names.index(n) for n in model.names)
    if model.names == get_schema(UNION_NAME).names and data.union:
        out = [-1] * model.num_joints
        for i, u in enumerate(data.union):
            if u >= 0:
                out[u] = i
        return tuple(out)
    raise ValueError(
        f"no joint mapping from the data's keypoint schema {data.name!r} ({data.num_joints} joints) to the model's "
        f"{model.name!r} ({model.num_joints}); use model.schema {data.name!r} (or its file), or union24 with a data "
        "schema that has a `union` mapping"
    )


def eval_channels(data: KeypointSchema, model: KeypointSchema) -> list[int]:
    """For each data joint (the evaluated ground truth's order), the model channel that predicts it.

    Raises:
        ValueError: a data joint has no model channel (it could not be scored).
    """
    jmap = joint_map(data, model)
    channels = [jmap.index(i) if i in jmap else -1 for i in range(data.num_joints)]
    missing = [data.names[i] for i, c in enumerate(channels) if c < 0]
    if missing:
        raise ValueError(
            f"model schema {model.name!r} has no channel for the evaluated joints {missing} of {data.name!r}"
        )
    return channels


COCO17 = get_schema("coco17")
MPII16 = get_schema("mpii16")
AIC14 = get_schema("aic14")
UNION24 = get_schema("union24")
SCHEMAS: dict[str, KeypointSchema] = {s.name: s for s in (COCO17, MPII16, AIC14, UNION24)}
COCO_NAMES = COCO17.names
COCO_SIGMAS = COCO17.sigmas
COCO_SKELETON = COCO17.skeleton
