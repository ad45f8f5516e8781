"""Heatmap codec: Gaussian targets (encode), 'shift' and 'dark' decoding, and flip-test un-flipping.

Batched pure torch that follows the input's device; reproduces the reference (HRNet/SHP `generate_target`,
`get_max_preds` + quarter offset, MA's DARK `gaussian_blur` + `taylor`, `flip_back` + SHIFT_HEATMAP), §1.3.6, §1.8.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

DecodeMode = Literal["shift", "dark"]

# cv2.getGaussianKernel's fixed kernels for odd sizes <= 7 with sigma <= 0 (OpenCV `small_gaussian_tab`).
_CV2_SMALL_GAUSSIAN = {
    1: (1.0,),
    3: (0.25, 0.5, 0.25),
    5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
    7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
}


# ---------------------------------------------------------------------------------------------------------------
# Encode
# ---------------------------------------------------------------------------------------------------------------


def encode_heatmaps(
    kpts_crop: torch.Tensor, vis: torch.Tensor, heatmap_hw: tuple[int, int], stride: int, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render the reference's integer-centred Gaussian targets (reference §1.3.6, HRNet `generate_target`).

    Each joint gets an unnormalised Gaussian (peak 1) on a window of (6σ+1)² heatmap px around
    μ = int(x / stride + 0.5) (truncation toward zero, as Python's `int`), clipped to the map, zero elsewhere.

    Args:
        kpts_crop: (B, K, 2) keypoints xy in crop (model input) px.
        vis: (B, K) visibility; > 0 counts as labelled.
        heatmap_hw: (h, w) heatmap size in px.
        stride: crop px per heatmap px (4 for 256x192 -> 64x48).
        sigma: Gaussian std in heatmap px (2 at 256x192, 3 at 384x288).

    Returns:
        hm: (B, K, h, w) float32 targets; all zero for joints of weight 0.
        weight: (B, K) float32; 1 for visible joints whose window touches the map, else 0.
    """
    h, w = heatmap_hw
    dev = kpts_crop.device
    tmp = 3.0 * sigma
    x0 = math.floor((2.0 * tmp + 1.0) / 2.0)  # the reference's `size // 2`
    mu = torch.trunc(kpts_crop / stride + 0.5)
    ul = torch.trunc(mu - tmp)  # (B, K, 2), window [ul, br) in heatmap px
    br = torch.trunc(mu + tmp + 1.0)
    outside = (ul[..., 0] >= w) | (ul[..., 1] >= h) | (br[..., 0] < 0) | (br[..., 1] < 0)
    weight = ((vis > 0) & ~outside).to(torch.float32)

    xs = torch.arange(w, device=dev, dtype=torch.float32)
    ys = torch.arange(h, device=dev, dtype=torch.float32)
    ul32, br32 = ul.to(torch.float32), br.to(torch.float32)
    in_x = (xs >= ul32[..., 0:1]) & (xs < br32[..., 0:1])  # (B, K, w)
    in_y = (ys >= ul32[..., 1:2]) & (ys < br32[..., 1:2])  # (B, K, h)
    dx2 = (xs - ul32[..., 0:1] - x0) ** 2  # offsets inside the reference's g window, integer-valued
    dy2 = (ys - ul32[..., 1:2] - x0) ** 2
    g = torch.exp(-(dx2.unsqueeze(-2) + dy2.unsqueeze(-1)) / (2 * sigma**2))  # (B, K, h, w)
    keep = in_y.unsqueeze(-1) & in_x.unsqueeze(-2) & (weight > 0)[..., None, None]
    hm = torch.where(keep, g, torch.zeros((), device=dev, dtype=torch.float32))
    return hm, weight


# ---------------------------------------------------------------------------------------------------------------
# Decode
# ---------------------------------------------------------------------------------------------------------------


def _argmax_coords(hm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HRNet `get_max_preds`: (B, K, h, w) -> integer peak xy (B, K, 2) (zeroed where maxval <= 0), maxvals (B, K)."""
    w = hm.shape[-1]
    flat = hm.flatten(-2)
    idx = flat.argmax(-1)  # first maximum, as np.argmax
    maxvals = flat.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    coords = torch.stack([idx % w, torch.div(idx, w, rounding_mode="floor")], -1).to(hm.dtype)
    return coords * (maxvals > 0).unsqueeze(-1), maxvals


def _sample_at(hm: torch.Tensor, px: torch.Tensor, py: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """hm[b, k, py+dy, px+dx] for (B, K) integer positions; indices are clamped (callers mask the result)."""
    h, w = hm.shape[-2:]
    x = (px + dx).clamp(0, w - 1)
    y = (py + dy).clamp(0, h - 1)
    return hm.flatten(-2).gather(-1, (y * w + x).unsqueeze(-1)).squeeze(-1)


def _quarter_offset(hm: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """HRNet's POST_PROCESS: move 0.25 px toward the higher neighbour where 1 < px < w-1 and 1 < py < h-1."""
    h, w = hm.shape[-2:]
    px = torch.floor(coords[..., 0] + 0.5).long()
    py = torch.floor(coords[..., 1] + 0.5).long()
    inside = (px > 1) & (px < w - 1) & (py > 1) & (py < h - 1)
    diff_x = _sample_at(hm, px, py, 1, 0) - _sample_at(hm, px, py, -1, 0)
    diff_y = _sample_at(hm, px, py, 0, 1) - _sample_at(hm, px, py, 0, -1)
    offset = 0.25 * torch.stack([torch.sign(diff_x), torch.sign(diff_y)], -1)
    return coords + offset * inside.unsqueeze(-1).to(coords.dtype)


def gaussian_kernel1d(kernel: int, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """cv2.getGaussianKernel(kernel, 0) as a (kernel,) tensor: σ = 0.3·((k−1)·0.5 − 1) + 0.8, sum 1.

    Odd sizes <= 7 use OpenCV's fixed tables, as cv2 does.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"dark_kernel must be a positive odd integer (cv2.GaussianBlur), got {kernel}")
    if kernel in _CV2_SMALL_GAUSSIAN:
        return torch.tensor(_CV2_SMALL_GAUSSIAN[kernel], dtype=dtype, device=device)
    sigma = 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8
    x = torch.arange(kernel, dtype=torch.float64) - (kernel - 1) * 0.5
    g = torch.exp(-0.5 * x**2 / sigma**2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def blur_heatmaps(hm: torch.Tensor, kernel: int) -> torch.Tensor:
    """MA's DARK `gaussian_blur`: zero-padded separable Gaussian blur of (B, K, h, w), rescaled to each map's max.

    The reference pads by (k-1)//2 zeros and blurs with cv2 (whose border then never reaches the kept region),
    which equals a zero-padded convolution.
    """
    b, k, h, w = hm.shape
    g = gaussian_kernel1d(kernel, hm.dtype, hm.device)
    r = (kernel - 1) // 2
    x = hm.reshape(b * k, 1, h, w)
    x = F.conv2d(x, g.view(1, 1, 1, kernel), padding=(0, r))
    x = F.conv2d(x, g.view(1, 1, kernel, 1), padding=(r, 0)).reshape(b, k, h, w)
    origin_max = hm.flatten(-2).amax(-1)
    blur_max = x.flatten(-2).amax(-1)
    # An all-zero map has blur_max 0 (the reference divides by zero there); scale it by 0 instead.
    ratio = torch.where(blur_max != 0, origin_max / torch.where(blur_max != 0, blur_max, 1.0), 0.0)
    return x * ratio[..., None, None]


def _taylor_step(log_hm: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """MA's DARK `taylor`: one Newton step on the log-heatmap where 2 <= px <= w-3 and 2 <= py <= h-3."""
    h, w = log_hm.shape[-2:]
    px, py = coords[..., 0].long(), coords[..., 1].long()  # int(coord): coords are integer peaks here
    inside = (px > 1) & (px < w - 2) & (py > 1) & (py < h - 2)

    def at(dx: int, dy: int) -> torch.Tensor:
        return _sample_at(log_hm, px, py, dx, dy)

    c = at(0, 0)
    dx = 0.5 * (at(1, 0) - at(-1, 0))
    dy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = 0.25 * (at(2, 0) - 2 * c + at(-2, 0))
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    dyy = 0.25 * (at(0, 2) - 2 * c + at(0, -2))
    det = dxx * dyy - dxy**2
    ok = inside & (det != 0)
    safe_det = torch.where(ok, det, torch.ones_like(det))
    off_x = -(dyy * dx - dxy * dy) / safe_det  # -H^-1 @ grad, H = [[dxx, dxy], [dxy, dyy]]
    off_y = -(dxx * dy - dxy * dx) / safe_det
    offset = torch.stack([off_x, off_y], -1) * ok.unsqueeze(-1).to(coords.dtype)
    return coords + offset


def decode_heatmaps(
    hm: torch.Tensor, mode: DecodeMode = "shift", dark_kernel: int = 11
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps -> keypoints and confidences (reference §1.8).

    'shift': argmax, coordinates zeroed where maxval <= 0, then the quarter-pixel offset toward the higher
    neighbour. 'dark': argmax, then blur (`dark_kernel`), floor 1e-10, log and one Newton step (no quarter offset).

    Args:
        hm: (B, K, h, w) predicted heatmaps (any float dtype; computed in float32 or float64).
        mode: 'shift' (reference default) or 'dark' (MA `--post_type dark`).
        dark_kernel: odd Gaussian kernel size of the 'dark' blur (reference 11).

    Returns:
        kpts_hm: (B, K, 2) xy in heatmap px (pixel centres at integers).
        maxvals: (B, K) the heatmap maximum of each channel (before any blur).
    """
    if hm.ndim != 4:
        raise ValueError(f"decode_heatmaps expects heatmaps of shape (B, K, h, w), got {tuple(hm.shape)}")
    if hm.dtype != torch.float64:
        hm = hm.float()
    coords, maxvals = _argmax_coords(hm)
    if mode == "shift":
        return _quarter_offset(hm, coords), maxvals
    if mode == "dark":
        log_hm = torch.log(blur_heatmaps(hm, dark_kernel).clamp_min(1e-10))
        return _taylor_step(log_hm, coords), maxvals
    raise ValueError(f"decode mode must be one of ['shift', 'dark'], got {mode!r}")


# ---------------------------------------------------------------------------------------------------------------
# Flip test
# ---------------------------------------------------------------------------------------------------------------


def flip_back(hm_flipped: torch.Tensor, flip_index: list[int], shift: bool = True) -> torch.Tensor:
    """Undo a horizontal flip of the input on its predicted heatmaps (HRNet `flip_back` + SHIFT_HEATMAP).

    Args:
        hm_flipped: (B, K, h, w) heatmaps predicted for the flipped input.
        flip_index: channel permutation of the schema (`KeypointSchema.flip_index()`), length K.
        shift: True moves the result one column right (`out[..., 1:] = out[..., :-1]`; column 0 keeps its value);
            False translates it 0.75 px right with bilinear sampling and zero padding, as the reference's
            `SHIFT_HEATMAP: false` branch (an `affine_grid` shift of 1.5 / w; reference §10.22).

    Returns:
        (B, K, h, w) heatmaps in the frame and channel order of the un-flipped input.
    """
    if len(flip_index) != hm_flipped.shape[1]:
        raise ValueError(
            f"flip_index has {len(flip_index)} entries but the heatmaps have {hm_flipped.shape[1]} channels; "
            "use the flip_index() of the schema the model was trained with"
        )
    out = hm_flipped.flip(-1)[:, flip_index]
    if shift:
        return torch.cat([out[..., :1], out[..., :-1]], -1)
    b, _, _, w = out.shape
    theta = out.new_tensor([[1.0, 0.0, -1.5 / w], [0.0, 1.0, 0.0]]).expand(b, 2, 3)
    grid = F.affine_grid(theta, list(out.shape), align_corners=False)
    return F.grid_sample(out, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
