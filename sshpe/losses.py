"""Heatmap losses (reference §1.6)."""

from __future__ import annotations

import torch


def joints_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """JointsMSELoss: (1/J) * sum_j 0.5 * mean_{b,pixels} (w_bj * P_bjp - w_bj * G_bjp)^2.

    Args:
        pred, target: (B,J,h,w) heatmaps; computed in fp32 whatever the autocast dtype.
        weight: (B,J) per-joint weights (visibility, or 1 for unlabeled channels).
    """
    d = (pred.float() - target.float()) * weight.float()[..., None, None]
    return 0.5 * d.pow(2).mean()
