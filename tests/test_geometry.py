"""Frames and affine maps: reference crop matrices, warp∘inverse round trips, cv2 equivalence, canvas reach."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from test_views import _reference_affine

from sshpe import geometry


@pytest.mark.parametrize("seed", range(5))
def test_crop_matrix_equals_reference_get_affine_transform(seed):
    rng = np.random.default_rng(seed)
    c, sx, r = rng.uniform(50, 400, 2), rng.uniform(0.2, 2.0), rng.uniform(-60, 60)
    ours = geometry.crop_matrix(
        torch.tensor(c)[None], torch.tensor([sx]), torch.tensor([r], dtype=torch.float64), (192, 256)
    )
    np.testing.assert_allclose(ours[0].numpy(), _reference_affine(c, sx, r, (192, 256)), rtol=1e-5, atol=1e-3)


def test_compose_invert_apply_round_trip():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(4, 2, 3, generator=g, dtype=torch.float64) + torch.eye(2, 3, dtype=torch.float64)
    pts = torch.randn(4, 7, 2, generator=g, dtype=torch.float64) * 50
    back = geometry.apply_affine(geometry.invert(m), geometry.apply_affine(m, pts))
    torch.testing.assert_close(back, pts)
    ident = geometry.compose(m, geometry.invert(m))
    torch.testing.assert_close(ident, torch.eye(2, 3, dtype=torch.float64).expand(4, 2, 3))
    torch.testing.assert_close(
        geometry.apply_affine(geometry.compose(m, m), pts), geometry.apply_affine(m, geometry.apply_affine(m, pts))
    )


def test_warp_equals_cv2_and_inverse_warp_restores():
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.integers(0, 255, (96, 128, 3)).astype(np.uint8), (5, 5), 2).astype(np.float64)
    f64 = dict(dtype=torch.float64)
    m = geometry.crop_matrix(
        torch.tensor([[64.0, 48.0]], **f64), torch.tensor([0.5], **f64), torch.tensor([25.0], **f64), (128, 96)
    )
    src = torch.from_numpy(img).permute(2, 0, 1)[None]
    ours = geometry.warp_images(src, m, (96, 128))
    ref = cv2.warpAffine(img, m[0].numpy(), (128, 96), flags=cv2.INTER_LINEAR)
    diff = np.abs(ours[0].permute(1, 2, 0).numpy() - ref)  # cv2 quantises bilinear weights to 1/32
    assert diff.mean() < 0.5 and diff.max() < 4.0
    back = geometry.warp_images(ours, geometry.invert(m), (96, 128))[0].permute(1, 2, 0).numpy()
    core = (slice(36, 60), slice(52, 76))  # the centre survives both warps (zoom > 1 loses nothing there)
    assert np.abs(back[core] - img[core]).mean() < 2.0


def test_hflip_is_an_involution_and_matches_array_flip():
    f = geometry.hflip_matrix(64, 1, torch.float64)
    torch.testing.assert_close(geometry.compose(f, f), torch.eye(2, 3, dtype=torch.float64)[None])
    img = torch.arange(2 * 8 * 64, dtype=torch.float64).view(1, 2, 8, 64)
    # x -> 64 - x maps pixel column j to 64 - j: the array flip shifted by one column
    warped = geometry.warp_images(img, f, (8, 64))
    torch.testing.assert_close(warped[..., 1:], img.flip(-1)[..., :-1])


@pytest.mark.parametrize("scale, exact", [((0.6, 0.8), True), ((2.4, 3.2), False)])
def test_canvas_covers_every_easy_view(scale, exact):
    """A person well inside a large image: the canvas holds every easy view's window, at the source's resolution
    when that is coarser than the densest view (an integer-translation crop), else at the densest view's."""
    center, scale = np.array([1000.5, 900.25]), np.array(scale)
    side = geometry.canvas_side((256, 192))
    assert side == math.ceil(1.25 / 0.75 * math.hypot(256, 192) / 8) * 8
    frame = geometry.canvas_frame(center, scale, (3000, 2000), side)
    c2i, (h, w) = frame.canvas_to_image, frame.hw
    assert frame.exact == exact and max(h, w) <= side + 2
    if exact:
        half = geometry.canvas_extent(scale) / 2
        assert c2i[:, :2].tolist() == [[1.0, 0.0], [0.0, 1.0]]
        assert c2i[:, 2].tolist() == [math.floor(center[0] - half), math.floor(center[1] - half)]
        assert h == math.ceil(center[1] + half) - math.floor(center[1] - half) + 1
    i2c = geometry.invert(torch.tensor(c2i)[None])
    for sf in (0.75, 1.25):
        for r in (-60.0, 0.0, 45.0, 60.0):
            crop = geometry.crop_matrix(
                torch.tensor(center)[None],
                torch.tensor([scale[0] * sf]),
                torch.tensor([r], dtype=torch.float64),
                (192, 256),
            )
            corners = torch.tensor([[[0.0, 0.0], [191.0, 0.0], [0.0, 255.0], [191.0, 255.0]]], dtype=torch.float64)
            in_canvas = geometry.apply_affine(i2c, geometry.apply_affine(geometry.invert(crop), corners))
            assert (in_canvas >= 0).all() and (in_canvas[..., 0] <= w - 1).all() and (in_canvas[..., 1] <= h - 1).all()
            density = torch.linalg.det(geometry.compose(crop, torch.tensor(c2i)[None])[:, :, :2]).abs().sqrt()
            if exact:  # the view upsamples the source, as the reference's crop of the whole image does
                assert density > 1.0
            else:  # the canvas has at least the crop's pixel density
                assert density <= 1.0 + 1e-6


@pytest.mark.parametrize("center, scale", [((5.0, 100.0), (0.6, 0.8)), ((310.0, 230.0), (2.4, 3.2))])
def test_canvas_is_cut_to_its_image(center, scale):
    """The part of the reachable square outside the image is not stored (a warp reads zeros there either way):
    the canvas spans at most one canvas pixel beyond the image on each side."""
    frame = geometry.canvas_frame(np.array(center), np.array(scale), (320, 240), geometry.canvas_side((256, 192)))
    c2i, (h, w) = frame.canvas_to_image, frame.hw
    k = c2i[0, 0]
    corners = np.array([[0.0, 0.0], [w - 1.0, h - 1.0]]) @ c2i[:, :2].T + c2i[:, 2]  # canvas corners in image px
    assert (corners >= -k - 1e-9).all() and (corners <= np.array([319.0, 239.0]) + k + 1e-9).all()
    half = geometry.canvas_extent(np.array(scale)) / 2
    for axis, size in ((0, 320), (1, 240)):  # where the square reaches past the image, the canvas reaches its edge
        assert center[axis] - half > 0 or corners[0, axis] <= 1e-9
        assert center[axis] + half < size - 1 or corners[1, axis] >= size - 1 - 1e-9
    assert h * w <= 322 * 242
