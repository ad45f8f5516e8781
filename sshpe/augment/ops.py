"""Batched strong-view ops on normalised easy-view images (reference §2.3, §3.2): Joint Cutout (JC), Joint
Cut-Occlusion (JO), CutOut (CO), CutMix (CM), MixUp (MU), the `OPS` table keyed by the recipe's op kinds and
`apply_ops`. Default = intended semantics; `quirks=True` = the reference code's behaviour (DESIGN decision 8).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from sshpe.augment.randaugment import randaugment_normalized


class OpTrace(NamedTuple):
    """What a stochastic op did, for tests and debug drawing (returned with `return_trace=True`).

    Attributes:
        boxes: (B, K, 4) long (x0, y0, x1, y1) in image px, half-open [x0, x1) × [y0, y1), clipped to the image:
            the regions the op wrote (empty boxes have x0 == x1 or y0 == y1). None for MixUp.
        partner: (B,) long index of the batch image each sample took pixels from (CM, MU permutation; JO source).
        lam: () weight of the sample itself for MixUp.
    """

    boxes: torch.Tensor | None = None
    partner: torch.Tensor | None = None
    lam: torch.Tensor | None = None


def _randint(
    low: int, high: int, size: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Integers uniform in [low, high), drawn on the generator's device, moved to `device`."""
    return torch.randint(low, high, size, generator=generator, device=generator.device).to(device)


def _randn(size: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(size, generator=generator, device=generator.device, dtype=torch.float32).to(device)


def _randperm(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def _box_mask(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, K, 4) boxes (x0, y0, x1, y1) -> (B, K, H, W) bool membership of each half-open box."""
    cols = torch.arange(w, device=boxes.device).view(1, 1, 1, w)
    rows = torch.arange(h, device=boxes.device).view(1, 1, h, 1)
    x0, y0, x1, y1 = (boxes[..., i, None, None] for i in range(4))
    return (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)


def _clip_boxes(x0: torch.Tensor, y0: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Stack box bounds (B, K) into (B, K, 4), clipped to the image so they state the written region."""
    x0, x1 = x0.clamp(0, w), x1.clamp(0, w)
    y0, y1 = y0.clamp(0, h), y1.clamp(0, h)
    return torch.stack([x0, y0, torch.maximum(x0, x1), torch.maximum(y0, y1)], -1)


def _jittered_joints(joints: torch.Tensor, jitter: float, generator: torch.Generator) -> torch.Tensor:
    """(B, J, 2) joints + N(0, jitter²) per axis, truncated toward zero -> (B, J, 2) long (reference `int()`)."""
    noise = _randn(tuple(joints.shape[:2]) + (2,), generator, joints.device) * jitter
    return torch.trunc(joints[..., :2].float() + noise).long()


def _check_joints(joints: torch.Tensor | None, img: torch.Tensor, op: str) -> torch.Tensor:
    if joints is None or joints.dim() != 3 or joints.shape[0] != img.shape[0] or joints.shape[-1] < 2:
        got = None if joints is None else tuple(joints.shape)
        raise ValueError(
            f"{op}: needs joints of shape (B, J, 2) in input px with B = {img.shape[0]}, got {got}; "
            "pass the argmax of the teacher's easy-view heatmaps times the stride"
        )
    return joints.to(img.device)


def joint_cutout(
    img: torch.Tensor,
    joints: torch.Tensor | None = None,
    *,
    num: int = 5,
    jitter: float = 10.0,
    half_min: int = 10,
    half_max: int = 19,
    generator: torch.Generator,
    quirks: bool = False,
    return_trace: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, OpTrace]:
    """Joint Cutout (JC, reference §2.3): zero `num` boxes around jittered joints of every image.

    Each joint of each image gets a jitter N(0, jitter²) px per axis (truncated toward zero) and half-extents
    (h_x, h_y) uniform in {half_min..half_max}; `num` joint indices are drawn per image uniformly with replacement
    from the J channels, and [x−h_x, x+h_x) × [y−h_y, y+h_y) is set to 0 (the mean colour) in all channels.

    Args:
        img: (B, C, H, W) normalised images.
        joints: (B, J, 2) joints (x, y) in input px (teacher argmax × stride; J = 17 or the 24 union channels).
        quirks: reproduce the reference's clamp bug: x clamped to [0, H] and y to [0, W], so rows ≥ W are never
            masked (the bottom quarter of a 256×192 crop).
        return_trace: also return an `OpTrace` with the (B, num, 4) boxes written.

    Returns:
        (B, C, H, W) new tensor (and the trace).
    """
    joints = _check_joints(joints, img, "joint_cutout")
    b, _, h, w = img.shape
    n_joints = joints.shape[1]
    centres = _jittered_joints(joints, jitter, generator)
    half = _randint(half_min, half_max + 1, (b, n_joints, 2), generator, img.device)
    idx = _randint(0, n_joints, (b, num), generator, img.device)
    c = torch.gather(centres, 1, idx[..., None].expand(b, num, 2))
    hs = torch.gather(half, 1, idx[..., None].expand(b, num, 2))
    x0, x1 = c[..., 0] - hs[..., 0], c[..., 0] + hs[..., 0]
    y0, y1 = c[..., 1] - hs[..., 1], c[..., 1] + hs[..., 1]
    if quirks:  # the reference unpacks (N, C, H, W) as (N, C, width, height)
        x0, x1, y0, y1 = x0.clamp(0, h), x1.clamp(0, h), y0.clamp(0, w), y1.clamp(0, w)
    boxes = _clip_boxes(x0, y0, x1, y1, h, w)
    out = img.masked_fill(_box_mask(boxes, h, w).any(1, keepdim=True), 0.0)
    return (out, OpTrace(boxes=boxes)) if return_trace else out


def _hole_boxes(
    img: torch.Tensor, holes: int, half_min: int, half_max: int, generator: torch.Generator, quirks: bool
) -> torch.Tensor:
    """Random CutOut/CutMix boxes (B, holes, 4), clipped to the image; `quirks` = the shape-swap bug (§3.2)."""
    b, _, h, w = img.shape
    span_x, span_y = (h, w) if quirks else (w, h)
    cx = _randint(0, span_x, (b, holes), generator, img.device)
    cy = _randint(0, span_y, (b, holes), generator, img.device)
    half = _randint(half_min, half_max + 1, (b, holes, 2), generator, img.device)
    x0, x1 = cx - half[..., 0], cx + half[..., 0]
    y0, y1 = cy - half[..., 1], cy + half[..., 1]
    if quirks:  # x clamped to [0, H], y to [0, W]; indexing rows [y0:y1], columns [x0:x1]
        x0, x1, y0, y1 = x0.clamp(0, h), x1.clamp(0, h), y0.clamp(0, w), y1.clamp(0, w)
    return _clip_boxes(x0, y0, x1, y1, h, w)


def cutout(
    img: torch.Tensor,
    *,
    joints: torch.Tensor | None = None,
    holes: int = 5,
    half_min: int = 10,
    half_max: int = 19,
    generator: torch.Generator,
    quirks: bool = False,
    return_trace: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, OpTrace]:
    """CutOut (CO, reference §3.2): zero `holes` boxes per image, centres uniform over the image.

    Half-extents uniform in {half_min..half_max} per axis; box [cx−h_x, cx+h_x) × [cy−h_y, cy+h_y) clipped.

    Args:
        img: (B, C, H, W) normalised images.
        joints: ignored (uniform op signature).
        quirks: the reference's shape swap: cx ~ U{0..H−1}, cy ~ U{0..W−1}, x clamped to [0, H], y to [0, W];
            for 256×192 hole centres lie only in rows < 192 and ~19% of holes fall off the right edge.

    Returns:
        (B, C, H, W) new tensor (and an `OpTrace` with the (B, holes, 4) boxes).
    """
    boxes = _hole_boxes(img, holes, half_min, half_max, generator, quirks)
    out = img.masked_fill(_box_mask(boxes, *img.shape[-2:]).any(1, keepdim=True), 0.0)
    return (out, OpTrace(boxes=boxes)) if return_trace else out


def cutmix(
    img: torch.Tensor,
    *,
    joints: torch.Tensor | None = None,
    holes: int = 2,
    half_min: int = 10,
    half_max: int = 19,
    generator: torch.Generator,
    quirks: bool = False,
    return_trace: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, OpTrace]:
    """CutMix (CM, reference §3.2): CutOut geometry, holes filled with the same region of a partner image.

    The partner is a random permutation of the batch (possibly the image itself), read from the input before any
    write. Targets are not mixed.

    Args:
        img: (B, C, H, W) normalised images.
        joints: ignored (uniform op signature).
        quirks: the shape-swap bug, as `cutout`.

    Returns:
        (B, C, H, W) new tensor (and an `OpTrace` with the boxes and the (B,) partner permutation).
    """
    boxes = _hole_boxes(img, holes, half_min, half_max, generator, quirks)
    perm = _randperm(img.shape[0], generator, img.device)
    mask = _box_mask(boxes, *img.shape[-2:]).any(1, keepdim=True)
    out = torch.where(mask, img[perm], img)
    return (out, OpTrace(boxes=boxes, partner=perm)) if return_trace else out


def sample_beta(alpha: float, beta: float, *, generator: torch.Generator) -> torch.Tensor:
    """One Beta(alpha, beta) draw from uniforms only (Jöhnk's method, in log space), deterministic per generator.

    Returns:
        () float64 tensor on the generator's device.
    """
    while True:  # acceptance ≈ 0.95 per pair for alpha = beta = 0.2; 16 pairs per round
        u = torch.rand(2, 16, generator=generator, device=generator.device, dtype=torch.float64)
        lu, lv = torch.log(u[0]) / alpha, torch.log(u[1]) / beta
        total = torch.logaddexp(lu, lv)
        accepted = (total <= 0) & torch.isfinite(total)
        if bool(accepted.any()):
            first = int(accepted.nonzero()[0, 0])
            return torch.exp(lu[first] - total[first])


def mixup(
    img: torch.Tensor,
    *,
    joints: torch.Tensor | None = None,
    alpha: float = 0.2,
    generator: torch.Generator,
    quirks: bool = False,
    return_trace: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, OpTrace]:
    """MixUp (MU, reference §3.2): λ·x + (1−λ)·x[perm] with λ = 1 − 0.25·λ₀, λ₀ ~ Beta(alpha, alpha) per batch.

    λ ∈ [0.75, 1], so each image stays dominant; targets are not mixed.

    Args:
        img: (B, C, H, W) normalised images.
        joints, quirks: ignored (uniform op signature; the reference has no MixUp quirk).

    Returns:
        (B, C, H, W) new tensor (and an `OpTrace` with the permutation and λ).
    """
    lam = (1.0 - 0.25 * sample_beta(alpha, alpha, generator=generator)).to(img.device)
    perm = _randperm(img.shape[0], generator, img.device)
    out = lam.to(img.dtype) * img + (1.0 - lam).to(img.dtype) * img[perm]
    return (out, OpTrace(partner=perm, lam=lam)) if return_trace else out


def _pick(per_joint: torch.Tensor, img_idx: torch.Tensor, joint_idx: torch.Tensor) -> torch.Tensor:
    """(B, J, 2) per-joint values, (B,) image and (B, K) joint indices -> (B, K, 2) values of those joints."""
    return per_joint[img_idx[:, None].expand_as(joint_idx), joint_idx]


def _jo_geometry(
    centres: torch.Tensor,
    half: torch.Tensor,
    lim_col: int,
    lim_row: int,
    dst_j: torch.Tensor,
    src_j: torch.Tensor,
    src_img: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Destination boxes and source offsets of Joint Cut-Occlusion, per (image, patch), as the reference clips.

    Args:
        centres: (B, J, 2) long (col, row) joint centres; half: (B, J, 2) long (col, row) half-extents.
        lim_col, lim_row: the clamp limits of columns and rows.
        dst_j, src_j: (B, K) destination / source joint indices; src_img: (B,) source image per target.

    Returns:
        boxes (B, K, 4) (x0, y0, x1, y1) destination, src_start (B, K, 2) (col, row) of the source box's first
        pixel, paste (B, K) and fill (B, K) bool (copy pixels / CutOut fallback; neither = skipped).
    """
    lims = torch.tensor([lim_col, lim_row], device=centres.device)
    s_lo = torch.minimum((centres - half).clamp(min=0), lims)  # source boxes of every joint
    s_hi = torch.minimum((centres + half).clamp(min=0), lims)
    own = torch.arange(centres.shape[0], device=centres.device)
    c_src, lo, hi = (_pick(t, src_img, src_j) for t in (centres, s_lo, s_hi))
    c_dst = _pick(centres, own, dst_j)
    d_lo = torch.minimum((c_dst - (lo - c_src).abs()).clamp(min=0), lims)
    d_hi = torch.minimum((c_dst + (hi - c_src).abs()).clamp(min=0), lims)
    d_size, s_size = (d_hi - d_lo).clamp(min=0), (hi - lo).clamp(min=0)
    offset = (s_size - d_size).abs()  # a clipped destination shrinks the source on the clipped side
    s_start = lo + offset * (d_lo == 0)
    s_size = (hi - offset * (d_hi == lims) - s_start).clamp(min=0)
    skip = (d_size == 0).any(-1)
    fill = ~skip & ((s_size == 0).any(-1) | (s_size != d_size).any(-1))
    boxes = torch.cat([d_lo, torch.maximum(d_lo, d_hi)], -1)
    boxes = torch.where(skip[..., None], torch.zeros_like(boxes), boxes)
    return boxes, s_start, ~skip & ~fill, fill


def _composite_patches(
    img: torch.Tensor,
    boxes: torch.Tensor,
    s_start: torch.Tensor,
    paste: torch.Tensor,
    fill: torch.Tensor,
    src_img: torch.Tensor,
) -> torch.Tensor:
    """Write JO patches into a copy of `img` (B, C, H, W) at once; the last patch covering a pixel wins.

    Args:
        boxes: (B, K, 4) destination boxes; s_start: (B, K, 2) (col, row) of each source box's first pixel.
        paste, fill: (B, K) copy the source pixels / write 0; src_img: (B,) source image per target.
    """
    b, c, h, w = img.shape
    dev, k = img.device, boxes.shape[1]
    order = torch.arange(1, k + 1, device=dev).view(1, k, 1, 1)
    last = torch.where(_box_mask(boxes, h, w), order, 0).amax(1)  # (B, H, W), 0 = untouched
    k_idx = (last - 1).clamp(min=0)
    img_idx = torch.arange(b, device=dev).view(b, 1, 1)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    src_row = (rows - boxes[..., 1][img_idx, k_idx] + s_start[..., 1][img_idx, k_idx]).clamp(0, h - 1)
    src_col = (cols - boxes[..., 0][img_idx, k_idx] + s_start[..., 0][img_idx, k_idx]).clamp(0, w - 1)
    flat = (src_img.view(b, 1, 1) * h + src_row) * w + src_col
    pasted = img.transpose(0, 1).reshape(c, -1)[:, flat.reshape(-1)].reshape(c, b, h, w).transpose(0, 1)
    covered = last > 0
    do_paste = (covered & paste[img_idx, k_idx]).unsqueeze(1)
    do_fill = (covered & fill[img_idx, k_idx]).unsqueeze(1)
    return torch.where(do_paste, pasted, img).masked_fill(do_fill, 0.0)


def joint_cut_occlusion(
    img: torch.Tensor,
    joints: torch.Tensor | None = None,
    *,
    num: int = 2,
    jitter: float = 10.0,
    half_min: int = 10,
    half_max: int = 19,
    generator: torch.Generator,
    quirks: bool = False,
    return_trace: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, OpTrace]:
    """Joint Cut-Occlusion (JO, reference §3.2): paste boxes cut around source joints onto destination joints.

    Every joint gets jitter and half-extents as in JC. Per target image: `num` destination joints, `num` source
    joints (uniform from J with replacement) and ONE source image from the batch (possibly itself). Each source
    box (clamped to the image) is read from the untouched input and pasted with the same extents centred on the
    destination joint; a destination clipped at a border shrinks the source on that side; if the shapes still
    differ or the source is empty the destination is set to 0; an empty destination is skipped; later patches
    overwrite earlier ones.

    Args:
        img: (B, C, H, W) normalised images.
        joints: (B, J, 2) joints (x, y) in input px.
        quirks: the reference's transposition bug: joint y is used as the column and x as the row (so patches land
            at the (x, y)-swapped place), with clamps to [0, W−1] / [0, H−1] (the last column/row never written).
            Default: (x, y) used as (column, row), clamps to [0, W] / [0, H].

    Returns:
        (B, C, H, W) new tensor (and an `OpTrace` with the (B, num, 4) destination boxes, zero-size when skipped,
        and the (B,) source image index).
    """
    joints = _check_joints(joints, img, "joint_cut_occlusion")
    b, _, h, w = img.shape
    n_joints, dev = joints.shape[1], img.device
    centres = _jittered_joints(joints, jitter, generator)
    half = _randint(half_min, half_max + 1, (b, n_joints, 2), generator, dev)
    dst_j = _randint(0, n_joints, (b, num), generator, dev)
    src_j = _randint(0, n_joints, (b, num), generator, dev)
    src_img = _randint(0, b, (b,), generator, dev)
    if quirks:
        centres, lim_col, lim_row = centres.flip(-1), w - 1, h - 1
    else:
        lim_col, lim_row = w, h
    boxes, s_start, paste, fill = _jo_geometry(centres, half, lim_col, lim_row, dst_j, src_j, src_img)
    out = _composite_patches(img, boxes, s_start, paste, fill, src_img)
    return (out, OpTrace(boxes=boxes, partner=src_img)) if return_trace else out


OPS: dict[str, Callable[..., torch.Tensor]] = {
    "joint_cutout": joint_cutout,
    "joint_cut_occlusion": joint_cut_occlusion,
    "cutout": cutout,
    "cutmix": cutmix,
    "mixup": mixup,
    "randaugment": randaugment_normalized,
}


_HALF_SIZES, _FREE_SIZES = ("half_min", "half_max"), ("jitter", "cutout_max")


def to_pixels(params: dict, input_h: int) -> dict:
    """An op's recipe parameters (with their `unit`) -> keyword arguments in input pixels.

    `unit="input_frac"` sizes are fractions of the input height for both axes: half-extents become whole pixels
    (rounded, at least 1, as the ops draw integers), jitter and RandAugment's cutout side stay real-valued.
    """
    params = dict(params)
    if params.pop("unit", "px") == "px":
        return params
    for name in _HALF_SIZES:
        if name in params:
            params[name] = max(1, round(params[name] * input_h))
    for name in _FREE_SIZES:
        if name in params:
            params[name] = params[name] * input_h
    return params


def apply_ops(
    img: torch.Tensor,
    ops: list[tuple[str, dict]],
    *,
    joints: torch.Tensor | None,
    generator: torch.Generator,
    quirks: bool = False,
) -> torch.Tensor:
    """Apply ops in order (T_JOCO = [("joint_cut_occlusion", {}), ("cutout", {})], T_JCCM = JC then CM).

    Args:
        img: (B, C, H, W) normalised easy-view images.
        ops: (kind, params) pairs; kind is a key of `OPS`, params its keyword arguments.
        joints: (B, J, 2) joints in input px for the joint ops (may be None when no joint op is listed).

    Returns:
        (B, C, H, W) new tensor.
    """
    for i, (kind, params) in enumerate(ops):
        if kind not in OPS:
            raise ValueError(f"apply_ops: ops[{i}] kind {kind!r} is not one of {sorted(OPS)}")
        img = OPS[kind](img, joints=joints, generator=generator, quirks=quirks, **params)
    return img
