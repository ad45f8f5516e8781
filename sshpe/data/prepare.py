"""`sshpe shard`: find a dataset's files and write its labeled, unlabeled and val splits.

Layouts recognised: the synthetic dataset of `sshpe synth` (`images/{train,val}/`, `annotations/person_keypoints_
{train,val}.json`, `annotations/person_detections_val.json`), COCO 2017 (`{train,val}2017/`,
`annotations/person_keypoints_{train,val}2017.json`), MPII in HRNet's layout (`annot/{train,valid}.json`,
`annot/gt_valid.mat`, `images/`) and AI Challenger (`[train/]keypoint_train_annotation.json`, `[train/]images/`).
Any other COCO-format data works through explicit paths.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from sshpe.data.readers.aic import load_aic
from sshpe.data.readers.coco import Instance, InstanceKind, load_instances, read_json
from sshpe.data.readers.mpii import load_mpii, read_pckh_gt
from sshpe.data.shard_folder import FolderResult, write_shard_folder
from sshpe.recipe import check_input_size
from sshpe.schema import KeypointSchema, get_schema, schema_from_coco_category

DatasetFormat = Literal["coco", "mpii", "aic"]


@dataclass(frozen=True)
class SourceFiles:
    """Where a dataset's annotation files and images are, and in which format.

    `val_pckh` is MPII's PCKh ground truth (`gt_valid.mat`); `unlabeled_source` is another dataset whose train
    person boxes become the unlabeled split with their labels dropped (the MPII + AIC protocol, reference §1.2).
    """

    train_ann: Path
    train_images: Path
    val_ann: Path | None = None
    val_images: Path | None = None
    val_dets: Path | None = None
    unlabeled_info: Path | None = None
    unlabeled_images: Path | None = None
    unlabeled_dets: Path | None = None
    format: DatasetFormat = "coco"
    val_pckh: Path | None = None
    unlabeled_source: SourceFiles | None = None


_LAYOUTS: dict[str, tuple[DatasetFormat, dict[str, str]]] = {
    "synth": ("coco", dict(
        train_ann="annotations/person_keypoints_train.json", train_images="images/train",
        val_ann="annotations/person_keypoints_val.json", val_images="images/val",
        val_dets="annotations/person_detections_val.json",
    )),
    "coco2017": ("coco", dict(
        train_ann="annotations/person_keypoints_train2017.json", train_images="train2017",
        val_ann="annotations/person_keypoints_val2017.json", val_images="val2017",
        val_dets="annotations/COCO_val2017_detections_AP_H_56_person.json",
    )),
    "mpii": ("mpii", dict(
        train_ann="annot/train.json", train_images="images", val_ann="annot/valid.json", val_images="images",
        val_pckh="annot/gt_valid.mat",
    )),
    "aic": ("aic", dict(train_ann="train/keypoint_train_annotation.json", train_images="train/images")),
    "aic_split": ("aic", dict(train_ann="keypoint_train_annotation.json", train_images="images")),
}  # fmt: skip
_OPTIONAL = ("val_ann", "val_images", "val_dets", "val_pckh")


def find_sources(root: Path) -> SourceFiles:
    """Detect the layout of a dataset root; optional files (val, detections, PCKh GT) are kept only if they exist."""
    root = Path(root)
    for fmt, layout in _LAYOUTS.values():
        if (root / layout["train_ann"]).is_file():
            paths = {k: root / v for k, v in layout.items()}
            for opt in _OPTIONAL:
                if opt in paths and not paths[opt].exists():
                    paths[opt] = None
            return SourceFiles(format=fmt, **paths)
    expected = " or ".join(str(root / lay["train_ann"]) for _, lay in _LAYOUTS.values())
    raise FileNotFoundError(
        f"{root}: no known dataset layout (looked for {expected}); pass --train-ann/--train-images explicitly"
    )


def default_schema(src: SourceFiles) -> KeypointSchema:
    """The keypoint schema of a source when none is given: MPII -> mpii16, AIC -> aic14, COCO format -> read from
    the train file's `categories[0]` (coco17 when it names the COCO-17 joints)."""
    if src.format == "mpii":
        return get_schema("mpii16")
    if src.format == "aic":
        return get_schema("aic14")
    data = read_json(src.train_ann, "annotation file")
    cats = data.get("categories") if isinstance(data, dict) else None
    if not cats:
        raise ValueError(f"{src.train_ann}: no `categories` to read keypoint names from; pass --schema NAME|FILE")
    return schema_from_coco_category(cats[0], str(src.train_ann))


def load_split(
    src: SourceFiles,
    which: Literal["train", "val"],
    *,
    kind: InstanceKind,
    aspect: float,
    num_joints: int,
    limit: int | None = None,
    skipped: dict[str, int] | None = None,
) -> list[Instance]:
    """GT-box instances of a source's train or val annotations, read by the source's format. `skipped` (COCO format):
    skip invalid annotations and count them by reason instead of failing (`load_instances`)."""
    ann, images = (src.train_ann, src.train_images) if which == "train" else (src.val_ann, src.val_images)
    if src.format == "coco":
        return load_instances(
            ann, images, kind=kind, aspect=aspect, num_joints=num_joints, limit=limit, skipped=skipped
        )
    reader = {"mpii": load_mpii, "aic": load_aic}[src.format]
    return reader(ann, images, kind=kind, aspect=aspect, num_joints=num_joints, limit=limit)


def shard_dataset(
    src: SourceFiles,
    out_dir: Path,
    *,
    dataset: str,
    input_hw: tuple[int, int],
    schema: str | Path | KeypointSchema | None = None,
    labeled: int | None = None,
    unlabeled: bool = True,
    shard_size: int = 1000,
    workers: int = 0,
    skip_invalid: bool = False,
    progress: bool = True,
) -> FolderResult:
    """Write labeled / unlabeled / val (/ val_det) shards and the manifest as one transaction: afterwards `out_dir`
    holds exactly these splits (splits of an earlier run that this one does not write are removed, and listed in
    the result), or, on any failure, exactly what it held before.

    Args:
        schema: keypoint schema of the labels: a built-in name, a schema file, or None for the source's default
            (`default_schema`). The manifest stores it in full.
        labeled: keep the first N valid train instances as the labeled split (reference §1.2); None = all.
        unlabeled: write the unlabeled split: every train instance with labels dropped (reference protocol, the
            labeled ones included), the detection boxes of `src.unlabeled_dets` when given (COCO-wild), or the train
            boxes of `src.unlabeled_source` (another dataset, e.g. AIC for MPII) with labels dropped.
        skip_invalid: skip invalid annotations and unusable images (counted per split and reason in the manifest)
            instead of failing with a list of them (COCO-format annotations; every format's images).
    """
    try:
        check_input_size(input_hw)
    except ValueError as err:
        h, w = input_hw
        raise ValueError(f"--input-size {h}x{w}: {err}; no recipe could train on such shards") from None
    if schema is None:
        schema = default_schema(src)
    elif not isinstance(schema, KeypointSchema):
        schema = get_schema(schema)
    common = dict(aspect=input_hw[1] / input_hw[0], num_joints=schema.num_joints)

    def load(source: SourceFiles, which: Literal["train", "val"], kind: InstanceKind, **kw) -> tuple[list, dict]:
        skipped: dict[str, int] | None = {} if skip_invalid else None
        return load_split(source, which, kind=kind, skipped=skipped, **common, **kw), skipped or {}

    def load_dets(ann: Path, images: Path, kind: InstanceKind, dets: Path) -> tuple[list, dict]:
        skipped: dict[str, int] | None = {} if skip_invalid else None
        return load_instances(ann, images, kind=kind, det_file=dets, skipped=skipped, **common), skipped or {}

    plans = {"labeled": load(src, "train", "labeled", limit=labeled)}
    sources = {"train_annotations": src.train_ann}
    if unlabeled:
        if src.unlabeled_source is not None:
            other = src.unlabeled_source
            plans["unlabeled"] = load(other, "train", "unlabeled")
            sources["unlabeled_annotations"] = other.train_ann
        elif src.unlabeled_dets is not None:
            info = src.unlabeled_info or src.train_ann
            images = src.unlabeled_images or src.train_images
            plans["unlabeled"] = load_dets(info, images, "unlabeled", src.unlabeled_dets)
            sources["unlabeled_detections"] = src.unlabeled_dets
        else:
            plans["unlabeled"] = load(src, "train", "unlabeled")
    if src.val_ann is not None:
        plans["val"] = load(src, "val", "val")
        val = plans["val"][0]
        sources["val_annotations"] = src.val_ann
        if src.val_pckh is not None:
            n_gt = len(read_pckh_gt(src.val_pckh, schema.num_joints)["pos"])
            if n_gt != len(val):
                raise ValueError(
                    f"{src.val_pckh} holds {n_gt} persons but {src.val_ann} has {len(val)} entries; PCKh pairs them "
                    "in order, so both must come from the same release"
                )
            sources["val_pckh"] = src.val_pckh
        if src.val_dets is not None:
            plans["val_det"] = load_dets(src.val_ann, src.val_images, "val", src.val_dets)
            sources["val_detections"] = src.val_dets
    return write_shard_folder(
        out_dir, plans, dataset=dataset, schema=schema, input_hw=input_hw, sources=sources, shard_size=shard_size,
        workers=workers, skip_invalid=skip_invalid, progress=progress,
    )  # fmt: skip


def with_overrides(src: SourceFiles, **paths: Path | None) -> SourceFiles:
    """Replace the given (non-None) paths of a detected layout."""
    return replace(src, **{k: Path(v) for k, v in paths.items() if v is not None})
