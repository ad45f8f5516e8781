"""Heatmap codec against per-sample numpy/cv2 ports of the reference, plus encode/decode and flip round trips."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from sshpe.evaluation.codec import blur_heatmaps, decode_heatmaps, encode_heatmaps, flip_back, gaussian_kernel1d
from sshpe.schema import COCO17, UNION24

# ---------------------------------------------------------------------------------------------------------------
# Reference ports (written from SSHPE_REFERENCE §1.3.6 / §1.8; HRNet lib/dataset/JointsDataset.py,
# lib/core/inference.py; MA's DARK gaussian_blur + taylor)
# ---------------------------------------------------------------------------------------------------------------


def ref_generate_target(joints, joints_vis, heatmap_wh, stride, sigma):
    """HRNet `generate_target` for one sample: joints (K, 2) crop px, vis (K,) -> (K, h, w), (K,)."""
    w, h = heatmap_wh
    num_joints = joints.shape[0]
    target_weight = (joints_vis > 0).astype(np.float32)
    target = np.zeros((num_joints, h, w), dtype=np.float32)
    tmp_size = sigma * 3
    for joint_id in range(num_joints):
        mu_x = int(joints[joint_id][0] / stride + 0.5)
        mu_y = int(joints[joint_id][1] / stride + 0.5)
        ul = [int(mu_x - tmp_size), int(mu_y - tmp_size)]
        br = [int(mu_x + tmp_size + 1), int(mu_y + tmp_size + 1)]
        if ul[0] >= w or ul[1] >= h or br[0] < 0 or br[1] < 0:
            target_weight[joint_id] = 0
            continue
        size = 2 * tmp_size + 1
        x = np.arange(0, size, 1, np.float32)
        y = x[:, np.newaxis]
        x0 = y0 = size // 2
        g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))
        g_x = max(0, -ul[0]), min(br[0], w) - ul[0]
        g_y = max(0, -ul[1]), min(br[1], h) - ul[1]
        img_x = max(0, ul[0]), min(br[0], w)
        img_y = max(0, ul[1]), min(br[1], h)
        if target_weight[joint_id] > 0.5:
            target[joint_id][img_y[0] : img_y[1], img_x[0] : img_x[1]] = g[g_y[0] : g_y[1], g_x[0] : g_x[1]]
    return target, target_weight


def ref_get_max_preds(hm):
    """HRNet `get_max_preds`: (B, K, h, w) -> (B, K, 2), (B, K)."""
    b, k, _, w = hm.shape
    flat = hm.reshape(b, k, -1)
    idx = np.argmax(flat, 2)
    maxvals = np.amax(flat, 2)
    preds = np.stack([idx % w, np.floor(idx / w)], -1).astype(np.float32)
    preds *= (maxvals > 0.0)[..., None]
    return preds, maxvals


def ref_decode_shift(hm):
    """HRNet `get_final_preds` with POST_PROCESS (heatmap px, before the affine)."""
    coords, maxvals = ref_get_max_preds(hm)
    h, w = hm.shape[2:]
    for n in range(coords.shape[0]):
        for p in range(coords.shape[1]):
            m = hm[n][p]
            px = int(math.floor(coords[n][p][0] + 0.5))
            py = int(math.floor(coords[n][p][1] + 0.5))
            if 1 < px < w - 1 and 1 < py < h - 1:
                diff = np.array([m[py][px + 1] - m[py][px - 1], m[py + 1][px] - m[py - 1][px]])
                coords[n][p] += np.sign(diff) * 0.25
    return coords, maxvals


def ref_decode_dark(hm, kernel=11):
    """MA `get_final_preds` with post_type dark: gaussian_blur, log, taylor (heatmap px)."""
    coords, maxvals = ref_get_max_preds(hm)
    hm = hm.copy()
    b, k, h, w = hm.shape
    border = (kernel - 1) // 2
    for i in range(b):
        for j in range(k):
            origin_max = np.max(hm[i, j])
            dr = np.zeros((h + 2 * border, w + 2 * border))
            dr[border:-border, border:-border] = hm[i, j].copy()
            dr = cv2.GaussianBlur(dr, (kernel, kernel), 0)
            hm[i, j] = dr[border:-border, border:-border].copy()
            hm[i, j] *= origin_max / np.max(hm[i, j])
    hm = np.log(np.maximum(hm, 1e-10))
    for n in range(b):
        for p in range(k):
            m, (px, py) = hm[n][p], (int(coords[n, p, 0]), int(coords[n, p, 1]))
            if 1 < px < w - 2 and 1 < py < h - 2:
                dx = 0.5 * (m[py][px + 1] - m[py][px - 1])
                dy = 0.5 * (m[py + 1][px] - m[py - 1][px])
                dxx = 0.25 * (m[py][px + 2] - 2 * m[py][px] + m[py][px - 2])
                dxy = 0.25 * (m[py + 1][px + 1] - m[py - 1][px + 1] - m[py + 1][px - 1] + m[py - 1][px - 1])
                dyy = 0.25 * (m[py + 2][px] - 2 * m[py][px] + m[py - 2][px])
                if dxx * dyy - dxy**2 != 0:
                    hessian = np.array([[dxx, dxy], [dxy, dyy]], dtype=np.float64)
                    coords[n, p] += -np.linalg.inv(hessian) @ np.array([dx, dy], dtype=np.float64)
    return coords, maxvals


def render_gaussians(centers_hm: torch.Tensor, hw: tuple[int, int], sigma: float) -> torch.Tensor:
    """Sub-pixel (non-rounded) Gaussians: (B, K, 2) heatmap px -> (B, K, h, w)."""
    h, w = hw
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    d2 = (xs - centers_hm[..., 0, None, None]) ** 2 + (ys - centers_hm[..., 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma**2)).float()


# ---------------------------------------------------------------------------------------------------------------
# Encode
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [2, 3, 1.5])
def test_encode_matches_reference_generate_target(sigma):
    gen = torch.Generator().manual_seed(int(sigma * 10))
    b, k, stride, hw = 6, 17, 4, (64, 48)
    kpts = torch.rand(b, k, 2, generator=gen) * torch.tensor([260.0, 340.0]) - torch.tensor([40.0, 40.0])
    # Hand-picked joints at the borders (heatmap centres mu; negative ones need x = (mu - 0.7) * stride because
    # int() truncates toward zero): x=-2.1 -> mu 0; windows just missing / just touching the left and right edges.
    miss, touch = -(math.ceil(3 * sigma) + 2), -(math.ceil(3 * sigma) + 1)
    edge_x = [-2.1, (miss - 0.7) * stride, (touch - 0.7) * stride, 100.0, (48 + math.ceil(3 * sigma)) * stride, 20.0]
    edge_y = [10.0, 100.0, 30.0, (miss - 0.7) * stride, 30.0, (64 + math.ceil(3 * sigma) - 1) * stride]
    kpts[0, : len(edge_x)] = torch.tensor([edge_x, edge_y]).T
    vis = torch.randint(0, 3, (b, k), generator=gen).float()  # COCO v in {0, 1, 2}
    vis[0, : len(edge_x)] = 1.0
    hm, weight = encode_heatmaps(kpts, vis, hw, stride, sigma)
    assert hm.shape == (b, k, *hw) and hm.dtype == torch.float32 and weight.shape == (b, k)
    for i in range(b):
        ref_hm, ref_w = ref_generate_target(kpts[i].numpy(), vis[i].numpy(), (hw[1], hw[0]), stride, sigma)
        np.testing.assert_array_equal(weight[i].numpy(), ref_w)
        np.testing.assert_array_equal(hm[i].numpy() > 0, ref_hm > 0)
        np.testing.assert_array_max_ulp(hm[i].numpy(), ref_hm, maxulp=2)  # float32 exp: numpy vs torch
    assert weight[0, :6].tolist() == [1, 0, 1, 0, 0, 1]
    assert hm[0, 2].sum() == 0  # reference quirk: br == 0 keeps weight 1 although the window is empty
    assert hm[0, 5, -1].sum() > 0 and hm[0, 0, :, 0].max() > 0.5
    assert (hm[weight == 0] == 0).all() and (vis == 0).any() and (weight[vis == 0] == 0).all()


def test_encode_is_batched_on_input_device_and_peaks_at_rounded_centre():
    kpts = torch.tensor([[[21.0, 33.0], [-2.1, 5.0]]])
    hm, weight = encode_heatmaps(kpts, torch.ones(1, 2), (64, 48), 4, 2.0)
    assert hm.device == kpts.device
    assert hm[0, 0, 8, 5] == 1.0 and (hm[0, 0] < 1).sum() == 64 * 48 - 1  # int(5.75) = 5, int(8.75) = 8
    assert hm[0, 1, 1, 0] == 1.0  # int(-0.525 + 0.5) = 0 (truncation), int(1.25 + .5) = 1


# ---------------------------------------------------------------------------------------------------------------
# Decode
# ---------------------------------------------------------------------------------------------------------------


def _smooth_maps(gen: torch.Generator, b: int, k: int, hw: tuple[int, int]) -> torch.Tensor:
    """Gaussian blobs at random sub-pixel centres (some at the borders) plus small noise."""
    h, w = hw
    centers = torch.rand(b, k, 2, generator=gen) * torch.tensor([w - 1.0, h - 1.0])
    centers[0, :4] = torch.tensor([[0.2, 5.0], [1.3, 30.0], [w - 2.2, 10.0], [20.0, h - 1.0]])
    return render_gaussians(centers, hw, 2.0) + 0.01 * torch.rand(b, k, h, w, generator=gen)


def test_decode_shift_matches_reference():
    gen = torch.Generator().manual_seed(0)
    hm = _smooth_maps(gen, 4, 17, (64, 48))
    kpts, maxvals = decode_heatmaps(hm, "shift")
    ref_kpts, ref_max = ref_decode_shift(hm.numpy())
    np.testing.assert_array_equal(kpts.numpy(), ref_kpts)
    np.testing.assert_array_equal(maxvals.numpy(), ref_max)


def test_encode_decode_round_trip_integer_centres():
    gen = torch.Generator().manual_seed(1)
    mu = torch.randint(2, 46, (3, 17, 2), generator=gen).float()
    mu[..., 1] = torch.randint(2, 62, (3, 17), generator=gen).float()
    kpts_crop = mu * 4 + (torch.rand(3, 17, 2, generator=gen) - 0.5) * 3.9  # rounds back to mu
    hm, weight = encode_heatmaps(kpts_crop, torch.ones(3, 17), (64, 48), 4, 2.0)
    assert (weight == 1).all()
    kpts_hm, maxvals = decode_heatmaps(hm, "shift")
    assert (maxvals == 1).all()
    assert (kpts_hm - mu).abs().max() <= 0.25
    assert ((kpts_hm - kpts_crop / 4).abs() <= 0.5 + 1e-6).all()


def test_quarter_offset_points_toward_subpixel_centre():
    gen = torch.Generator().manual_seed(2)
    base = torch.randint(5, 40, (2, 17, 2), generator=gen).float()
    frac = torch.rand(2, 17, 2, generator=gen) * 0.3 + 0.1  # |offset from the peak| in [0.1, 0.4]
    sign = torch.where(torch.rand(2, 17, 2, generator=gen) < 0.5, -1.0, 1.0)
    centers = base + sign * frac
    kpts, _ = decode_heatmaps(render_gaussians(centers, (64, 48), 2.0), "shift")
    torch.testing.assert_close(kpts, base + 0.25 * sign)
    assert ((kpts - centers).abs() < 0.16).all()


def test_dark_recovers_subpixel_centres():
    gen = torch.Generator().manual_seed(3)
    centers = torch.rand(4, 17, 2, generator=gen) * torch.tensor([40.0, 56.0]) + 4.0
    kpts, maxvals = decode_heatmaps(render_gaussians(centers, (64, 48), 2.0), "dark")
    assert (kpts - centers).abs().max() < 0.1
    shift, _ = decode_heatmaps(render_gaussians(centers, (64, 48), 2.0), "shift")
    assert (kpts - centers).abs().mean() < (shift - centers).abs().mean()
    assert (maxvals <= 1).all() and (maxvals > 0.5).all()


@pytest.mark.parametrize("kernel", [11, 7])
def test_dark_matches_reference_port(kernel):
    gen = torch.Generator().manual_seed(4)
    hm = _smooth_maps(gen, 3, 17, (64, 48))
    kpts, maxvals = decode_heatmaps(hm, "dark", dark_kernel=kernel)
    ref_kpts, ref_max = ref_decode_dark(hm.numpy(), kernel)
    np.testing.assert_allclose(kpts.numpy(), ref_kpts, atol=2e-4)
    np.testing.assert_array_equal(maxvals.numpy(), ref_max)
    assert (kpts.numpy() != np.round(kpts.numpy())).any()  # the Newton step moved something


def test_blur_kernel_and_blur_match_cv2():
    # k = 9 is left out: OpenCV 5 added a fixed table for it, OpenCV 3/4 (the reference's) use the formula.
    for k in (1, 3, 5, 7, 11, 13, 15):
        np.testing.assert_allclose(gaussian_kernel1d(k, torch.float64).numpy(), cv2.getGaussianKernel(k, 0).ravel())
    hm = torch.rand(1, 2, 20, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    dr = np.zeros((30, 26))
    dr[5:-5, 5:-5] = hm[0, 1].numpy()
    ref = cv2.GaussianBlur(dr, (11, 11), 0)[5:-5, 5:-5]
    np.testing.assert_allclose(blur_heatmaps(hm, 11)[0, 1].numpy(), ref * hm[0, 1].max().item() / ref.max())
    with pytest.raises(ValueError, match="odd"):
        decode_heatmaps(hm.float(), "dark", dark_kernel=4)


@pytest.mark.parametrize("mode", ["shift", "dark"])
def test_nonpositive_maxval_gives_zero_coordinates(mode):
    hm = -torch.rand(2, 3, 16, 12, generator=torch.Generator().manual_seed(6))
    hm[0, 1] = 0.0
    hm[1, 2, 7, 5] = 2.0  # one positive channel stays decodable
    kpts, maxvals = decode_heatmaps(hm, mode)
    positive = maxvals > 0
    assert positive.sum() == 1 and torch.isfinite(kpts).all()
    assert (kpts[~positive] == 0).all()
    assert ((kpts[1, 2] - torch.tensor([5.0, 7.0])).abs() <= 1).all()
    with np.errstate(divide="ignore", invalid="ignore"):  # the reference divides 0 by 0 on the all-zero map
        ref_kpts, _ = ref_decode_shift(hm.numpy()) if mode == "shift" else ref_decode_dark(hm.numpy())
    np.testing.assert_allclose(kpts.numpy(), ref_kpts, atol=2e-4)


# ---------------------------------------------------------------------------------------------------------------
# Flip
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", [COCO17, UNION24])
def test_flip_back_inverts_flip_and_swaps_channels(schema):
    k, flip_index = schema.num_joints, schema.flip_index()
    hm = torch.rand(2, k, 8, 6, generator=torch.Generator().manual_seed(7))
    flipped = hm.flip(-1)[:, flip_index]  # what the network sees/predicts for the mirrored input
    left, right = schema.flip_pairs[0]
    assert torch.equal(flip_back(hm, flip_index)[:, left, :, 1:], hm[:, right].flip(-1)[..., :-1])
    shifted = flip_back(flipped, flip_index, shift=True)
    assert torch.equal(shifted[..., 1:], hm[..., :-1]) and torch.equal(shifted[..., 0], hm[..., 0])
    with pytest.raises(ValueError, match="channels"):
        flip_back(hm[:, :-1], flip_index)


def test_flip_back_without_the_column_shift_translates_by_three_quarters_of_a_pixel():
    """The reference's SHIFT_HEATMAP: false is not "no shift": a bilinear 0.75-px translation (reference §10.22)."""
    hm = torch.zeros(1, 1, 5, 12)
    hm[0, 0, 2, 4] = 1.0  # a peak at column 4 of the un-flipped map, i.e. column 7 of the prediction on the mirror
    out = flip_back(hm.flip(-1), [0], shift=False)[0, 0]
    assert out[2, 4] == pytest.approx(0.25) and out[2, 5] == pytest.approx(0.75)  # bilinear split
    assert out.sum() == pytest.approx(1.0) and out[[0, 1, 3, 4]].abs().sum() == 0  # rows untouched
    cols = torch.arange(12, dtype=torch.float32)
    assert float((out[2] * cols).sum()) == pytest.approx(4.75)  # the centroid moves right by 0.75 px
    edge = flip_back(torch.ones(1, 1, 2, 4), [0], shift=False)[0, 0, 0]
    assert edge[0] == pytest.approx(0.25) and torch.allclose(edge[1:], torch.ones(3))  # zero padding on the left
