"""PCKh: head-normalised keypoint accuracy as SHP/HRNet `mpii.py evaluate` computes it (reference §1.9).

Pure numpy on arrays; reading `gt_valid.mat` and writing `pred.mat` live in `sshpe.data.readers.mpii`.
"""

from __future__ import annotations

import numpy as np

from sshpe.schema import PckhSpec

# The reference samples its PCKh curve at np.arange(0, 0.51, 0.01) and reads "Mean@0.1" at index 11 (threshold 0.11).
_CURVE = np.arange(0, 0.5 + 0.01, 0.01)
QUIRK_MEAN_AT_01 = float(_CURVE[11])


def normalized_errors(pred: np.ndarray, gt: np.ndarray, headboxes: np.ndarray, head_size_factor: float) -> np.ndarray:
    """Keypoint error divided by the head size.

    Args:
        pred: (N, K, 2) predicted xy, image px.
        gt: (N, K, 2) ground-truth xy in the same pixel convention as `pred` (MPII: both 1-based).
        headboxes: (N, 2, 2) two corners (x, y) of each person's head box, image px.
        head_size_factor: head size = factor x the box diagonal (MPII: SC_BIAS 0.6).

    Returns:
        (N, K) float64 errors in head sizes; inf (or nan for a zero error) where the head box has zero size.
    """
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    boxes = np.asarray(headboxes, dtype=np.float64)
    head = np.linalg.norm(boxes[:, 1] - boxes[:, 0], axis=-1) * head_size_factor  # (N,)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.linalg.norm(pred - gt, axis=-1) / head[:, None]


def per_joint_pckh(errors: np.ndarray, missing: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-joint PCKh in percent and the visible count per joint.

    A joint counts when it is not missing; it is correct when its normalised error <= threshold (a zero-size head
    box gives inf/nan errors: visible but never correct, as the reference). Joints no person has visible get nan.

    Args:
        errors: (N, K) from `normalized_errors`.
        missing: (N, K) bool, True where the ground truth has no joint.
        threshold: normalised-error threshold (0.5 for PCKh@0.5).

    Returns:
        ((K,) float64 PCKh in [0, 100] or nan, (K,) int visible counts).
    """
    visible = ~np.asarray(missing, dtype=bool)
    with np.errstate(invalid="ignore"):
        correct = (errors <= threshold) & visible
    count = visible.sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        pck = np.where(count > 0, 100.0 * correct.sum(0) / np.maximum(count, 1), np.nan)
    return pck, count


def _weighted_mean(pck: np.ndarray, count: np.ndarray, excludes: tuple[int, ...]) -> float:
    """The visible-count-weighted mean over joints, excluded joints and joints nobody shows left out."""
    weight = count.astype(np.float64)
    weight[list(excludes)] = 0.0
    weight[count == 0] = 0.0
    if weight.sum() == 0:
        return float("nan")
    return float(np.sum(np.where(weight > 0, pck, 0.0) * weight) / weight.sum())


def pckh_table(
    pred: np.ndarray,
    gt: np.ndarray,
    missing: np.ndarray,
    headboxes: np.ndarray,
    spec: PckhSpec,
    reference_quirks: bool = False,
) -> dict[str, float]:
    """The reference's PCKh table: one value per `spec.columns` entry, then Mean and Mean@0.1 (all in percent).

    Args:
        pred: (N, K, 2) predicted xy in the ground truth's joint order and pixel convention.
        gt: (N, K, 2) ground-truth xy.
        missing: (N, K) bool, True where the ground truth has no joint.
        headboxes: (N, 2, 2) head box corners.
        spec: the schema's PCKh settings (head size factor, threshold, columns, joints left out of the Mean).
        reference_quirks: read Mean@0.1 at threshold 0.11 (the reference's curve index 11) instead of 0.1.

    Returns:
        {column title: mean of its joints' PCKh, ..., "Mean": weighted PCKh at `spec.threshold`, "Mean@0.1": the
        same at 0.1}; a column of joints nobody shows is nan.
    """
    errors = normalized_errors(pred, gt, headboxes, spec.head_size_factor)
    pck, count = per_joint_pckh(errors, missing, spec.threshold)
    table = {title: float(np.mean(pck[list(joints)])) for title, joints in spec.columns}
    table["Mean"] = _weighted_mean(pck, count, spec.mean_excludes)
    low = QUIRK_MEAN_AT_01 if reference_quirks else 0.1
    table["Mean@0.1"] = _weighted_mean(per_joint_pckh(errors, missing, low)[0], count, spec.mean_excludes)
    return table
