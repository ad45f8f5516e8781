"""`render_preview`: a PNG grid of the easy view and every hard path, joints drawn where the hard views put them."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import smoke_recipe

from sshpe.augment.hard_affine import warp_normalized
from sshpe.evaluation.codec import encode_heatmaps
from sshpe.preview import HEADER_PX, MARKER_BGR, build_preview, read_preview_batch, render_preview

PATHS = "[[], [{kind: joint_cutout}], [{kind: joint_cut_occlusion}, {kind: cutout}]]"
MULTI = ("teacher.kind=single", f"augment.paths={PATHS}")


def _preview(recipe, n: int, seed: int):
    batch, split = read_preview_batch(recipe, n, seed)
    return build_preview(recipe, batch, split, generator=torch.Generator().manual_seed(seed))


def test_grid_size_titles_and_markers(smoke_shards, tmp_path):
    recipe = smoke_recipe(smoke_shards, *MULTI)
    out = render_preview(recipe, tmp_path / "sub" / "grid.png", n=3, seed=5)
    grid = cv2.imread(str(out), cv2.IMREAD_COLOR)
    h, w = recipe.data.input_size
    assert grid.shape == (HEADER_PX + 3 * h, 4 * w, 3)  # 3 rows; easy + 3 paths
    assert not list(out.parent.glob(".*partial"))  # atomic write left no temporary file

    prev = _preview(recipe, 3, 5)  # same seed, same draws
    assert prev.joints_from == "labels" and prev.split == "labeled"  # synthetic unlabeled split has no keypoints
    assert [c.title for c in prev.columns] == ["easy", "affine", "JC", "JO+CO"]
    marker = np.array(MARKER_BGR)
    drawn = 0
    for c, col in enumerate(prev.columns):
        for r in range(3):
            for (x, y), ok in zip(col.kpts[r].tolist(), col.show[r].tolist()):
                if ok:
                    px = grid[HEADER_PX + r * h + int(round(y)), c * w + int(round(x))]
                    assert (px == marker).all(), (c, r, x, y, px)
                    drawn += 1
    assert drawn > 20
    # the marker colour appears nowhere else than around drawn joints: the title band holds none
    assert not (grid[:HEADER_PX] == marker).all(-1).any()


def test_hard_joints_sit_on_the_warped_target_peaks(smoke_shards):
    """The joints drawn on a hard view are where the warped easy-view target (what the student learns) peaks."""
    recipe = smoke_recipe(smoke_shards, *MULTI)
    prev = _preview(recipe, 4, 1)
    easy, hard = prev.columns[0], prev.columns[1]
    assert not torch.equal(easy.kpts, hard.kpts)  # the hard affine moved them
    h, w = recipe.data.input_size
    hm_easy, _ = encode_heatmaps(easy.kpts, easy.show.float() * 2, (h, w), 1, 2.0)  # full-resolution targets
    # the affine-only column is exactly the easy image warped with the preview's θ
    assert torch.allclose(hard.img, warp_normalized(easy.img, prev.theta), atol=1e-5)
    hm_hard = warp_normalized(hm_easy, prev.theta)
    checked = 0
    for b in range(4):
        for k in range(hard.kpts.shape[1]):
            if hard.show[b, k] and hm_hard[b, k].max() > 0.5:
                idx = int(hm_hard[b, k].argmax())
                peak = torch.tensor([idx % w, idx // w], dtype=torch.float32)
                assert (peak - hard.kpts[b, k]).abs().max() <= 1.5, (b, k, peak, hard.kpts[b, k])
                checked += 1
    assert checked > 10


def test_mum_and_teacher_fallback(smoke_shards, tmp_path):
    recipe = smoke_recipe(
        smoke_shards, "teacher.kind=single", "augment.mum={group: 2, grid: [2, 2]}", "train.batch_size=4",
        "data.labeled_split=unlabeled",  # a split without keypoints: joints come from the teacher's argmax
    )  # fmt: skip
    prev = _preview(recipe, 4, 0)
    assert prev.joints_from == "teacher"
    assert [c.title for c in prev.columns] == ["easy", "affine+MUM"]
    out = render_preview(recipe, tmp_path / "mum.png", n=4, seed=0)
    assert cv2.imread(str(out)).shape[:2] == (HEADER_PX + 4 * 64, 2 * 64)
    with pytest.raises(ValueError, match="must be a multiple of augment.mum.group=2"):
        render_preview(recipe, tmp_path / "bad.png", n=3)


def test_union24_head_maps_coco_labels(smoke_shards):
    """A union24 recipe on COCO-17 shards: labels land in the union channels; dummy channels are never drawn."""
    from sshpe.schema import SCHEMAS

    recipe = smoke_recipe(smoke_shards, *MULTI, "model.schema=union24")
    prev = _preview(recipe, 4, 2)
    easy = prev.columns[0]
    assert easy.kpts.shape[1] == 24
    dummies = [c for c in range(24) if c not in SCHEMAS["coco17"].union]
    assert not easy.show[:, dummies].any() and easy.show.any()
