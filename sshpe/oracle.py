"""Oracle evaluation: ground-truth heatmaps through decoding, image mapping, rescoring, OKS-NMS and COCOeval.

The AP it returns is the ceiling a recipe's heatmap resolution and decoder allow; far below 1 means a frame bug.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sshpe.codec import decode_heatmaps
from sshpe.data.shard_writer import read_manifest, source_file
from sshpe.data.streams import make_val_loader
from sshpe.evaluate import heatmap_to_image
from sshpe.predict import score_predictions
from sshpe.recipe import Recipe
from sshpe.step import remap_labels
from sshpe.views import identity_params, make_view, view_targets


def oracle_ap(recipe: Recipe, split: str | None = None) -> dict[str, float]:
    """COCO stats of decoding the val split's own Gaussian targets (GT boxes, no flip)."""
    d, shards = recipe.data, Path(recipe.data.shards)
    split = split or d.val_split
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("kpts", "maxvals", "image_id", "scale", "score")}
    for batch in make_val_loader(shards, split, batch_size=64, rank=0, world_size=1, num_workers=0):
        batch = remap_labels(batch, recipe.schema)
        b = batch["canvas"].shape[0]
        view = make_view(batch, identity_params(b), d.input_size, recipe.schema.flip_index(), mean=d.mean,
                         std=d.std, color=d.color)  # fmt: skip
        hm, weight = view_targets(view, d.sigma)
        kpts_hm, maxvals = decode_heatmaps(hm, mode=recipe.eval.decode)
        kpts = heatmap_to_image(kpts_hm.double(), batch["center"], batch["scale"], (hm.shape[-1], hm.shape[-2]))
        parts["kpts"].append(np.asarray(kpts))
        parts["maxvals"].append((maxvals * (weight > 0)).numpy())
        parts["scale"].append(batch["scale"].numpy())
        parts["image_id"].append(batch["image_id"].numpy())
        parts["score"].append(batch["score"].numpy())
    p = {k: np.concatenate(v) for k, v in parts.items()}
    gt = source_file(read_manifest(shards), shards, "val_annotations")
    return score_predictions(p, recipe, gt, None)
