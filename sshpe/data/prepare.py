"""`sshpe shard`: find a COCO-format dataset's files and write its labeled, unlabeled and val splits.

Layouts recognised: the synthetic dataset of `sshpe synth` (`images/{train,val}/`, `annotations/person_keypoints_
{train,val}.json`, `annotations/person_detections_val.json`) and COCO 2017 (`{train,val}2017/`,
`annotations/person_keypoints_{train,val}2017.json`). Any other COCO-format data works through explicit paths.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from sshpe.data.coco import load_instances
from sshpe.data.shard_folder import FolderResult, write_shard_folder
from sshpe.schema import get_schema


@dataclass(frozen=True)
class SourceFiles:
    """Where a dataset's annotation files and images are."""

    train_ann: Path
    train_images: Path
    val_ann: Path | None = None
    val_images: Path | None = None
    val_dets: Path | None = None
    unlabeled_info: Path | None = None
    unlabeled_images: Path | None = None
    unlabeled_dets: Path | None = None


_LAYOUTS = {
    "synth": dict(
        train_ann="annotations/person_keypoints_train.json", train_images="images/train",
        val_ann="annotations/person_keypoints_val.json", val_images="images/val",
        val_dets="annotations/person_detections_val.json",
    ),
    "coco2017": dict(
        train_ann="annotations/person_keypoints_train2017.json", train_images="train2017",
        val_ann="annotations/person_keypoints_val2017.json", val_images="val2017",
        val_dets="annotations/COCO_val2017_detections_AP_H_56_person.json",
    ),
}  # fmt: skip


def find_sources(root: Path) -> SourceFiles:
    """Detect the layout of a dataset root; optional files (val, detections) are kept only if they exist."""
    root = Path(root)
    for layout in _LAYOUTS.values():
        if (root / layout["train_ann"]).is_file():
            paths = {k: root / v for k, v in layout.items()}
            for opt in ("val_ann", "val_images", "val_dets"):
                if not paths[opt].exists():
                    paths[opt] = None
            return SourceFiles(**paths)
    expected = " or ".join(str(root / lay["train_ann"]) for lay in _LAYOUTS.values())
    raise FileNotFoundError(
        f"{root}: no known dataset layout (looked for {expected}); pass --train-ann/--train-images explicitly"
    )


def shard_dataset(
    src: SourceFiles,
    out_dir: Path,
    *,
    dataset: str,
    input_hw: tuple[int, int],
    schema_name: str = "coco17",
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
        labeled: keep the first N valid train instances as the labeled split (reference §1.2); None = all.
        unlabeled: write the unlabeled split: every train instance with labels dropped (reference protocol, the
            labeled ones included), or the detection boxes of `src.unlabeled_dets` when given (COCO-wild).
        skip_invalid: skip invalid annotations and unusable images (counted per split and reason in the manifest)
            instead of failing with a list of them.
    """
    schema = get_schema(schema_name)
    common = dict(aspect=input_hw[1] / input_hw[0], num_joints=schema.num_joints)

    def load(ann: Path, images: Path, kind: str, **kw) -> tuple[list, dict[str, int]]:
        skipped: dict[str, int] | None = {} if skip_invalid else None
        return load_instances(ann, images, kind=kind, skipped=skipped, **common, **kw), skipped or {}

    plans = {"labeled": load(src.train_ann, src.train_images, "labeled", limit=labeled)}
    if unlabeled:
        if src.unlabeled_dets is not None:
            info = src.unlabeled_info or src.train_ann
            images = src.unlabeled_images or src.train_images
            plans["unlabeled"] = load(info, images, "unlabeled", det_file=src.unlabeled_dets)
        else:
            plans["unlabeled"] = load(src.train_ann, src.train_images, "unlabeled")
    sources = {"train_annotations": src.train_ann}
    if src.val_ann is not None:
        plans["val"] = load(src.val_ann, src.val_images, "val")
        sources["val_annotations"] = src.val_ann
        if src.val_dets is not None:
            plans["val_det"] = load(src.val_ann, src.val_images, "val", det_file=src.val_dets)
            sources["val_detections"] = src.val_dets
    if src.unlabeled_dets is not None and unlabeled:
        sources["unlabeled_detections"] = src.unlabeled_dets
    return write_shard_folder(
        out_dir, plans, dataset=dataset, schema=schema, input_hw=input_hw, sources=sources, shard_size=shard_size,
        workers=workers, skip_invalid=skip_invalid, progress=progress,
    )  # fmt: skip


def with_overrides(src: SourceFiles, **paths: Path | None) -> SourceFiles:
    """Replace the given (non-None) paths of a detected layout."""
    return replace(src, **{k: Path(v) for k, v in paths.items() if v is not None})
