"""COCO keypoint evaluation: heatmap -> image coordinates, rescoring, OKS-NMS, results JSON and COCOeval
(pycocotools, or faster-coco-eval when installed).

Reproduces the reference's evaluation (§1.8; HRNet lib/dataset/coco.py `evaluate`, lib/nms/nms.py) with
vectorised numpy; the accelerator-facing prediction loop lives elsewhere.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from rich.table import Table

from sshpe import geometry
from sshpe.atomic import atomic_write_text
from sshpe.schema import COCO_SIGMAS, KeypointSchema, eval_channels

log = logging.getLogger(__name__)

STAT_KEYS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")


# ---------------------------------------------------------------------------------------------------------------
# Coordinates and scores
# ---------------------------------------------------------------------------------------------------------------


def heatmap_to_image(
    kpts_hm: torch.Tensor | np.ndarray,
    center: torch.Tensor | np.ndarray,
    scale: torch.Tensor | np.ndarray,
    heatmap_wh: tuple[int, int],
) -> torch.Tensor:
    """Map decoded keypoints from heatmap px to original image px (reference `transform_preds`).

    Uses the inverse of the crop affine built for the heatmap size with rotation 0.

    Args:
        kpts_hm: (B, K, 2) xy in heatmap px.
        center: (B, 2) crop centre in image px.
        scale: (B, 2) crop scale in units of 200 image px (only the width sets the zoom, as the reference).
        heatmap_wh: heatmap (width, height), e.g. (48, 64).

    Returns:
        (B, K, 2) float64 xy in image px, on the device of `kpts_hm`.
    """
    kpts = torch.as_tensor(kpts_hm).to(torch.float64)
    center_t = torch.as_tensor(center).to(device=kpts.device, dtype=torch.float64)
    scale_t = torch.as_tensor(scale).to(device=kpts.device, dtype=torch.float64)
    rot = torch.zeros(kpts.shape[0], dtype=torch.float64, device=kpts.device)
    hm_to_img = geometry.invert(geometry.crop_matrix(center_t, scale_t[:, 0], rot, heatmap_wh))
    return geometry.apply_affine(hm_to_img, kpts)


def rescore(maxvals: np.ndarray, box_scores: np.ndarray, thr: float = 0.2) -> np.ndarray:
    """Instance score = mean of the keypoint maxvals above `thr` (0 if none) x box score (HRNet `in_vis_thre`).

    Args:
        maxvals: (N, K) keypoint confidences.
        box_scores: (N,) detector scores (1 for GT boxes).

    Returns:
        (N,) float64 instance scores.
    """
    maxvals = np.asarray(maxvals, dtype=np.float64)
    valid = maxvals > thr
    count = valid.sum(1)
    total = np.where(valid, maxvals, 0.0).sum(1)
    kpt_score = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return kpt_score * np.asarray(box_scores, dtype=np.float64)


def oks_iou(
    g_kpts: np.ndarray,
    d_kpts: np.ndarray,
    area_g: float,
    areas_d: np.ndarray,
    sigmas: np.ndarray,
    vis_thr: float | None = None,
) -> np.ndarray:
    """OKS between one instance and M others (HRNet lib/nms/nms.py `oks_iou`), image px.

    Args:
        g_kpts: (K, 3) xy + score of the reference instance.
        d_kpts: (M, K, 3) the others.
        area_g: area of the reference instance, px².
        areas_d: (M,) areas of the others, px².
        sigmas: (K,) OKS sigmas.
        vis_thr: if set, only joints scored above it in both instances count (HRNet's code keeps only the
            second mask through a Python `and` on lists; no caller sets it).

    Returns:
        (M,) OKS in [0, 1].
    """
    d_kpts = np.asarray(d_kpts, dtype=np.float64).reshape(-1, *np.shape(g_kpts))
    variances = (np.asarray(sigmas, dtype=np.float64) * 2) ** 2
    sq_dist = ((d_kpts[..., :2] - g_kpts[None, :, :2]) ** 2).sum(-1)  # (M, K)
    scale = (area_g + np.asarray(areas_d, dtype=np.float64)) / 2 + np.spacing(1)
    e = sq_dist / variances / scale[:, None] / 2
    mask = np.ones_like(e, dtype=bool)
    if vis_thr is not None:
        mask = (g_kpts[None, :, 2] > vis_thr) & (d_kpts[..., 2] > vis_thr)
    count = mask.sum(1)
    total = np.where(mask, np.exp(-e), 0.0).sum(1)
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def oks_nms(kpts: np.ndarray, scores: np.ndarray, areas: np.ndarray, sigmas: np.ndarray, thr: float = 0.9) -> list[int]:
    """Greedy OKS non-maximum suppression (HRNet lib/nms/nms.py `oks_nms`).

    Args:
        kpts: (N, K, 3) xy + score in image px.
        scores: (N,) instance scores.
        areas: (N,) instance areas, px² (the padded box area (200 s_x)(200 s_y) in the reference).
        sigmas: (K,) OKS sigmas.
        thr: instances whose OKS with a kept, higher-scored one exceeds `thr` are removed.

    Returns:
        Kept indices into the N instances, highest score first.
    """
    kpts = np.asarray(kpts, dtype=np.float64)
    areas = np.asarray(areas, dtype=np.float64)
    order = np.argsort(np.asarray(scores), kind="stable")[::-1]
    keep: list[int] = []
    while order.size > 0:
        i = int(order[0])
        keep.append(i)
        ovr = oks_iou(kpts[i], kpts[order[1:]], areas[i], areas[order[1:]], sigmas)
        order = order[1:][ovr <= thr]
    return keep


# ---------------------------------------------------------------------------------------------------------------
# COCO results
# ---------------------------------------------------------------------------------------------------------------


def build_results(
    kpts_img: np.ndarray,
    maxvals: np.ndarray,
    image_ids: np.ndarray,
    scales: np.ndarray,
    box_scores: np.ndarray,
    schema: KeypointSchema,
    oks_thr: float = 0.9,
    in_vis_thr: float = 0.2,
    *,
    data_schema: KeypointSchema | None = None,
    centers: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
) -> list[dict]:
    """Per-instance predictions -> the official COCO keypoint results list (reference §1.8).

    Channels are mapped to the ground truth's joints (`sshpe.schema.eval_channels`: union24 back to COCO-17, MPII-16,
    ...), instances rescored, grouped by image and OKS-NMS'ed per image with area = (200 s_x)(200 s_y) and the
    ground truth's sigmas.

    Args:
        kpts_img: (N, K, 2) xy in original image px, K = the model schema's channels.
        maxvals: (N, K) keypoint confidences.
        image_ids: (N,) COCO image ids.
        scales: (N, 2) crop scales in units of 200 px.
        box_scores: (N,) box scores (1 for GT boxes).
        schema: the model's keypoint schema.
        oks_thr: OKS-NMS threshold (0.9 in every reference semi-supervised config).
        in_vis_thr: rescoring threshold on keypoint confidences.
        data_schema: the ground truth's keypoint schema (default: `schema`).
        centers: (N, 2) crop centres, image px; with `boxes`, each result also carries `center`, `scale` and `bbox`
            as SHP/MA write them (reference §10.19: pycocotools then takes a detection's area from its bbox).
        boxes: (N, 4) the source's person boxes (x, y, w, h), image px.

    Returns:
        `[{"image_id", "category_id": 1, "keypoints": [x, y, score] * K_eval, "score"(, "center", "scale",
        "bbox")}]`, images in order of first appearance, instances within an image by descending score.
    """
    kpts_img, maxvals = np.asarray(kpts_img, dtype=np.float64), np.asarray(maxvals, dtype=np.float64)
    if kpts_img.ndim != 3 or kpts_img.shape[1] != schema.num_joints or maxvals.shape != kpts_img.shape[:2]:
        raise ValueError(
            f"build_results: keypoints {kpts_img.shape} / maxvals {maxvals.shape} do not match schema "
            f"{schema.name!r} with {schema.num_joints} joints; expected (N, {schema.num_joints}, 2) and "
            f"(N, {schema.num_joints})"
        )
    data_schema = data_schema or schema
    channels, sigmas = eval_channels(data_schema, schema), np.array(data_schema.sigmas, dtype=np.float64)
    kpts = np.concatenate([kpts_img[:, channels], maxvals[:, channels, None]], -1)  # (N, K_eval, 3)
    scores = rescore(kpts[..., 2], box_scores, in_vis_thr)
    scales = np.asarray(scales, dtype=np.float64)
    areas = np.prod(scales * geometry.PIXEL_STD, axis=1)
    image_ids = np.asarray(image_ids)
    results = []
    for img_id in dict.fromkeys(image_ids.tolist()):
        idx = np.flatnonzero(image_ids == img_id)
        for k in oks_nms(kpts[idx], scores[idx], areas[idx], sigmas, oks_thr):
            i = idx[k]
            res = {"image_id": int(img_id), "category_id": 1, "keypoints": kpts[i].reshape(-1).tolist(),
                   "score": float(scores[i])}  # fmt: skip
            if centers is not None and boxes is not None:
                res |= {"center": [float(v) for v in centers[i]], "scale": scales[i].tolist(),
                        "bbox": [float(v) for v in boxes[i]]}  # fmt: skip
            results.append(res)
    return results


def write_results(path: Path | str, results: list[dict]) -> None:
    """Write a results list as JSON atomically (temp file in the same folder + rename), honouring the umask."""
    atomic_write_text(path, json.dumps(results))


# ---------------------------------------------------------------------------------------------------------------
# COCOeval
# ---------------------------------------------------------------------------------------------------------------


EvalBackend = Literal["pycocotools", "faster"]


class BackendUnavailable(RuntimeError):
    """An optional evaluation backend's package is not installed; the message says how to install it."""


def check_backend(backend: EvalBackend) -> None:
    """Raise `BackendUnavailable` now (not at the first evaluation of a long run) when `backend` cannot be used."""
    if backend == "faster":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            raise BackendUnavailable(
                "eval.backend=faster needs the faster-coco-eval package: pip install 'sshpe[fast-eval]' "
                "(or set eval.backend=pycocotools)"
            ) from None
    elif backend != "pycocotools":
        raise ValueError(f"unknown evaluation backend {backend!r}; use 'pycocotools' or 'faster'")


def coco_keypoint_eval(
    gt_file: Path | str, results: list[dict], sigmas: np.ndarray | None = None, backend: EvalBackend = "pycocotools"
) -> dict[str, float]:
    """Run COCO keypoint evaluation (maxDets 20, all/medium/large) and return the 10 standard stats.

    The backend's printed output is captured and logged at INFO level.

    Args:
        gt_file: COCO-format keypoint ground truth JSON.
        results: the list from `build_results` (not modified).
        sigmas: (K,) OKS sigmas; COCO-17's by default (the ground truth's schema's, see `build_results`).
        backend: "pycocotools" (the reference's code) or "faster" (faster-coco-eval's C++ COCOeval, the same
            stats to 1e-4, `tests/test_evaluate.py`; optional extra `sshpe[fast-eval]`).

    Returns:
        `{AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl}` as floats in [0, 1] (-1 where the backend finds no
        ground truth in an area range). All zeros, with a warning, for an empty results list.
    """
    gt_file = Path(gt_file)
    if not gt_file.is_file():
        raise FileNotFoundError(
            f"COCO ground-truth file {gt_file} does not exist; pass the person_keypoints_*.json of the split "
            "being evaluated (or the one `sshpe synth` wrote)"
        )
    check_backend(backend)
    if not results:
        log.warning("coco_keypoint_eval: no predictions to evaluate against %s; reporting all stats as 0", gt_file)
        return {k: 0.0 for k in STAT_KEYS}
    sigmas = np.array(COCO_SIGMAS if sigmas is None else sigmas, dtype=np.float64)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        if backend == "faster":
            from faster_coco_eval import COCO as FasterCOCO
            from faster_coco_eval import COCOeval_faster

            coco_gt = FasterCOCO(str(gt_file))
            _check_results(coco_gt, results, sigmas, gt_file)
            coco_dt = coco_gt.loadRes([dict(r) for r in results])
            coco_eval = COCOeval_faster(coco_gt, coco_dt, iouType="keypoints", kpt_oks_sigmas=list(sigmas),
                                        print_function=print)  # fmt: skip
        else:
            coco_gt = COCO(str(gt_file))
            _check_results(coco_gt, results, sigmas, gt_file)
            coco_dt = coco_gt.loadRes([dict(r) for r in results])  # loadRes adds fields to each dict
            coco_eval = COCOeval(coco_gt, coco_dt, iouType="keypoints")
            coco_eval.params.kpt_oks_sigmas = sigmas
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    log.info("%s output for %s:\n%s", backend, gt_file, buf.getvalue())
    return {k: float(v) for k, v in zip(STAT_KEYS, coco_eval.stats[: len(STAT_KEYS)])}


def _check_results(coco_gt, results: list[dict], sigmas: np.ndarray, gt_file: Path) -> None:
    """Raise clear errors for results that pycocotools would reject with a bare assert or a shape error."""
    unknown = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(
            f"{len(unknown)} predicted image ids are not in {gt_file} (e.g. {sorted(unknown)[:5]}); evaluate "
            "against the ground truth of the split the predictions were made on"
        )
    n_pred = len(results[0]["keypoints"]) // 3
    gt_kpts = [a["keypoints"] for a in coco_gt.dataset.get("annotations", []) if "keypoints" in a]
    n_gt = len(gt_kpts[0]) // 3 if gt_kpts else n_pred
    if not n_pred == n_gt == len(sigmas):
        raise ValueError(
            f"keypoint counts disagree: predictions have {n_pred}, {gt_file} has {n_gt}, sigmas have "
            f"{len(sigmas)}; use the schema that matches the ground truth (eval_channels gives its sigmas)"
        )


def stats_table(stats: dict[str, float], title: str) -> Table:
    """A one-row rich table of the 10 COCO keypoint stats, as percentages ("-" where pycocotools gives -1), or of a
    PCKh table (its own columns, already percentages; "-" for nan)."""
    if "Mean" in stats and "AP" not in stats:
        table = Table(title=title)
        for k in stats:
            table.add_column(k, justify="right")
        table.add_row(*(f"{v:.2f}" if v == v else "-" for v in stats.values()))
        return table
    missing = [k for k in STAT_KEYS if k not in stats]
    if missing:
        raise ValueError(f"stats_table: stats lack {missing}; pass the dict from coco_keypoint_eval")
    table = Table(title=title)
    for k in STAT_KEYS:
        table.add_column(k, justify="right")
    table.add_row(*(f"{100 * stats[k]:.1f}" if stats[k] >= 0 else "-" for k in STAT_KEYS))  # -1: no GT
    return table
