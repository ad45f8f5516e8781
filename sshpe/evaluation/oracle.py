"""Oracle evaluation: ground-truth heatmaps through decoding, image mapping, rescoring, OKS-NMS and COCOeval.

The AP it returns is the ceiling a recipe's heatmap resolution and decoder allow; far below 1 means a frame bug.
"""

from __future__ import annotations

import numpy as np

from sshpe.data.shard_writer import read_manifest
from sshpe.data.streams import make_val_loader
from sshpe.evaluation.coco_ap import heatmap_to_image
from sshpe.evaluation.codec import decode_heatmaps
from sshpe.evaluation.predict import PREDICTION_PARTS, data_schema, score_predictions
from sshpe.recipe import Recipe
from sshpe.schema import joint_map
from sshpe.step import remap_labels
from sshpe.views import identity_params, make_view, view_targets


def oracle_ap(recipe: Recipe, split: str | None = None) -> dict[str, float]:
    """Stats (COCO AP, or PCKh for MPII shards) of decoding the val split's own Gaussian targets (GT boxes, no flip)."""
    d, shards = recipe.data, recipe.data.shards
    split = split or d.val_split
    manifest = read_manifest(shards)
    jmap = joint_map(data_schema(manifest, shards), recipe.schema)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in PREDICTION_PARTS}
    for batch in make_val_loader(shards, split, batch_size=64, rank=0, world_size=1, num_workers=0):
        batch = remap_labels(batch, jmap)
        b = batch["canvas"].shape[0]
        view = make_view(batch, identity_params(b), d.input_size, recipe.schema.flip_index(), mean=d.mean,
                         std=d.std, color=d.color)  # fmt: skip
        hm, weight = view_targets(view, d.sigma)
        kpts_hm, maxvals = decode_heatmaps(hm, mode=recipe.eval.decode)
        kpts = heatmap_to_image(kpts_hm.double(), batch["center"], batch["scale"], (hm.shape[-1], hm.shape[-2]))
        parts["kpts"].append(np.asarray(kpts))
        parts["maxvals"].append((maxvals * (weight > 0)).numpy())
        for k in ("center", "scale", "raw_bbox", "image_id", "ann_id", "score"):
            parts[k].append(batch[k].numpy())
    return score_predictions({k: np.concatenate(v) for k, v in parts.items()}, recipe, manifest, None)
