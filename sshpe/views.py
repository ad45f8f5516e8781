"""Easy views: batched crops from stored canvases on the training device (DESIGN decision 2).

A collated batch holds uint8 canvases and records (`sshpe.data.batches.collate`); everything here is a pure function
of those tensors and a `torch.Generator`, so the CPU workers only ever decode JPEGs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sshpe import geometry
from sshpe.evaluation.codec import encode_heatmaps

HEATMAP_STRIDE = 4


@dataclass(frozen=True)
class EasyParams:
    """Per-sample easy-view draws: scale multiplier (B,), rotation in degrees (B,), flip (B,) bool."""

    scale: torch.Tensor
    rot: torch.Tensor
    flip: torch.Tensor


@dataclass(frozen=True)
class View:
    """A batch of crops.

    Attributes:
        img: (B,3,H,W) float, normalised, in the recipe's channel order.
        kpts: (B,K,2) keypoints in crop px (left/right already swapped for flipped samples).
        vis: (B,K) COCO visibility (0/1/2) after the flip swap.
        canvas_to_crop: (B,2,3) affine from canvas px to crop px (float64).
        flip: (B,) bool, the samples that were mirrored (their left/right channels swapped).
    """

    img: torch.Tensor
    kpts: torch.Tensor
    vis: torch.Tensor
    canvas_to_crop: torch.Tensor
    flip: torch.Tensor


def sample_easy_params(
    batch: int,
    *,
    scale_factor: float,
    rot_factor: float,
    rot_prob: float,
    flip: bool,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
) -> EasyParams:
    """Reference §1.3.4: s ~ clip(1 + sf*N, 1-sf, 1+sf); r ~ clip(rf*N, -2rf, 2rf) w.p. rot_prob else 0; flip w.p.
    0.5. All (B,) tensors on `device`."""
    g = dict(generator=generator, device=generator.device)
    s = (torch.randn(batch, **g) * scale_factor + 1).clamp(1 - scale_factor, 1 + scale_factor)
    r = (torch.randn(batch, **g) * rot_factor).clamp(-2 * rot_factor, 2 * rot_factor)
    r = torch.where(torch.rand(batch, **g) <= rot_prob, r, torch.zeros_like(r))
    f = torch.rand(batch, **g) <= 0.5 if flip else torch.zeros(batch, dtype=torch.bool, device=generator.device)
    return EasyParams(s.to(device), r.to(device), f.to(device))


def identity_params(batch: int, device: torch.device | str = "cpu") -> EasyParams:
    """Evaluation crops: no scale change, no rotation, no flip."""
    return EasyParams(
        torch.ones(batch, device=device),
        torch.zeros(batch, device=device),
        torch.zeros(batch, dtype=torch.bool, device=device),
    )


def normalize(img255: torch.Tensor, mean, std, color: str) -> torch.Tensor:
    """(B,3,H,W) RGB values in [0,255] -> normalised network input; `color="bgr"` reverses channels first (and the
    RGB statistics are applied to the BGR channels, as the reference does)."""
    x = img255 / 255.0
    if color == "bgr":
        x = x.flip(1)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - m) / s


def make_view(
    batch: dict, params: EasyParams, input_hw: tuple[int, int], flip_index: list[int], *, mean, std, color: str
) -> View:
    """Crop every canvas of a batch with its easy-view draw.

    The crop map is the reference's `get_affine_transform(c, s*scale, r, (W,H))` composed with the stored
    canvas->image affine; a flip reflects the crop (x -> W - x) and swaps left/right joints.
    """
    h, w = input_hw
    canvas = batch["canvas"]
    b = canvas.shape[0]
    dev = canvas.device
    center = batch["center"].to(dev, torch.float64)
    scale_x = batch["scale"][:, 0].to(dev, torch.float64) * params.scale.to(dev, torch.float64)
    img_to_crop = geometry.crop_matrix(center, scale_x, params.rot.to(dev, torch.float64), (w, h))
    flipped = geometry.compose(geometry.hflip_matrix(w, b, torch.float64, dev), img_to_crop)
    img_to_crop = torch.where(params.flip.view(b, 1, 1), flipped, img_to_crop)
    canvas_to_crop = geometry.compose(img_to_crop, batch["canvas_to_image"].to(dev, torch.float64))

    img = geometry.warp_images(canvas, canvas_to_crop.float(), (h, w))
    img = normalize(img, mean, std, color)
    flip = params.flip.to(dev)
    kpts, vis = map_keypoints(canvas_to_crop, flip, batch["kpts"], batch["vis"], flip_index)
    return View(img=img, kpts=kpts, vis=vis, canvas_to_crop=canvas_to_crop, flip=flip)


def map_keypoints(canvas_to_crop: torch.Tensor, flip: torch.Tensor, kpts: torch.Tensor, vis: torch.Tensor,
                  flip_index: list[int]) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Canvas keypoints (B,K,2) and visibility (B,K) -> the view's: crop px (float32), left/right channels swapped
    where `flip` (B,) is set."""
    dev = canvas_to_crop.device
    out = geometry.apply_affine(canvas_to_crop, kpts.to(dev, torch.float64)).float()
    vis = vis.to(dev)
    perm = torch.tensor(flip_index, device=dev)
    fl = flip.view(-1, 1)
    return torch.where(fl.unsqueeze(-1), out[:, perm], out), torch.where(fl, vis[:, perm], vis)


def view_targets(view: View, sigma: float, joint_weights: torch.Tensor | None = None):
    """Gaussian targets (B,K,h,w) and weights (B,K) for a view (reference §1.3.6), optionally joint-weighted."""
    h, w = view.img.shape[-2] // HEATMAP_STRIDE, view.img.shape[-1] // HEATMAP_STRIDE
    hm, weight = encode_heatmaps(view.kpts, view.vis, (h, w), HEATMAP_STRIDE, sigma)
    if joint_weights is not None:
        weight = weight * joint_weights.to(weight.device).view(1, -1)
    return hm, weight
