"""Run a pose network over validation shards and score it: COCO keypoint AP (reference §1.8) or, for shards with a
PCKh ground truth (MPII), the PCKh table (§1.9).

Side effects (loaders, ranks, files) live here; the math is in `sshpe.evaluation.codec`, `sshpe.evaluation.coco_ap` and
`sshpe.geometry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from sshpe.data.batches import decode_batch
from sshpe.data.locations import shard_location
from sshpe.data.shard_writer import MANIFEST_NAME, source_file
from sshpe.evaluation.coco_ap import build_results, coco_keypoint_eval, heatmap_to_image, write_results
from sshpe.evaluation.codec import decode_heatmaps, flip_back
from sshpe.evaluation.pckh import pckh_table
from sshpe.recipe import Recipe
from sshpe.schema import KeypointSchema, eval_channels, schema_from_data
from sshpe.views import identity_params, make_view


def batch_to_device(batch: dict, device) -> dict:
    """Move a collated batch to `device`, decoding handed-over JPEG bytes there first (`batches.decode_batch`)."""
    batch = decode_batch(batch, device)
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


PREDICTION_PARTS = ("kpts", "maxvals", "image_id", "ann_id", "center", "scale", "raw_bbox", "score")


@torch.no_grad()
def predict_instances(net: Callable, loader, recipe: Recipe, device) -> dict[str, np.ndarray]:
    """Predict every sample of a (rank-local) val loader.

    Returns arrays over the N instances: "kpts" (N,K,2) image px, "maxvals" (N,K), "image_id" (N,), "ann_id" (N,),
    "center" (N,2) crop centre (image px), "scale" (N,2) padded box scale (200-px units), "raw_bbox" (N,4) the
    source's box (x, y, w, h), "score" (N,) box score.
    """
    d = recipe.data
    parts: dict[str, list[np.ndarray]] = {k: [] for k in PREDICTION_PARTS}
    for batch in loader:
        batch = batch_to_device(batch, device)
        b = batch["canvas"].shape[0]
        no_flip = list(range(batch["kpts"].shape[1]))  # identity views never flip; labels stay in the data's joints
        view = make_view(
            batch, identity_params(b, device), d.input_size, no_flip, mean=d.mean, std=d.std, color=d.color
        )
        flip_index = recipe.schema.flip_index() if recipe.eval.flip_test else None
        hm = predict_heatmaps(net, view.img, flip_index, recipe.eval.shift_heatmap)
        kpts_hm, maxvals = decode_heatmaps(hm, mode=recipe.eval.decode)
        h_hm, w_hm = hm.shape[-2:]
        center, scale = batch["center"].double().cpu(), batch["scale"].double().cpu()
        parts["kpts"].append(heatmap_to_image(kpts_hm.double().cpu(), center, scale, (w_hm, h_hm)).numpy())
        parts["maxvals"].append(maxvals.double().cpu().numpy())
        parts["center"].append(center.numpy())
        parts["scale"].append(scale.numpy())
        for k in ("image_id", "ann_id", "score", "raw_bbox"):
            parts[k].append(batch[k].cpu().numpy())
    k = recipe.schema.num_joints
    empty = {"kpts": (0, k, 2), "maxvals": (0, k), "center": (0, 2), "scale": (0, 2), "raw_bbox": (0, 4)}
    return {n: np.concatenate(v) if v else np.zeros(empty.get(n, (0,))) for n, v in parts.items()}


def merge_instances(per_rank: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate the prediction arrays gathered from every rank."""
    return {k: np.concatenate([p[k] for p in per_rank]) for k in per_rank[0]}


def data_schema(manifest: dict, shards: Path | str = "shards") -> KeypointSchema:
    """The keypoint schema of a shard folder's labels (stored in full in its manifest); `shards` names it in errors."""
    return schema_from_data(manifest["schema"], f"{shard_location(shards).where(MANIFEST_NAME)}: schema")


def score_predictions(inst: dict[str, np.ndarray], recipe: Recipe, manifest: dict, out_dir: Path | None) -> dict:
    """Score gathered predictions against the val split's ground truth named in the manifest (found at its absolute
    path, else relative to the shard folder: `shard_writer.source_file`).

    PCKh when the manifest has a `val_pckh` source (MPII's gt_valid.mat; writes `pred.mat` into `out_dir`), else
    COCO keypoint AP: rescore, OKS-NMS, write official-format `results.json`, COCOeval (`eval.backend`).

    Returns:
        The 10 COCO stats, or the PCKh table (Head ... Ankle, Mean, Mean@0.1 in percent).
    """
    shards = recipe.data.shards
    data = data_schema(manifest, shards)
    if "val_pckh" in manifest["sources"]:
        return score_pckh(inst, recipe, data, source_file(manifest, shards, "val_pckh"), out_dir)
    results = build_results(
        inst["kpts"], inst["maxvals"], inst["image_id"], inst["scale"], inst["score"], recipe.schema,
        oks_thr=recipe.eval.oks_nms_thr, in_vis_thr=recipe.eval.in_vis_thr, data_schema=data,
        centers=inst["center"], boxes=inst["raw_bbox"],
    )  # fmt: skip
    if out_dir is not None:
        write_results(Path(out_dir) / "results.json", results)
    gt = source_file(manifest, shards, "val_annotations")
    return coco_keypoint_eval(gt, results, np.array(data.sigmas), backend=recipe.eval.backend)


def score_pckh(inst: dict[str, np.ndarray], recipe: Recipe, data: KeypointSchema, gt_file: Path, out_dir) -> dict:
    """PCKh of val predictions (instance i = the i-th person of the ground truth: `ann_id` is the entry index)."""
    from sshpe.data.readers.mpii import read_pckh_gt, write_pred_mat

    if data.pckh is None:
        raise ValueError(f"the shards' keypoint schema {data.name!r} has no `pckh` settings; PCKh needs them")
    gt = read_pckh_gt(gt_file, data.num_joints)
    n = len(gt["pos"])
    order = np.argsort(inst["ann_id"], kind="stable")
    if not np.array_equal(inst["ann_id"][order], np.arange(n)):
        raise ValueError(
            f"{gt_file} holds {n} persons but the val shards predicted {len(order)} (entry indices must be 0..N-1); "
            "re-shard the val split from the matching annot/valid.json"
        )
    channels = eval_channels(data, recipe.schema)
    kpts = inst["kpts"][order][:, channels] + 1.0  # 0-based -> MPII's 1-based pixels
    preds = np.concatenate([kpts, inst["maxvals"][order][:, channels, None]], -1)
    if out_dir is not None:
        write_pred_mat(Path(out_dir) / "pred.mat", preds)
    return pckh_table(kpts, gt["pos"], gt["missing"], gt["headboxes"], data.pckh, recipe.eval.reference_quirks)
