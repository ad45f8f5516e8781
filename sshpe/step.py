"""The pure training step: views, teacher targets, hard paths, losses. No I/O, no ranks, no optimizer.

`train_step` is the SSL math of every method; a method is a recipe (teacher kind + augmentation paths), never a
copy of this function (STYLE habit 5). Everything random comes from the `generator` argument.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sshpe.augment.hard_affine import sample_hard_theta, warp_normalized
from sshpe.augment.mum import make_mix_mask, sample_pose_mum_stages
from sshpe.augment.ops import apply_ops, to_pixels
from sshpe.losses import joints_mse
from sshpe.nets import MixPlan
from sshpe.pseudo_labels import PseudoLabels
from sshpe.recipe import Recipe
from sshpe.views import HEATMAP_STRIDE, make_view, sample_easy_params, view_targets


def easy_view(batch: dict, recipe: Recipe, generator: torch.Generator):
    """Draw easy-view parameters and crop a collated batch (reference §1.3.4); labels must already be in the model's
    channels (`remap_labels`)."""
    e, d = recipe.data.easy, recipe.data
    k, schema = batch["kpts"].shape[1], recipe.schema
    if k != schema.num_joints:
        raise ValueError(
            f"the batch has {k} keypoints but model.schema {schema.name!r} has {schema.num_joints} channels; put the "
            "shards' labels into the model's channels first: remap_labels(batch, joint_map(data schema, model schema))"
        )
    params = sample_easy_params(
        batch["canvas"].shape[0],
        scale_factor=e.scale_factor,
        rot_factor=e.rot_factor,
        rot_prob=e.rot_prob,
        flip=e.flip,
        generator=generator,
        device=batch["canvas"].device,
    )
    return make_view(batch, params, d.input_size, schema.flip_index(), mean=d.mean, std=d.std, color=d.color)


def remap_labels(batch: dict, joint_map: Sequence[int]) -> dict:
    """Put a batch's labels (in the shards' keypoint schema) into the model's channels.

    Args:
        batch: collated batch; "kpts" (B, K_data, 2), "vis" (B, K_data).
        joint_map: for each model channel the data joint that labels it, -1 for none (`sshpe.schema.joint_map`).

    Returns:
        The batch with "kpts" (B, K_model, 2) and "vis" (B, K_model) (unlabelled channels: visibility 0), the same
        for the hidden ground truth "hidden_kpts" / "hidden_vis" when present, and "joint_mask" (B, K_model): 1
        where the data has the channel (the union24 head's dummies are 0, reference §1.1). An identity map returns
        the batch unchanged.
    """
    k_data = batch["kpts"].shape[1]
    if list(joint_map) == list(range(k_data)):
        return batch
    if max(joint_map) >= k_data:
        raise ValueError(f"joint map {list(joint_map)} refers past the batch's {k_data} keypoints")
    device = batch["kpts"].device
    src = torch.tensor([max(j, 0) for j in joint_map], device=device)
    has = torch.tensor([j >= 0 for j in joint_map], device=device, dtype=batch["vis"].dtype)
    out = batch | {"joint_mask": has.expand(batch["kpts"].shape[0], -1)}
    for kpts, vis in (("kpts", "vis"), ("hidden_kpts", "hidden_vis")):
        if kpts in batch:
            out |= {kpts: batch[kpts][:, src] * has[None, :, None], vis: batch[vis][:, src] * has[None]}
    return out


def heatmap_argmax(hm: torch.Tensor) -> torch.Tensor:
    """(B,K,h,w) -> (B,K,2) integer argmax (x, y) in heatmap px, as float."""
    b, k, _, w = hm.shape
    idx = hm.flatten(2).argmax(-1)
    return torch.stack([idx % w, idx // w], -1).float()


def _mix_plan(recipe: Recipe, batch: int, generator: torch.Generator, device) -> MixPlan | None:
    mum = recipe.augment.mum
    if mum is None:
        return None
    mask = lambda: make_mix_mask(batch, mum.group, tuple(mum.grid), generator=generator, device=device)  # noqa: E731
    stages = []
    if mum.pose_mum is not None:
        stages = sample_pose_mum_stages(list(mum.pose_mum.candidates), mum.pose_mum.prob, generator=generator)
    return MixPlan(image_mask=mask(), stage_masks={s: mask() for s in stages}, unmix_after=mum.unmix_after)


def op_params(op, recipe: Recipe) -> dict:
    """Keyword arguments of one augmentation op, sizes in input pixels; RandAugment also needs the normalisation
    to undo."""
    params = to_pixels(op.model_dump(exclude={"kind"}), recipe.data.input_size[0])
    if op.kind == "randaugment":
        params |= {"mean": recipe.data.mean, "std": recipe.data.std}
    return params


def unlabeled_weight(recipe: Recipe, batch_u: dict) -> torch.Tensor:
    """(B,K) unsupervised joint weights: 1 on every channel the labeled data labels (reference §1.4; the MPII + AIC
    protocol weights AIC crops on the MPII channels, SHP mix_mpii_ai.py), 0 on the union24 head's dummies.

    `batch_u` went through `remap_labels` with the labeled shards' joint map (one manifest, one schema).
    """
    if "joint_mask" in batch_u:
        return batch_u["joint_mask"].float()
    b = batch_u["kpts"].shape[0]
    return torch.ones(b, recipe.schema.num_joints, device=batch_u["kpts"].device)


def train_step(
    student: nn.Module,
    teacher: nn.Module | None,
    batch_l: dict,
    batch_u: dict | None,
    recipe: Recipe,
    generator: torch.Generator,
) -> dict[str, torch.Tensor]:
    """One step of supervised + unsupervised loss.

    Args:
        student: `PoseNets` (possibly DDP/DeepSpeed-wrapped); `student(x, net, mix)` -> heatmaps.
        teacher: the EMA/EMAN copy of the student or SSPCM's last-epoch snapshot (unwrapped `PoseNets`), or None
            for none/single/dual.
        batch_l, batch_u: collated batches on the training device (`sshpe.data.batches.collate`).
        generator: drives every random draw of this step.

    Returns:
        {"loss": scalar to backpropagate, "loss_sup": ..., "loss_unsup": ...} (detached parts) and, with unlabeled
        data, "pseudo_labels": the `PseudoLabels` the hard paths were taught with (for metrics; not a scalar).
    """
    kind = recipe.teacher.kind
    num_nets = {"dual": 2, "triple": 3}.get(kind, 1)
    jw = torch.tensor(recipe.schema.joint_weights) if recipe.data.joint_weights else None

    vl = easy_view(batch_l, recipe, generator)
    hm_l, w_l = view_targets(vl, recipe.data.sigma, jw)
    # PoseDual 0.5/0.5, SSPCM 0.5 * (three terms), single networks 1 (reference §2.6, §7)
    sup_scale = 0.5 if num_nets > 1 else 1.0
    loss_sup = sup_scale * sum(joints_mse(student(vl.img, i), hm_l, w_l) for i in range(num_nets))
    out = {"loss_sup": loss_sup.detach()}
    if kind == "none" or batch_u is None:
        out["loss"] = loss_sup
        return out

    # ---- what teaches each student network, from the easy view (no gradient) ----
    vu = easy_view(batch_u, recipe, generator)
    b = vu.img.shape[0]
    w_u = unlabeled_weight(recipe, batch_u)
    with torch.no_grad():
        teach, w_u = teacher_heatmaps(student, teacher, vu.img, kind, num_nets, w_u, recipe)
    joints = [heatmap_argmax(t) * HEATMAP_STRIDE for t in teach]

    # ---- hard views: every path shares one second-affine theta (reference §3.4) ----
    aug = recipe.augment
    theta = None
    if aug.hard_affine:
        theta = sample_hard_theta(b, generator=generator, device=vu.img.device, dtype=vu.img.dtype)
    targets = [warp_normalized(t, theta) if theta is not None else t for t in teach]
    weights = aug.path_weights or (1.0,) * len(aug.paths)

    loss_unsup = vu.img.new_zeros(())
    for p, ops in enumerate(aug.paths):
        op_list = [(op.kind, op_params(op, recipe)) for op in ops]
        for _ in range(aug.repeat):
            for i in range(num_nets):
                x = apply_ops(vu.img, op_list, joints=joints[i], generator=generator, quirks=aug.reference_quirks)
                if theta is not None:
                    x = warp_normalized(x, theta)
                pred = student(x, i, _mix_plan(recipe, b, generator, x.device))
                loss_unsup = loss_unsup + weights[p] * joints_mse(pred, targets[i], w_u)
    out["loss_unsup"] = loss_unsup.detach()
    out["loss"] = loss_sup + aug.unsup_weight * loss_unsup
    out["pseudo_labels"] = PseudoLabels(joints=joints, view=vu)
    return out


def teacher_heatmaps(student, teacher, img, kind: str, num_nets: int, w_u: torch.Tensor, recipe: Recipe):
    """Per student network, the heatmaps that teach it on the easy view, and the unsupervised joint weights.

    single: the live student (train mode, as PoseCons); ema/eman: the EMA teacher; dual: crossed, net a learns
    from net b and vice versa (§2.6); triple (SSPCM §7): a and b crossed, c from the per-joint position-consistent
    ensemble of current and last-epoch predictions, with joints whose mean peak (max T1 + max T2) / 2 <= threshold
    masked.
    """
    if kind in ("ema", "eman"):
        return [teacher(img, 0).float()], w_u
    live = [student(img, i).float() for i in range(min(num_nets, 2))]
    if kind == "single":
        return live, w_u
    if kind == "dual":
        return [live[1], live[0]], w_u
    last = [teacher(img, i).float() for i in range(2)]
    ensemble = position_consistent_ensemble(live, last)
    # SSPCM's filter: the mean of the two nets' peak values, not the peak of their mean map (reference §10.20)
    mean_peak = 0.5 * (live[0].flatten(2).amax(-1) + live[1].flatten(2).amax(-1))
    keep = (mean_peak > recipe.teacher.score_threshold).float()
    return [live[1], live[0], ensemble], w_u * keep


def position_consistent_ensemble(live: list[torch.Tensor], last: list[torch.Tensor]) -> torch.Tensor:
    """SSPCM's correction: per joint, of (T1+T2)/2, (T1'+T2)/2, (T1+T2')/2, (T1'+T2')/2 take the candidate whose two
    members' argmax locations are closest. All maps (B,K,h,w); returns (B,K,h,w)."""
    pairs = [(live[0], live[1]), (last[0], live[1]), (live[0], last[1]), (last[0], last[1])]
    dist = torch.stack([(heatmap_argmax(a) - heatmap_argmax(c)).norm(dim=-1) for a, c in pairs])  # (4,B,K)
    cands = torch.stack([0.5 * (a + c) for a, c in pairs])  # (4,B,K,h,w)
    pick = dist.argmin(0)  # (B,K); ties keep the current-model pair first
    return cands.gather(0, pick[None, ..., None, None].expand(1, *cands.shape[1:]))[0]
