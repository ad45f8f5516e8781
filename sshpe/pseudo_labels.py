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
    `threshold` x crop height of it (crop px). Union24 heads on COCO-17 shards compare the mapped channels.

    Returns:
        {"pseudo_pck": mean over networks, "pseudo_pck_a"/"_b"/...: per network when there are several}; empty when
        the batch has no hidden ground truth or no countable joint.
    """
    if "hidden_kpts" not in batch_u:
        return {}
    view = pseudo.view
    gt, vis = map_keypoints(view.canvas_to_crop, view.flip, batch_u["hidden_kpts"], batch_u["hidden_vis"],
                            list(range(batch_u["hidden_kpts"].shape[1])))  # fmt: skip
    if gt.shape[1] != schema.num_joints:  # COCO-17 labels under a union24 head: compare the mapped channels
        src = torch.tensor([max(c, 0) for c in schema.to_coco], device=gt.device)
        has = torch.tensor([c >= 0 for c in schema.to_coco], device=gt.device)
        gt, vis = gt[:, src], vis[:, src] * has
    perm = torch.tensor(schema.flip_index(), device=gt.device)
    fl = view.flip.view(-1, 1)  # the view swapped left/right channels of flipped samples; so do the labels
    gt, vis = torch.where(fl.unsqueeze(-1), gt[:, perm], gt), torch.where(fl, vis[:, perm], vis)
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
