"""Pseudo-label quality: how well the teachers' easy-view argmax joints match the ground truth that the unlabeled
protocol hides (COCO train with labels dropped, the synthetic data). A metric only: the training step hands its
pseudo-labels over and never reads the hidden ground truth (`hidden_kpts` in a batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sshpe.views import View, map_keypoints

PCK_THRESHOLD = 0.05  # of the crop height


@dataclass(frozen=True)
class PseudoLabels:
    """What taught each student network on one unlabeled batch.

    Attributes:
        joints: per student network, (B, K, 2) the teacher's heatmap argmax in crop px (what the joint ops and the
            targets use), in the schema's channels.
        view: the unlabeled easy view the teachers saw (its canvas->crop maps and flips).
    """

    joints: list[torch.Tensor]
    view: View


def pseudo_label_pck(pseudo: PseudoLabels, batch_u: dict, schema, threshold: float = PCK_THRESHOLD) -> dict:
    """PCK of the pseudo-labels against the hidden ground truth, per teacher network and averaged.

    A joint counts when its hidden label is v > 0 and lies inside the crop; it is correct when the argmax is within
    `threshold` x crop height of it (crop px). The batch's labels must already be in the model's channels
    (`sshpe.step.remap_labels` maps the hidden ones too).

    Returns:
        {"pseudo_pck": mean over networks, "pseudo_pck_a"/"_b"/...: per network when there are several}; empty when
        the batch has no hidden ground truth or no countable joint.
    """
    if "hidden_kpts" not in batch_u:
        return {}
    view = pseudo.view  # mapped like the view's labels: left/right swapped where the view was mirrored
    gt, vis = map_keypoints(view.canvas_to_crop, view.flip, batch_u["hidden_kpts"], batch_u["hidden_vis"],
                            schema.flip_index())  # fmt: skip
    h, w = view.img.shape[-2:]
    inside = (gt[..., 0] >= 0) & (gt[..., 0] <= w - 1) & (gt[..., 1] >= 0) & (gt[..., 1] <= h - 1)
    counted = (vis > 0) & inside
    if not counted.any():
        return {}
    per_net = []
    for joints in pseudo.joints:
        hit = (joints.to(gt) - gt).norm(dim=-1) <= threshold * h
        per_net.append(float((hit & counted).sum() / counted.sum()))
    out = {"pseudo_pck": sum(per_net) / len(per_net)}
    if len(per_net) > 1:
        out |= {f"pseudo_pck_{'abc'[i]}": v for i, v in enumerate(per_net)}
    return out
