"""The pure train step: every student parameter gets a gradient for every teacher kind, teachers get none,
dual networks teach each other, and a step is a deterministic function of its generator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import smoke_recipe

from sshpe.data.streams import TrainStream
from sshpe.nets import build_nets
from sshpe.schema import COCO17, MPII16, UNION24, joint_map
from sshpe.step import easy_view, remap_labels, train_step
from sshpe.teachers import make_teacher

PATHS = "[[{kind: joint_cutout}], [{kind: joint_cut_occlusion}, {kind: cutout}], [{kind: cutmix}, {kind: mixup}]]"


def _batches(shards, n=4, recipe=None):
    """A labeled and an unlabeled batch, labels put into the recipe's model channels as the loop does."""
    lab = next(iter(TrainStream(shards, "labeled", seed=0, rank=0, world_size=1, batch_size=n)))
    unl = next(iter(TrainStream(shards, "unlabeled", seed=1, rank=0, world_size=1, batch_size=n)))
    if recipe is not None:
        jmap = joint_map(COCO17, recipe.schema)  # the smoke shards hold COCO-17 labels
        lab, unl = remap_labels(lab, jmap), remap_labels(unl, jmap)
    return lab, unl


def _setup(shards, *overrides):
    recipe = smoke_recipe(shards, "train.batch_size=4", *overrides)
    torch.manual_seed(0)
    nets = build_nets(recipe)
    teacher = make_teacher(nets) if recipe.teacher.kind in ("ema", "eman", "triple") else None
    return recipe, nets, teacher


@pytest.mark.parametrize(
    "overrides",
    [
        ["teacher.kind=none"],
        ["teacher.kind=single", f"augment.paths={PATHS}"],
        ["teacher.kind=dual", f"augment.paths={PATHS}", "augment.reference_quirks=true"],
        ["teacher.kind=eman", "teacher.decay=0.6", "augment.paths=[[]]"],
        [
            "teacher.kind=triple",
            "teacher.score_threshold=0.0",
            "augment.paths=[[{kind: joint_cut_occlusion}]]",
            "model.schema=union24",
        ],
        ["teacher.kind=ema", "augment.hard_affine=false", "augment.mum={group: 2, grid: [2, 2]}"],
        [
            "teacher.kind=eman",
            "augment.hard_affine=false",
            "augment.mum={group: 4, grid: [4, 4], pose_mum: {candidates: [layer1, layer2, layer3], prob: 1.0}}",
        ],
    ],
    ids=["none", "single-multipath", "dual-quirks", "eman", "triple-union24", "ema-mum", "eman-posemum"],
)
def test_every_student_parameter_gets_a_gradient(smoke_shards, overrides):
    recipe, nets, teacher = _setup(smoke_shards, *overrides)
    lab, unl = _batches(smoke_shards, recipe=recipe)
    out = train_step(nets, teacher, lab, unl, recipe, torch.Generator().manual_seed(0))
    out["loss"].backward()
    missing = [n for n, p in nets.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    # (timm zero-initialises each residual block's last BN, so some grads are exactly 0 at step 0, never None)
    assert all(p.grad.abs().sum() > 0 for net in nets.nets for p in net.final_layer.parameters())
    if recipe.teacher.kind != "none":
        assert out["loss_unsup"] > 0
    if teacher is not None:
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
        assert not teacher.training if recipe.teacher.kind == "eman" else True


def test_step_is_deterministic_given_the_generator(smoke_shards):
    recipe, nets, _ = _setup(smoke_shards, "teacher.kind=single", f"augment.paths={PATHS}")
    lab, unl = _batches(smoke_shards)
    state = {k: v.clone() for k, v in nets.state_dict().items()}
    a = train_step(nets, None, lab, unl, recipe, torch.Generator().manual_seed(5))["loss"]
    nets.load_state_dict(state)
    b = train_step(nets, None, lab, unl, recipe, torch.Generator().manual_seed(5))["loss"]
    nets.load_state_dict(state)
    c = train_step(nets, None, lab, unl, recipe, torch.Generator().manual_seed(6))["loss"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_dual_networks_teach_each_other(smoke_shards):
    """Silence net b: if the targets were not crossed, both unsupervised terms would be 0."""
    recipe, nets, _ = _setup(smoke_shards, "teacher.kind=dual", "augment.hard_affine=false", "augment.paths=[[]]")
    with torch.no_grad():
        for p in nets.nets[1].final_layer.parameters():
            p.zero_()
    lab, unl = _batches(smoke_shards)
    out = train_step(nets, None, lab, unl, recipe, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    easy_view(lab, recipe, g)
    vu = easy_view(unl, recipe, g)
    with torch.no_grad():
        a = nets(vu.img, 0).float()
    # L(Q_a, T_b = 0) + L(Q_b = 0, T_a) = 0.5 mean(a^2) + 0.5 mean(a^2)
    assert out["loss_unsup"] > 0
    torch.testing.assert_close(out["loss_unsup"], a.pow(2).mean(), rtol=1e-4, atol=1e-9)


def test_unlabeled_weights_mask_only_union_dummies(smoke_shards):
    """Unlabeled crops are weighted on the channels the labeled data labels (reference §1.4; MPII + AIC: the MPII
    channels), whatever the unlabeled labels were."""
    from sshpe.step import unlabeled_weight

    _, unl = _batches(smoke_shards)
    coco = unlabeled_weight(smoke_recipe(smoke_shards), unl)
    assert coco.shape == (4, 17) and torch.all(coco == 1)
    union_recipe = smoke_recipe(smoke_shards, "model.schema=union24")
    union = unlabeled_weight(union_recipe, remap_labels(unl, joint_map(COCO17, union_recipe.schema)))
    assert union.shape == (4, 24) and union[0].sum() == 17 and union[0, 0] == 0  # root is a dummy for COCO
    assert torch.equal(union[0].nonzero().flatten().sort().values, torch.tensor(sorted(COCO17.union)))
    mpii = remap_labels({"kpts": torch.zeros(4, 16, 2), "vis": torch.zeros(4, 16)}, joint_map(MPII16, UNION24))
    w = unlabeled_weight(union_recipe, mpii)
    assert w[0].sum() == 16 and w[0, UNION24.names.index("root")] == 1 and w[0, UNION24.names.index("nose")] == 0


def test_remap_labels_puts_data_joints_into_model_channels():
    kpts = torch.arange(4 * 16 * 2, dtype=torch.float32).view(4, 16, 2)
    vis = torch.full((4, 16), 2.0)
    batch = {"kpts": kpts, "vis": vis, "canvas": torch.zeros(4, 3, 8, 8)}
    out = remap_labels(batch, joint_map(MPII16, UNION24))
    head_top = UNION24.names.index("head_top")
    assert out["kpts"].shape == (4, 24, 2) and torch.equal(out["kpts"][:, head_top], kpts[:, 9])  # MPII head top
    assert out["vis"][0, UNION24.names.index("belly")] == 0 and out["vis"][0].sum() == 2.0 * 16
    assert remap_labels(batch, list(range(16))) is batch  # identity: untouched
    with pytest.raises(ValueError, match="put the shards' labels into the model's channels"):
        easy_view(batch, smoke_recipe(Path("unused"), "model.schema=union24"), torch.Generator())


def test_sspcm_score_filter_is_the_mean_of_the_two_peaks(smoke_shards):
    """SSPCM keeps a joint when (max T1 + max T2) / 2 > 0.1, not when the averaged map peaks above it (§10.20)."""
    from sshpe.step import teacher_heatmaps

    recipe = smoke_recipe(smoke_shards, "teacher.kind=triple", "teacher.score_threshold=0.1")
    t1, t2 = torch.zeros(1, 17, 8, 6), torch.zeros(1, 17, 8, 6)
    t1[0, 0, 1, 1], t2[0, 0, 6, 4] = 0.15, 0.15  # joint 0: peaks 0.15 apart -> averaged map peaks at 0.075; kept
    t1[0, 1, 2, 2], t2[0, 1, 2, 2] = 0.15, 0.04  # joint 1: mean peak 0.095 -> masked
    live = [t1, t2]
    student = lambda img, i: live[i]  # noqa: E731
    _, w = teacher_heatmaps(student, student, torch.zeros(1), "triple", 3, torch.ones(1, 17), recipe)
    assert w[0, 0] == 1 and w[0, 1] == 0 and w[0, 2] == 0  # joint 2: both peaks 0
