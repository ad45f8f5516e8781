"""Run a pose network over validation shards and score it with COCO keypoint AP (reference §1.8).

Side effects (loaders, ranks, files) live here; the math is in `sshpe.codec`, `sshpe.evaluate` and
`sshpe.geometry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sshpe.codec import decode_heatmaps, flip_back
from sshpe.evaluate import build_results, coco_keypoint_eval, eval_channels, heatmap_to_image, write_results
from sshpe.recipe import Recipe
from sshpe.views import identity_params, make_view


def batch_to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def predict_heatmaps(
    net: Callable[[torch.Tensor], torch.Tensor], img: torch.Tensor, flip_index: list[int] | None, shift: bool = True
) -> torch.Tensor:
    """(B,3,H,W) normalised crops -> (B,K,h,w) heatmaps; with a `flip_index` (flip test) averaged with the
    prediction on the mirrored crops, flipped back (and shifted one column when `shift`, reference §1.8)."""
    hm = net(img).float()
    if flip_index is not None:
        hm = 0.5 * (hm + flip_back(net(img.flip(-1)).float(), flip_index, shift=shift))
    return hm


@torch.no_grad()
def predict_instances(net: Callable, loader, recipe: Recipe, device) -> dict[str, np.ndarray]:
    """Predict every sample of a (rank-local) val loader.

    Returns arrays over the N instances: "kpts" (N,K,2) image px, "maxvals" (N,K), "image_id" (N,), "ann_id" (N,),
    "scale" (N,2) padded box scale (200-px units), "score" (N,) box score.
    """
    d = recipe.data
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("kpts", "maxvals", "image_id", "ann_id", "scale", "score")}
    for batch in loader:
        batch = batch_to_device(batch, device)
        b = batch["canvas"].shape[0]
        view = make_view(
            batch, identity_params(b, device), d.input_size, recipe.schema.flip_index(),
            mean=d.mean, std=d.std, color=d.color,
        )  # fmt: skip
        flip_index = recipe.schema.flip_index() if recipe.eval.flip_test else None
        hm = predict_heatmaps(net, view.img, flip_index, recipe.eval.shift_heatmap)
        kpts_hm, maxvals = decode_heatmaps(hm, mode=recipe.eval.decode)
        h_hm, w_hm = hm.shape[-2:]
        center, scale = batch["center"].double().cpu(), batch["scale"].double().cpu()
        parts["kpts"].append(heatmap_to_image(kpts_hm.double().cpu(), center, scale, (w_hm, h_hm)).numpy())
        parts["maxvals"].append(maxvals.double().cpu().numpy())
        parts["scale"].append(scale.numpy())
        for k in ("image_id", "ann_id", "score"):
            parts[k].append(batch[k].cpu().numpy())
    k = recipe.schema.num_joints
    empty = {"kpts": (0, k, 2), "maxvals": (0, k), "scale": (0, 2)}
    return {n: np.concatenate(v) if v else np.zeros(empty.get(n, (0,))) for n, v in parts.items()}


def merge_instances(per_rank: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate the prediction arrays gathered from every rank."""
    return {k: np.concatenate([p[k] for p in per_rank]) for k in per_rank[0]}


def score_predictions(inst: dict[str, np.ndarray], recipe: Recipe, gt_file: Path, results_path: Path | None) -> dict:
    """Rescore, OKS-NMS, write official-format results, run COCOeval; returns the 10 stats."""
    results = build_results(
        inst["kpts"], inst["maxvals"], inst["image_id"], inst["scale"], inst["score"], recipe.schema,
        oks_thr=recipe.eval.oks_nms_thr, in_vis_thr=recipe.eval.in_vis_thr,
    )  # fmt: skip
    if results_path is not None:
        write_results(results_path, results)
    _, sigmas = eval_channels(recipe.schema)
    return coco_keypoint_eval(gt_file, results, sigmas)
