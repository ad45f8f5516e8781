"""Coordinate frames and affine maps shared by sharding, the easy view, hard views and evaluation.

Conventions (the reference's, so that published numbers transfer):
* Pixel coordinates put pixel centres at integers: column j, row i is the point (x=j, y=i) (OpenCV convention).
* An affine map is a (..., 2, 3) matrix `M` taking points of a *source* frame to a *destination* frame:
  `dst = M[:, :2] @ src + M[:, 2]`. Names say the frames: `img_to_crop`, `canvas_to_img`, ...
* The crop of an image around centre c with scale s (in units of 200 px, `pixel_std`) and rotation r (degrees,
  counter-clockwise on screen) maps c to (W_out/2, H_out/2) with zoom W_out / (200 s_x), as the reference's
  `get_affine_transform` (no half-pixel offset).
* Images are warped by inverse mapping with `grid_sample(align_corners=False)`; this equals `cv2.warpAffine`
  with bilinear interpolation and a constant-0 border up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

PIXEL_STD = 200.0


# ---------------------------------------------------------------------------------------------------------------
# Boxes
# ---------------------------------------------------------------------------------------------------------------


def clean_box(box: tuple[float, float, float, float], img_w: int, img_h: int) -> tuple[float, ...] | None:
    """Clip a GT box (x, y, w, h) to the image as the reference does (§1.3.2); None if it is empty."""
    x, y, w, h = box
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(img_w - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(img_h - 1.0, y1 + max(0.0, h - 1.0))
    if w * h > 0 and x2 >= x1 and y2 >= y1:
        return (x1, y1, x2 - x1, y2 - y1)
    return None


def box_to_center_scale(
    box: tuple[float, float, float, float], aspect: float, padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Box (x, y, w, h) in image px -> centre (2,) px and scale (2,) in units of 200 px (reference §1.3.3).

    Args:
        aspect: model input width / height (0.75 for 256x192); the box is grown to this aspect ratio.
        padding: the reference's 1.25 context factor.
    """
    x, y, w, h = box
    center = np.array([x + w * 0.5, y + h * 0.5], dtype=np.float64)
    if w > aspect * h:
        h = w / aspect
    elif w < aspect * h:
        w = h * aspect
    scale = np.array([w / PIXEL_STD, h / PIXEL_STD], dtype=np.float64) * padding
    return center, scale


# ---------------------------------------------------------------------------------------------------------------
# Affine matrices (batched torch; works in float32 or float64, follows the inputs' device)
# ---------------------------------------------------------------------------------------------------------------


def crop_matrix(center: torch.Tensor, scale_x: torch.Tensor, rot_deg: torch.Tensor, out_wh: tuple[int, int]):
    """Image -> crop affine of the reference's `get_affine_transform`, batched.

    Args:
        center: (B, 2) crop centre in image px.
        scale_x: (B,) crop width in units of 200 image px (only the width sets the zoom, as the reference).
        rot_deg: (B,) rotation in degrees.
        out_wh: output (width, height) in px: the crop size, or the heatmap size for decoding.

    Returns:
        (B, 2, 3) `img_to_crop`.
    """
    w_out, h_out = out_wh
    zoom = w_out / (scale_x * PIXEL_STD)
    rad = torch.deg2rad(rot_deg)
    cs, sn = torch.cos(rad) * zoom, torch.sin(rad) * zoom
    lin = torch.stack([torch.stack([cs, sn], -1), torch.stack([-sn, cs], -1)], -2)  # zoom * R(-r)
    out_c = torch.tensor([w_out * 0.5, h_out * 0.5], dtype=center.dtype, device=center.device)
    trans = out_c - (lin @ center.unsqueeze(-1)).squeeze(-1)
    return torch.cat([lin, trans.unsqueeze(-1)], -1)


def to_homogeneous(m: torch.Tensor) -> torch.Tensor:
    """(..., 2, 3) -> (..., 3, 3) with a last row (0, 0, 1)."""
    row = torch.zeros(*m.shape[:-2], 1, 3, dtype=m.dtype, device=m.device)
    row[..., 0, 2] = 1
    return torch.cat([m, row], -2)


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """outer o inner: first `inner`, then `outer`; both (..., 2, 3)."""
    return (to_homogeneous(outer) @ to_homogeneous(inner))[..., :2, :]


def invert(m: torch.Tensor) -> torch.Tensor:
    """Inverse of (..., 2, 3) affine maps."""
    lin_inv = torch.linalg.inv(m[..., :2])
    return torch.cat([lin_inv, -(lin_inv @ m[..., 2:])], -1)


def apply_affine(m: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Map points (B, K, 2) with (B, 2, 3) -> (B, K, 2)."""
    return pts @ m[..., :2].transpose(-1, -2) + m[..., 2].unsqueeze(-2)


def hflip_matrix(width: int, batch: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(B, 2, 3) reflection x -> width - x of a crop frame.

    Flipping the *image* (x -> W_img - 1 - x, centre mirrored) before the reference crop with rotation r equals
    this reflection after the crop with rotation -r (derivation in docs/reference-parity.md). Rotations are
    drawn symmetrically, so the easy view draws r and reflects after the crop.
    """
    m = torch.zeros(batch, 2, 3, dtype=dtype, device=device)
    m[:, 0, 0], m[:, 0, 2], m[:, 1, 1] = -1.0, float(width), 1.0
    return m


def pixel_to_normalized(h: int, w: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(2, 3) map from pixel coords (centres at integers) to grid_sample coords with align_corners=False."""
    return torch.tensor([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0]], dtype=dtype, device=device)


def warp_images(
    src: torch.Tensor, src_to_dst: torch.Tensor, out_hw: tuple[int, int], mode: str = "bilinear"
) -> torch.Tensor:
    """Warp a batch of images (B, C, H_src, W_src) with pixel-space affines (B, 2, 3) -> (B, C, *out_hw).

    Equals `cv2.warpAffine(src, M, (W_out, H_out), INTER_LINEAR, BORDER_CONSTANT, 0)` per sample up to float
    rounding. Integer inputs are converted to float32.
    """
    b, _, h_src, w_src = src.shape
    h_out, w_out = out_hw
    mdt = torch.float64 if src_to_dst.dtype == torch.float64 else torch.float32
    n_src = pixel_to_normalized(h_src, w_src, mdt, src.device).expand(b, 2, 3)
    n_dst = pixel_to_normalized(h_out, w_out, mdt, src.device).expand(b, 2, 3)
    theta = compose(n_src, compose(invert(src_to_dst.to(mdt)), invert(n_dst)))
    img = src if src.is_floating_point() else src.float()
    grid = F.affine_grid(theta.to(img.dtype), [b, img.shape[1], h_out, w_out], align_corners=False)
    return F.grid_sample(img, grid, mode=mode, padding_mode="zeros", align_corners=False)


# ---------------------------------------------------------------------------------------------------------------
# Canvases (DESIGN decision 1)
# ---------------------------------------------------------------------------------------------------------------


def canvas_side(input_hw: tuple[int, int], max_scale: float = 1.25, min_scale: float = 0.75) -> int:
    """Largest side in px a canvas of a model input (H, W) needs: the reachable disc at the densest view.

    Any rotation of the crop window zoomed out by `max_scale` stays inside a disc; zoomed in by `min_scale` the crop
    has its highest pixel density. Sampled at that density the disc spans side = max_scale / min_scale *
    sqrt(H^2 + W^2) px, rounded up to a multiple of 8. Canvases are never larger (`canvas_frame`).
    """
    h, w = input_hw
    return int(math.ceil(max_scale / min_scale * math.hypot(h, w) / 8.0) * 8)


def canvas_extent(scale: np.ndarray, max_scale: float = 1.25) -> float:
    """Side in image px of the square around a padded box of scale (2,) (200-px units) that holds the reachable
    disc."""
    return float(2.0 * max_scale * 0.5 * PIXEL_STD * math.hypot(scale[0], scale[1]))


@dataclass(frozen=True)
class CanvasFrame:
    """Where a person's canvas lies in its image.

    Attributes:
        canvas_to_image: (2, 3) float64 affine from canvas px to image px.
        hw: canvas (height, width) in px.
        exact: the canvas is the image's own pixels (an integer translation, no resampling).
    """

    canvas_to_image: np.ndarray
    hw: tuple[int, int]
    exact: bool


def canvas_frame(
    center: np.ndarray, scale: np.ndarray, image_wh: tuple[int, int], side: int, max_scale: float = 1.25
) -> CanvasFrame:
    """The canvas of one person (DESIGN decision 1): the reachable square around `center`, cut to the image, at the
    source's resolution or the densest view's (`side` px across the square), whichever is lower.

    A source coarser than the densest view is never upsampled: the canvas is then an exact crop (image pixels
    copied, `exact`), so a view from it equals the view from the image. A finer source is sampled at `side` px
    across the square. Either way the canvas keeps only the part of the square inside the image, plus one canvas
    pixel of margin; outside it a warp reads zeros, as `cv2.warpAffine` with a constant-0 border reads outside the
    image.

    Args:
        center: (2,) person centre in image px.
        scale: (2,) padded box size in units of 200 px.
        image_wh: (width, height) of the source image in px.
        side: `canvas_side` of the model input.
    """
    extent = canvas_extent(scale, max_scale)
    k = max(1.0, extent / side)  # image px per canvas px
    img_w, img_h = image_wh
    spans = []
    for c, size in ((center[0], img_w), (center[1], img_h)):
        if k == 1.0:
            lo = max(0, math.floor(c - extent / 2))
            hi = min(size - 1, math.ceil(c + extent / 2))
            spans.append((float(lo), max(lo, hi) - lo + 1))
        else:
            origin = c - k * side / 2  # image x of canvas column 0 of the full square
            lo = max(0, math.floor(-origin / k))
            hi = min(side - 1, math.ceil((size - 1 - origin) / k))
            spans.append((origin + k * lo, max(lo, hi) - lo + 1))
    (x0, w), (y0, h) = spans
    c2i = np.array([[k, 0.0, x0], [0.0, k, y0]], dtype=np.float64)
    return CanvasFrame(canvas_to_image=c2i, hw=(int(h), int(w)), exact=k == 1.0)
