"""`sshpe augment preview`: a PNG grid showing what a recipe's hard paths do to a few unlabeled samples.

One row per sample: the easy view with its target joints, then one column per hard path (ops, shared hard θ, MUM
image mixing) with the joints mapped into that view. Building the columns is pure; drawing and writing are here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from sshpe.atomic import atomic_write_bytes
from sshpe.augment.hard_affine import sample_hard_theta, theta_to_pixel, warp_normalized
from sshpe.augment.mum import make_mix_mask, mix_tiles
from sshpe.augment.ops import apply_ops
from sshpe.data.shard_writer import read_manifest
from sshpe.data.streams import TrainStream
from sshpe.evaluation.predict import data_schema
from sshpe.geometry import apply_affine
from sshpe.recipe import Recipe
from sshpe.schema import joint_map
from sshpe.step import easy_view, heatmap_argmax, op_params, remap_labels
from sshpe.views import HEATMAP_STRIDE

OP_ABBREV = {
    "joint_cutout": "JC",
    "joint_cut_occlusion": "JO",
    "cutout": "CO",
    "cutmix": "CM",
    "mixup": "MU",
    "randaugment": "RA",
}
MARKER_BGR = (255, 0, 255)  # magenta joint markers
MARKER_RADIUS = 2
HEADER_PX = 16  # height of the column-title band above the tiles


@dataclass(frozen=True)
class PreviewColumn:
    """One column of the grid.

    Attributes:
        title: op names of the path ("easy" for the easy view, "affine" for a path without ops).
        img: (B,3,H,W) normalised images in the recipe's channel order.
        kpts: (B,K,2) joints in this column's crop px.
        show: (B,K) bool, joints to draw (labelled and inside the tile).
    """

    title: str
    img: torch.Tensor
    kpts: torch.Tensor
    show: torch.Tensor


@dataclass(frozen=True)
class Preview:
    """The columns of a preview, where its joints came from ("labels" or "teacher"), the split read, and the
    shared hard θ (B,2,3) in normalised coordinates (None when the recipe has no hard affine)."""

    columns: list[PreviewColumn]
    joints_from: str
    split: str
    theta: torch.Tensor | None


def path_title(ops, *, hard_affine: bool, mum: bool) -> str:
    """Column title of a hard path: op abbreviations joined by '+' ("affine", or "plain" without the hard affine,
    when the path has no ops), with "+MUM" when the view is tile-mixed."""
    title = "+".join(OP_ABBREV[op.kind] for op in ops) or ("affine" if hard_affine else "plain")
    return title + ("+MUM" if mum else "")


def read_preview_batch(recipe: Recipe, n: int, seed: int) -> tuple[dict, str]:
    """`n` samples of the unlabeled split, or of the labeled split when the unlabeled one carries no keypoints
    (the reference protocol drops them) or the recipe has none. Returns (collated batch, split name)."""
    d = recipe.data
    splits = [s for s in (d.unlabeled_split, d.labeled_split) if s is not None]
    batch, split = None, splits[0]
    for split in splits:
        batch = next(iter(TrainStream(d.shards, split, seed=seed, rank=0, world_size=1, batch_size=n)))
        if batch["vis"].gt(0).any():
            break
    manifest = read_manifest(d.shards)
    return remap_labels(batch, joint_map(data_schema(manifest, d.shards), recipe.schema)), split


def _teacher_joints(recipe: Recipe, img: torch.Tensor) -> torch.Tensor:
    """(B,K,2) input-px argmax joints of a freshly built network (the recipe's init: ImageNet or random)."""
    from sshpe.nets import build_nets

    nets = build_nets(recipe).eval()
    with torch.no_grad():
        return heatmap_argmax(nets(img, 0).float()) * HEATMAP_STRIDE


def _inside(kpts: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    h, w = hw
    return (kpts[..., 0] >= 0) & (kpts[..., 0] <= w - 1) & (kpts[..., 1] >= 0) & (kpts[..., 1] <= h - 1)


def build_preview(recipe: Recipe, batch: dict, split: str, *, generator: torch.Generator) -> Preview:
    """Easy view plus every hard path of a recipe for one batch, with joints in each view's frame.

    Joints are the samples' ground-truth keypoints mapped into the easy view when the batch is labelled
    ("labels"; unlabelled joints sit at (0, 0), like the reference's argmax of an empty heatmap), else the argmax
    of a freshly built teacher network ("teacher"). Every path shares one hard θ (reference §3.4); a hard view's
    joints are the easy joints mapped with `theta_to_pixel(θ)`. With MUM the hard image is tile-mixed as the
    student sees it, while the joints stay those of the row's own sample (what it must predict after unmixing);
    Pose-MUM's feature-level mixes are not visible in pixels.

    Args:
        batch: collated samples (`sshpe.data.batches.collate`) with labels in the recipe's schema.
        generator: drives the easy view, ops, θ and MUM masks.
    """
    ve = easy_view(batch, recipe, generator)
    b, _, h, w = ve.img.shape
    labelled = bool(ve.vis.gt(0).any())
    if labelled:
        joints = torch.where(ve.vis.gt(0).unsqueeze(-1), ve.kpts, torch.zeros_like(ve.kpts))
        seen = ve.vis.gt(0)
    else:
        joints = _teacher_joints(recipe, ve.img)
        seen = torch.ones(joints.shape[:2], dtype=torch.bool)
    columns = [PreviewColumn("easy", ve.img, joints, seen & _inside(joints, (h, w)))]

    aug = recipe.augment
    theta = sample_hard_theta(b, generator=generator, dtype=ve.img.dtype) if aug.hard_affine else None
    hard_kpts = joints
    if theta is not None:
        hard_kpts = apply_affine(theta_to_pixel(theta.double(), (h, w)), joints.double()).float()
    mum = aug.mum
    if mum is not None and b % mum.group:
        raise ValueError(f"preview of {recipe.name}: --n {b} must be a multiple of augment.mum.group={mum.group}")
    for ops in aug.paths:
        op_list = [(op.kind, op_params(op, recipe)) for op in ops]
        x = apply_ops(ve.img, op_list, joints=joints, generator=generator, quirks=aug.reference_quirks)
        if theta is not None:
            x = warp_normalized(x, theta)
        if mum is not None:
            x = mix_tiles(x, make_mix_mask(b, mum.group, tuple(mum.grid), generator=generator))
        show = seen & _inside(hard_kpts, (h, w))
        title = path_title(ops, hard_affine=aug.hard_affine, mum=mum is not None)
        columns.append(PreviewColumn(title, x, hard_kpts, show))
    return Preview(columns, "labels" if labelled else "teacher", split, theta)


def denormalize(img: torch.Tensor, recipe: Recipe) -> np.ndarray:
    """(B,3,H,W) normalised network input -> (B,H,W,3) uint8 BGR for OpenCV (undoes `sshpe.views.normalize`)."""
    d = recipe.data
    mean = torch.tensor(d.mean, dtype=img.dtype).view(1, 3, 1, 1)
    std = torch.tensor(d.std, dtype=img.dtype).view(1, 3, 1, 1)
    x = (img.detach().cpu() * std + mean).clamp(0, 1) * 255
    if d.color == "rgb":  # network order RGB -> OpenCV BGR; a "bgr" recipe already feeds BGR
        x = x.flip(1)
    return x.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def draw_grid(preview: Preview, recipe: Recipe) -> np.ndarray:
    """(HEADER_PX + B*H, C*W, 3) uint8 BGR grid: a title band, then one row per sample, one column per view."""
    cols = preview.columns
    b, _, h, w = cols[0].img.shape
    grid = np.full((HEADER_PX + b * h, len(cols) * w, 3), 255, dtype=np.uint8)
    for c, col in enumerate(cols):
        scale = min(0.4, 0.9 * w / max(1, 7 * len(col.title)))  # shrink long titles to fit the column
        cv2.putText(grid, col.title, (c * w + 2, HEADER_PX - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1)
        tiles = denormalize(col.img, recipe)
        for r in range(b):
            y0, x0 = HEADER_PX + r * h, c * w
            tile = np.ascontiguousarray(tiles[r])
            centres = [(round(x), round(y)) for (x, y), ok in zip(col.kpts[r].tolist(), col.show[r].tolist()) if ok]
            for xy in centres:  # dark outlines first, so no outline covers another joint's marker
                cv2.circle(tile, xy, MARKER_RADIUS + 1, (0, 0, 0), -1)
            for xy in centres:
                cv2.circle(tile, xy, MARKER_RADIUS, MARKER_BGR, -1)
            grid[y0 : y0 + h, x0 : x0 + w] = tile
    return grid


def write_png(path: Path, image: np.ndarray) -> Path:
    """Write a BGR image as PNG atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError(f"{path}: OpenCV could not encode the preview as PNG")
    return atomic_write_bytes(path, buf.tobytes())


def render_preview(recipe: Recipe, out: Path, *, n: int = 4, seed: int = 0) -> Path:
    """Render a recipe's augmentation preview grid to `out` (PNG) and return the path.

    Reads `n` samples (the unlabeled split, or the labeled split when the unlabeled one has no keypoints), draws
    the easy view and every hard path with `generator.manual_seed(seed)`; see `build_preview` for where the joints
    come from. Tiles are the recipe's input size; the grid is (16 + n*H) x ((1 + #paths)*W) px.
    """
    if n < 1:
        raise ValueError(f"preview: --n must be >= 1 (got {n})")
    batch, split = read_preview_batch(recipe, n, seed)
    generator = torch.Generator().manual_seed(seed)
    preview = build_preview(recipe, batch, split, generator=generator)
    return write_png(Path(out), draw_grid(preview, recipe))


__all__ = ["Preview", "PreviewColumn", "build_preview", "draw_grid", "read_preview_batch", "render_preview"]
