"""The pure training step: views, teacher targets, hard paths, losses. No I/O, no ranks, no optimizer.

`train_step` is the SSL math of every method; a method is a recipe (teacher kind + augmentation paths), never a
copy of this function (STYLE habit 5). Everything random comes from the `generator` argument.
"""

from __future__ import annotations

import torch
from torch import nn

from sshpe.augment.hard_affine import sample_hard_theta, warp_normalized
from sshpe.augment.mum import make_mix_mask, sample_pose_mum_stages
from sshpe.augment.ops import apply_ops
from sshpe.losses import joints_mse
from sshpe.nets import MixPlan
from sshpe.recipe import Recipe
from sshpe.views import HEATMAP_STRIDE, make_view, sample_easy_params, view_targets


def easy_view(batch: dict, recipe: Recipe, generator: torch.Generator):
    """Draw easy-view parameters and crop a collated batch (reference §1.3.4)."""
    e, d = recipe.data.easy, recipe.data
    params = sample_easy_params(
        batch["canvas"].shape[0],
        scale_factor=e.scale_factor,
        rot_factor=e.rot_factor,
        rot_prob=e.rot_prob,
        flip=e.flip,
        generator=generator,
        device=batch["canvas"].device,
    )
    return make_view(
        batch, params, d.input_size, recipe.schema.flip_index(), mean=d.mean, std=d.std, color=d.color
    )


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


def _op_params(op, recipe: Recipe) -> dict:
    """Keyword arguments of one augmentation op; RandAugment also needs the normalisation to undo."""
    params = op.model_dump(exclude={"kind"})
    if op.kind == "randaugment":
        params |= {"mean": recipe.data.mean, "std": recipe.data.std}
    return params


def _teacher_of(kind: str, net: int) -> int:
    """Which teacher prediction teaches student network `net`: crossed for dual (reference §2.6)."""
    return 1 - net if kind == "dual" else net


def unlabeled_weight(recipe: Recipe, batch: int, device) -> torch.Tensor:
    """(B,K) unsupervised joint weights: 1, except channels the data never labels (union24 dummies, §1.4)."""
    mapped = torch.tensor([c >= 0 for c in recipe.schema.to_coco], dtype=torch.float32, device=device)
    return mapped.expand(batch, -1)


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
        teacher: the EMA/EMAN copy of the student (unwrapped `PoseNets`), or None for none/single/dual.
        batch_l, batch_u: collated batches on the training device (`sshpe.data.streams.collate`).
        generator: drives every random draw of this step.

    Returns:
        {"loss": scalar to backpropagate, "loss_sup": ..., "loss_unsup": ...} (detached parts).
    """
    kind = recipe.teacher.kind
    num_nets = {"dual": 2}.get(kind, 1)
    jw = torch.tensor(recipe.schema.joint_weights) if recipe.data.joint_weights else None

    vl = easy_view(batch_l, recipe, generator)
    hm_l, w_l = view_targets(vl, recipe.data.sigma, jw)
    loss_sup = sum(joints_mse(student(vl.img, i), hm_l, w_l) for i in range(num_nets)) / num_nets
    out = {"loss_sup": loss_sup.detach()}
    if kind == "none" or batch_u is None:
        out["loss"] = loss_sup
        return out

    # ---- teacher predictions on the easy view (no gradient) ----
    vu = easy_view(batch_u, recipe, generator)
    b = vu.img.shape[0]
    with torch.no_grad():
        if kind in ("ema", "eman"):
            t_hm = [teacher(vu.img, 0).float()]
        else:  # single / dual: the live student(s) in train mode, as the reference
            t_hm = [student(vu.img, i).float() for i in range(num_nets)]
    joints = [heatmap_argmax(t) * HEATMAP_STRIDE for t in t_hm]

    # ---- hard views: every path shares one second-affine theta (reference §3.4) ----
    aug = recipe.augment
    theta = None
    if aug.hard_affine:
        theta = sample_hard_theta(b, generator=generator, device=vu.img.device, dtype=vu.img.dtype)
    targets = [warp_normalized(t, theta) if theta is not None else t for t in t_hm]
    w_u = unlabeled_weight(recipe, b, vu.img.device)
    weights = aug.path_weights or (1.0,) * len(aug.paths)

    loss_unsup = vu.img.new_zeros(())
    for p, ops in enumerate(aug.paths):
        op_list = [(op.kind, _op_params(op, recipe)) for op in ops]
        for _ in range(aug.repeat):
            for i in range(num_nets):
                src = _teacher_of(kind, i)
                x = apply_ops(vu.img, op_list, joints=joints[src], generator=generator, quirks=aug.reference_quirks)
                if theta is not None:
                    x = warp_normalized(x, theta)
                pred = student(x, i, _mix_plan(recipe, b, generator, x.device))
                loss_unsup = loss_unsup + weights[p] * joints_mse(pred, targets[src], w_u)
    out["loss_unsup"] = loss_unsup.detach()
    out["loss"] = loss_sup + aug.unsup_weight * loss_unsup
    return out
