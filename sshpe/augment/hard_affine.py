"""The hard-view second affine of Xie et al. (reference §2.2): per-sample θ in normalised coordinates, applied
with the same θ to the hard image and to the teacher heatmap, and its pixel-space equivalent for drawing/tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sshpe.geometry import compose, invert, pixel_to_normalized


def sample_hard_theta(
    batch: int,
    *,
    generator: torch.Generator,
    scale_factor: float = 0.25,
    rot_factor: float = 30.0,
    rot_prob: float = 0.8,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw the reference's hard-view θ for every sample.

    s = clip(1 + scale_factor·N(0,1), 1 − scale_factor, 1 + scale_factor); r = clip(rot_factor·N(0,1),
    −2·rot_factor, 2·rot_factor) degrees with probability `rot_prob`, else 0; no flip, no translation.
    θ = [[s cos r, s sin r, 0], [−s sin r, s cos r, 0]] (the OpenCV rotation matrix about the origin).

    Args:
        batch: number of samples B.
        generator: RNG; draws happen on its device and are moved to `device`.
        device: output device (default: the generator's device).

    Returns:
        (B, 2, 3) θ for `affine_grid` in normalised coordinates (x over width, y over height, each in [−1, 1]).
        Output pixel u samples the input at θ·u, so s > 1 zooms out.
    """
    gdev = generator.device
    draws = torch.randn(batch, 2, generator=generator, device=gdev, dtype=torch.float64)
    use_rot = torch.rand(batch, generator=generator, device=gdev, dtype=torch.float64) < rot_prob
    scale = (1.0 + scale_factor * draws[:, 0]).clamp(1.0 - scale_factor, 1.0 + scale_factor)
    rot = (rot_factor * draws[:, 1]).clamp(-2.0 * rot_factor, 2.0 * rot_factor) * use_rot
    rad = torch.deg2rad(rot)
    cs, sn = scale * torch.cos(rad), scale * torch.sin(rad)
    zero = torch.zeros_like(cs)
    theta = torch.stack([torch.stack([cs, sn, zero], -1), torch.stack([-sn, cs, zero], -1)], -2)
    return theta.to(device=device if device is not None else gdev, dtype=dtype)


def warp_normalized(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp images or heatmaps (B, C, H, W) with normalised-space θ (B, 2, 3); bilinear, zero padding.

    `grid_sample(x, affine_grid(θ, x.shape, align_corners=False), align_corners=False)`, as the reference does
    for both the hard image (256×192) and the teacher heatmap (64×48) with one θ.
    """
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def theta_to_pixel(theta: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Pixel-space map of `warp_normalized(·, θ)` on an (H, W) tensor: input frame -> warped frame.

    A point p of the input (pixel centres at integers) appears at `apply_affine(theta_to_pixel(θ, hw), p)` in the
    warped output. Equals N⁻¹·θ⁻¹·N with N = `sshpe.geometry.pixel_to_normalized(H, W)`; for non-square inputs this
    is a rotation with an aspect-dependent shear (reference §2.2).

    Args:
        theta: (B, 2, 3) normalised θ.
        hw: (H, W) of the warped tensor in px.

    Returns:
        (B, 2, 3) `src_to_dst` in pixels, in θ's dtype (float64 math inside).
    """
    h, w = hw
    norm = pixel_to_normalized(h, w, torch.float64, theta.device).expand(theta.shape[0], 2, 3)
    src_to_dst = compose(invert(norm), compose(invert(theta.to(torch.float64)), norm))
    return src_to_dst.to(theta.dtype)
