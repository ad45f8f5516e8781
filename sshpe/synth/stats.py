"""How COCO-like a person-keypoint annotation file is: person sizes against COCO's area ranges, silhouette fill of
the box, people per image, labelled/occluded joints, truncation. Works on any COCO-format keypoint file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SMALL, LARGE = 32.0**2, 96.0**2  # COCOeval's area-range limits (px^2)
# Bounds the default synthetic val split must meet (issue 11; tests/test_synth.py asserts them on a small split).
BOUNDS = {"area_ge_32sq": (0.90, 1.0), "area_ge_96sq": (0.25, 1.0), "median_fill": (0.40, 0.60)}


def person_stats(coco: dict) -> dict:
    """Statistics of the non-crowd person annotations of a COCO keypoint dict.

    Returns:
        persons, images; `area_ge_32sq` / `area_ge_96sq`: share of persons whose `area` reaches COCO's medium /
        large limit; `median_fill`: median of area / (bbox w * h); `people_per_image`: {count: images};
        `labelled_share`: mean share of joints with v > 0; `occluded_share`: share of labelled joints with v = 1;
        `truncated`: share of persons whose box touches the image border; `facing`: counts when annotated.
    """
    anns = [a for a in coco["annotations"] if not a.get("iscrowd", 0)]
    sizes = {img["id"]: (img["width"], img["height"]) for img in coco["images"]}
    if not anns:
        return {"persons": 0, "images": len(sizes)}
    area = np.array([a["area"] for a in anns], dtype=np.float64)
    box = np.array([a["bbox"] for a in anns], dtype=np.float64)
    kpts = np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), -1, 3)
    vis = kpts[..., 2]
    labelled = vis > 0
    per_image: dict[int, int] = {}
    for a in anns:
        per_image[a["image_id"]] = per_image.get(a["image_id"], 0) + 1
    counts: dict[int, int] = {}
    for n in per_image.values():
        counts[n] = counts.get(n, 0) + 1
    wh = np.array([sizes[a["image_id"]] for a in anns], dtype=np.float64)
    touches = (
        (box[:, 0] <= 1)
        | (box[:, 1] <= 1)
        | (box[:, 0] + box[:, 2] >= wh[:, 0] - 2)
        | (box[:, 1] + box[:, 3] >= wh[:, 1] - 2)
    )
    out = {
        "persons": len(anns),
        "images": len(sizes),
        "area_ge_32sq": float(np.mean(area >= SMALL)),
        "area_ge_96sq": float(np.mean(area >= LARGE)),
        "median_area": float(np.median(area)),
        "median_fill": float(np.median(area / np.maximum(box[:, 2] * box[:, 3], 1e-9))),
        "people_per_image": dict(sorted(counts.items())),
        "labelled_share": float(labelled.mean()),
        "occluded_share": float((vis == 1).sum() / max(labelled.sum(), 1)),
        "truncated": float(touches.mean()),
    }
    if all("facing" in a for a in anns):
        facing: dict[str, int] = {}
        for a in anns:
            facing[a["facing"]] = facing.get(a["facing"], 0) + 1
        out["facing"] = dict(sorted(facing.items()))
    return out


def file_stats(path: Path) -> dict:
    """`person_stats` of a COCO keypoint annotation file."""
    return person_stats(json.loads(Path(path).read_text(encoding="utf-8")))


def check_bounds(stats: dict) -> list[str]:
    """The BOUNDS a split misses, as readable strings (empty when all hold)."""
    return [f"{k}={stats.get(k, float('nan')):.3f} not in [{lo}, {hi}]" for k, (lo, hi) in BOUNDS.items()
            if not lo <= stats.get(k, float("nan")) <= hi]  # fmt: skip


def stats_table(by_split: dict[str, dict]):
    """A rich table of `person_stats`, one column per split, with the COCO-like bounds beside each figure."""
    from rich.table import Table

    rows = [("persons", "persons", "{:d}", ""), ("images", "images", "{:d}", ""),
            ("area >= 32^2", "area_ge_32sq", "{:.1%}", ">= 90%"), ("area >= 96^2", "area_ge_96sq", "{:.1%}", ">= 25%"),
            ("median area / box area", "median_fill", "{:.3f}", "0.40-0.60"), ("median area px^2", "median_area",
            "{:.0f}", ""), ("joints labelled (v>0)", "labelled_share", "{:.1%}", ""), ("labelled joints covered (v=1)",
            "occluded_share", "{:.1%}", ""), ("box touches the border", "truncated", "{:.1%}", "")]  # fmt: skip
    table = Table(title="persons (COCO keypoint statistics)")
    table.add_column("")
    for split in by_split:
        table.add_column(split, justify="right")
    table.add_column("bound")
    for head, key, fmt, bound in rows:
        table.add_row(head, *(fmt.format(st[key]) if key in st else "-" for st in by_split.values()), bound)
    per_image = [" ".join(f"{n}:{c}" for n, c in st.get("people_per_image", {}).items()) for st in by_split.values()]
    table.add_row("images with n people", *per_image, "")
    return table
