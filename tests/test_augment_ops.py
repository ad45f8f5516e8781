"""Strong-view ops (JC, JO, CO, CM, MU, RandAugment) and the hard affine: determinism, locality, quirks, geometry."""

from __future__ import annotations

import math
import re
import typing

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from sshpe.augment.hard_affine import sample_hard_theta, theta_to_pixel, warp_normalized
from sshpe.augment.ops import (
    OPS,
    apply_ops,
    cutmix,
    cutout,
    joint_cut_occlusion,
    joint_cutout,
    mixup,
    sample_beta,
    to_pixels,
)
from sshpe.augment.randaugment import RA_OPS, rand_augment
from sshpe.geometry import apply_affine
from sshpe.recipe import OpCfg

H, W = 256, 192


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normalised images (B, 3, 256, 192) and 24 joints (x, y) inside the crop."""
    g = gen(seed)
    img = torch.randn(b, 3, H, W, generator=g)
    joints = torch.rand(b, 24, 2, generator=g) * torch.tensor([W - 1.0, H - 1.0])
    return img, joints


def union_mask(boxes: torch.Tensor) -> torch.Tensor:
    """(B, K, 4) boxes -> (B, 1, H, W) bool union, re-derived independently of the ops' own helper."""
    out = torch.zeros(boxes.shape[0], 1, H, W, dtype=torch.bool)
    for i, per_img in enumerate(boxes.tolist()):
        for x0, y0, x1, y1 in per_img:
            out[i, 0, y0:y1, x0:x1] = True
    return out


def test_ops_keys_are_the_recipe_op_kinds() -> None:
    assert set(OPS) == {"joint_cutout", "joint_cut_occlusion", "cutout", "cutmix", "mixup", "randaugment"}


@pytest.mark.parametrize("kind", sorted(OPS))
@pytest.mark.parametrize("quirks", [False, True])
def test_every_op_is_deterministic_per_seed_and_pure(kind: str, quirks: bool) -> None:
    img, joints = batch()
    before = img.clone()

    def run(seed: int) -> torch.Tensor:
        return apply_ops(img, [(kind, {})], joints=joints, generator=gen(seed), quirks=quirks)

    a, b, c = run(1), run(1), run(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(img, before), "ops must not modify their input"
    assert a.shape == img.shape and a.dtype == img.dtype


def test_ops_accept_every_recipe_op_config() -> None:
    """`apply_ops` is fed `to_pixels(op.model_dump(exclude={"kind"}))`: every recipe op's fields must be op
    keywords, in either unit."""
    img, joints = batch()
    union = typing.get_args(typing.get_args(OpCfg)[0])
    assert {cls.model_fields["kind"].annotation.__args__[0] for cls in union} == set(OPS)
    for cls in union:
        kind = cls.model_fields["kind"].annotation.__args__[0]
        for extra in ({}, {"unit": "input_frac"} if "unit" in cls.model_fields else {}):
            op = cls(kind=kind, **extra)
            params = to_pixels(op.model_dump(exclude={"kind"}), img.shape[-2])
            out = apply_ops(img, [(op.kind, params)], joints=joints, generator=gen(0))
            assert out.shape == img.shape


@pytest.mark.parametrize("kind", ["joint_cutout", "joint_cut_occlusion", "cutout", "cutmix", "randaugment"])
def test_input_fraction_sizes_at_256x192_equal_the_pixel_sizes(kind: str) -> None:
    """A size given as a fraction of the input height equals the reference's pixel size at 256x192: the default
    fractions (reference px / 256) and explicit ones give the same op output as the pixel recipe."""
    from sshpe.recipe import REF_INPUT_HEIGHT, validate_recipe

    torch.manual_seed(0)
    img = torch.randn(3, 3, 256, 192)
    joints = torch.rand(3, 17, 2) * torch.tensor([192.0, 256.0])
    px_op = {"kind": kind}
    sized = {k: v for k, v in validate_recipe(_recipe_with([px_op])).augment.paths[0][0].model_dump().items()
             if k in ("half_min", "half_max", "jitter", "cutout_max")}  # fmt: skip
    explicit = {"kind": kind, "unit": "input_frac", **{k: v / REF_INPUT_HEIGHT for k, v in sized.items()}}
    outs = []
    for spec in (px_op, {"kind": kind, "unit": "input_frac"}, explicit):
        op = validate_recipe(_recipe_with([spec])).augment.paths[0][0]
        params = to_pixels(op.model_dump(exclude={"kind"}), 256)
        assert {k: params[k] for k in sized} == sized
        outs.append(apply_ops(img, [(kind, params)], joints=joints, generator=gen(5)))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_input_fraction_sizes_scale_with_the_input() -> None:
    """At 128x96 the scaled JC boxes are half the reference's (half-extents 5..10 px instead of 10..19)."""
    params = to_pixels({"unit": "input_frac", "half_min": 10 / 256, "half_max": 19 / 256, "jitter": 10 / 256}, 128)
    assert params == {"half_min": 5, "half_max": 10, "jitter": 5.0}
    img = torch.zeros(64, 3, 128, 96)
    joints = torch.full((64, 17, 2), 48.0)
    _, trace = joint_cutout(img, joints, generator=gen(1), return_trace=True, **params)
    half = (trace.boxes[..., 2:] - trace.boxes[..., :2]) / 2
    assert half.min() >= 5 and half.max() <= 10 and half.max() == 10


def test_sizes_are_validated_in_their_unit() -> None:
    from sshpe.recipe import RecipeError, validate_recipe

    for op, message in (
        ({"kind": "cutout", "half_min": 10.5}, "half_min=10.5 with unit=px must be a whole number"),
        ({"kind": "joint_cutout", "unit": "input_frac", "half_max": 19}, "half_max=19 with unit=input_frac"),
        ({"kind": "randaugment", "unit": "input_frac", "cutout_max": 80}, "cutout_max=80.0 with unit=input_frac"),
        ({"kind": "cutmix", "unit": "inches"}, "'inches' is not one of"),
    ):
        with pytest.raises(RecipeError, match=re.escape(message)):
            validate_recipe(_recipe_with([op]))


def _recipe_with(ops: list[dict]) -> dict:
    return {"name": "t", "data": {"shards": "x"}, "teacher": {"kind": "single"}, "augment": {"paths": [ops]}}


def test_apply_ops_rejects_unknown_kind_and_chains_in_order() -> None:
    img, joints = batch()
    with pytest.raises(ValueError, match="joint_cutot"):
        apply_ops(img, [("joint_cutot", {})], joints=joints, generator=gen(0))
    chained = apply_ops(img, [("joint_cutout", {}), ("cutmix", {"holes": 5})], joints=joints, generator=gen(3))
    g = gen(3)
    manual = cutmix(joint_cutout(img, joints, generator=g), holes=5, generator=g)
    assert torch.equal(chained, manual)


def test_joint_ops_need_joints() -> None:
    img, _ = batch()
    with pytest.raises(ValueError, match="joints"):
        joint_cutout(img, None, generator=gen(0))
    with pytest.raises(ValueError, match="joints"):
        apply_ops(img, [("joint_cut_occlusion", {})], joints=None, generator=gen(0))


@pytest.mark.parametrize("quirks", [False, True])
def test_joint_cutout_zeroes_exactly_its_boxes(quirks: bool) -> None:
    img, joints = batch(seed=5)
    out, trace = joint_cutout(img, joints, generator=gen(7), quirks=quirks, return_trace=True)
    assert trace.boxes.shape == (4, 5, 4)
    inside = union_mask(trace.boxes).expand_as(img)
    assert torch.equal(out[~inside], img[~inside])
    assert bool((out[inside] == 0).all()) and inside.any()
    sizes = trace.boxes[..., 2:] - trace.boxes[..., :2]
    assert int(sizes.max()) <= 38  # 2 * half_max


def test_joint_cutout_boxes_follow_the_joints() -> None:
    img, _ = batch(b=2)
    joints = torch.tensor([[[60.0, 80.0]], [[100.0, 150.0]]])  # one joint per image
    _, trace = joint_cutout(img, joints, jitter=0.0, half_min=12, half_max=12, generator=gen(0), return_trace=True)
    assert trace.boxes[0].tolist() == [[48, 68, 72, 92]] * 5
    assert trace.boxes[1].tolist() == [[88, 138, 112, 162]] * 5


def test_joint_cutout_quirk_never_masks_rows_below_width() -> None:
    img, _ = batch(b=8)
    joints = torch.tensor([60.0, 215.0]).expand(8, 24, 2)  # joints in the bottom quarter of a 256x192 crop
    fixed = joint_cutout(img, joints, generator=gen(1))
    quirk = joint_cutout(img, joints, generator=gen(1), quirks=True)
    assert not torch.equal(fixed[..., W:, :], img[..., W:, :])
    assert torch.equal(quirk[..., W:, :], img[..., W:, :])


@pytest.mark.parametrize("quirks", [False, True])
def test_cutout_zeroes_exactly_its_boxes(quirks: bool) -> None:
    img, _ = batch()
    out, trace = cutout(img, generator=gen(3), quirks=quirks, return_trace=True)
    inside = union_mask(trace.boxes).expand_as(img)
    assert torch.equal(out[~inside], img[~inside])
    assert bool((out[inside] == 0).all())


def test_cutout_quirk_keeps_holes_in_top_rows_and_loses_some_off_the_right() -> None:
    img = torch.randn(64, 3, H, W, generator=gen(0))
    _, fixed = cutout(img, generator=gen(4), return_trace=True)
    _, quirk = cutout(img, generator=gen(4), quirks=True, return_trace=True)
    assert int(quirk.boxes[..., 3].max()) <= W  # no row >= 192 is ever touched
    assert int(fixed.boxes[..., 3].max()) > W
    empty = (quirk.boxes[..., 2] <= quirk.boxes[..., 0]) | (quirk.boxes[..., 3] <= quirk.boxes[..., 1])
    assert 0.08 < float(empty.float().mean()) < 0.32  # reference: about 19% of holes vanish
    assert not bool((fixed.boxes[..., 2] <= fixed.boxes[..., 0]).any())


@pytest.mark.parametrize("quirks", [False, True])
def test_cutmix_fills_holes_with_the_partner_pixels(quirks: bool) -> None:
    img, _ = batch(b=6)
    out, trace = cutmix(img, generator=gen(11), quirks=quirks, return_trace=True)
    inside = union_mask(trace.boxes).expand_as(img)
    partner = img[trace.partner]
    assert torch.equal(out[~inside], img[~inside])
    assert torch.equal(out[inside], partner[inside])
    assert sorted(trace.partner.tolist()) == list(range(6))


def test_mixup_is_a_convex_combination_with_dominant_self() -> None:
    img, _ = batch(b=5)
    out, trace = mixup(img, generator=gen(2), return_trace=True)
    lam = float(trace.lam)
    assert 0.75 <= lam <= 1.0
    expected = lam * img + (1 - lam) * img[trace.partner]
    torch.testing.assert_close(out, expected)


def test_sample_beta_matches_beta_moments() -> None:
    g = gen(0)
    draws = torch.stack([sample_beta(0.2, 0.2, generator=g) for _ in range(3000)])
    assert bool(((draws >= 0) & (draws <= 1)).all())
    assert abs(float(draws.mean()) - 0.5) < 0.03
    assert abs(float(draws.var()) - 0.04 / (0.16 * 1.4)) < 0.02  # ab / ((a+b)^2 (a+b+1))
    assert float(((draws < 0.1) | (draws > 0.9)).float().mean()) > 0.5  # U-shaped


def encoded_batch(b: int) -> torch.Tensor:
    """Images whose channels spell (image index, row, column), so a pasted pixel says where it came from."""
    rows = torch.arange(H, dtype=torch.float32).view(1, 1, H, 1).expand(b, 1, H, W)
    cols = torch.arange(W, dtype=torch.float32).view(1, 1, 1, W).expand(b, 1, H, W)
    ids = torch.arange(1, b + 1, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 1, H, W)
    return torch.cat([ids, rows, cols], 1)


@pytest.mark.parametrize("quirks", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_joint_cut_occlusion_pastes_contiguous_source_boxes(quirks: bool, seed: int) -> None:
    b = 6
    img = encoded_batch(b)
    joints = torch.rand(b, 24, 2, generator=gen(100 + seed)) * torch.tensor([W + 20.0, H + 20.0]) - 10.0
    out, trace = joint_cut_occlusion(img, joints, num=1, generator=gen(seed), quirks=quirks, return_trace=True)
    inside = union_mask(trace.boxes)
    assert torch.equal(out[~inside.expand_as(img)], img[~inside.expand_as(img)])
    for i in range(b):
        x0, y0, x1, y1 = trace.boxes[i, 0].tolist()
        patch = out[i, :, y0:y1, x0:x1]
        if patch.numel() == 0 or bool((patch == 0).all()):
            continue  # skipped or CutOut fallback
        assert bool((patch[0] == trace.partner[i] + 1).all()), "one source image per target"
        d_row, d_col = patch[1] - img[i, 1, y0:y1, x0:x1], patch[2] - img[i, 2, y0:y1, x0:x1]
        assert bool((d_row == d_row[0, 0]).all()) and bool((d_col == d_col[0, 0]).all()), "a shifted copy"
        if quirks:
            assert y1 <= H - 1 and x1 <= W - 1, "reference clamps exclude the last row and column"


def test_joint_cut_occlusion_quirk_transposes_the_placement() -> None:
    img = encoded_batch(3)
    joints = torch.tensor([150.0, 60.0]).expand(3, 24, 2)  # x = 150, y = 60
    kw = dict(num=2, jitter=0.0, half_min=10, half_max=10, return_trace=True)
    out, fixed = joint_cut_occlusion(img, joints, generator=gen(0), **kw)
    _, quirk = joint_cut_occlusion(img, joints, generator=gen(0), quirks=True, **kw)
    assert fixed.boxes[:, :, :].tolist() == [[[140, 50, 160, 70]] * 2] * 3
    assert quirk.boxes[:, :, :].tolist() == [[[50, 140, 70, 160]] * 2] * 3
    # same joint in every image: the pasted box comes from the source image's same place
    assert torch.equal(out[:, 1:, 50:70, 140:160], img[:, 1:, 50:70, 140:160])
    assert bool((out[:, 0, 50:70, 140:160] == (fixed.partner + 1).view(3, 1, 1)).all())


def test_ops_follow_input_dtype() -> None:
    img, joints = batch()
    for kind in sorted(OPS):
        out = apply_ops(img.double(), [(kind, {})], joints=joints, generator=gen(0))
        assert out.dtype == torch.float64, kind


# ------------------------------------------------------------------------------------------------------------
# RandAugment
# ------------------------------------------------------------------------------------------------------------


def pil_reference(name: str, arr: np.ndarray, value: float, sign: int) -> np.ndarray:
    """The reference's op semantics, applied with PIL to one (H, W, 3) uint8 array."""
    img = Image.fromarray(arr)
    factor = 1 + sign * value
    if name == "AutoContrast":
        out = ImageOps.autocontrast(img)
    elif name == "Equalize":
        out = ImageOps.equalize(img)
    elif name == "Invert":
        out = ImageOps.invert(img)
    elif name == "Posterize":
        out = ImageOps.posterize(img, max(2, 6 - int(value)))
    elif name == "Solarize":
        out = ImageOps.solarize(img, 256 - value)
    elif name == "SolarizeAdd":
        added = np.clip(arr.astype(np.float64) + value, 0, 255).astype(np.uint8)
        out = ImageOps.solarize(Image.fromarray(added), 128)
    else:
        enhancer = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast}.get(name)
        enhancer = enhancer or {"Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}[name]
        out = enhancer(img).enhance(factor)
    return np.asarray(out)


@pytest.mark.parametrize("name", [n for n in RA_OPS if n != "CutoutAbs"])
@pytest.mark.parametrize("sign", [-1, 1])
def test_randaugment_ops_match_pil(name: str, sign: int) -> None:
    arr = (torch.rand(24, 20, 3, generator=gen(9)) * 200 + 20).round().to(torch.uint8).numpy()
    op, lo, hi = RA_OPS[name]
    value = 20 / 30 * (hi - lo) + lo
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float()
    ours = op(x, value, torch.tensor([float(sign)]), torch.zeros(1, 2)).round().clamp(0, 255)
    ref = pil_reference(name, arr, value, sign).astype(np.float32)
    diff = np.abs(ours[0].permute(1, 2, 0).numpy() - ref)
    assert diff.max() <= 1.0, f"{name}: max |ours - PIL| = {diff.max()}"


def test_randaugment_cutout_abs_paints_a_grey_square() -> None:
    op, lo, hi = RA_OPS["CutoutAbs"]
    x = torch.zeros(1, 3, 100, 100)
    out = op(x, 20 / 30 * (hi - lo) + lo, torch.ones(1), torch.tensor([[0.5, 0.5]]))
    painted = (out[0, 0] == 125).nonzero()
    assert painted[:, 0].min() == 23 and painted[:, 0].max() == 76  # int(50 - 53.3/2) .. + 53.3, inclusive
    assert torch.equal(out[0, :, 50, 50], torch.tensor([125.0, 123.0, 114.0]))


def test_rand_augment_batched_is_deterministic_and_in_range() -> None:
    img = torch.rand(16, 3, 32, 24, generator=gen(0)) * 255
    a, choices = rand_augment(img, generator=gen(5), return_choices=True)
    b = rand_augment(img, generator=gen(5))
    assert torch.equal(a, b) and not torch.equal(a, rand_augment(img, generator=gen(6)))
    assert choices.shape == (16, 2) and len(set(choices.flatten().tolist())) > 4
    assert bool((a == a.round()).all()) and float(a.min()) >= 0 and float(a.max()) <= 255
    invert = list(RA_OPS).index("Invert")
    twice = (choices == invert).all(1)
    if twice.any():
        assert torch.equal(a[twice], img[twice].round())


# ------------------------------------------------------------------------------------------------------------
# Hard affine
# ------------------------------------------------------------------------------------------------------------


def gaussian(hw: tuple[int, int], centre: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 1, H, W) Gaussians at (B, 2) centres (x, y) in px."""
    ys = torch.arange(hw[0], dtype=torch.float64).view(1, -1, 1)
    xs = torch.arange(hw[1], dtype=torch.float64).view(1, 1, -1)
    d2 = (xs - centre[:, 0, None, None]) ** 2 + (ys - centre[:, 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma**2)).unsqueeze(1)


def decode(maps: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (B, 2) argmax refined by the centroid of the 7x7 window around it."""
    b, _, h, w = maps.shape
    idx = maps.flatten(1).argmax(1)
    out = []
    for i in range(b):
        r, c = int(idx[i]) // w, int(idx[i]) % w
        win = maps[i, 0, r - 3 : r + 4, c - 3 : c + 4]
        ys, xs = torch.meshgrid(torch.arange(r - 3, r + 4), torch.arange(c - 3, c + 4), indexing="ij")
        out.append(torch.stack([(win * xs).sum() / win.sum(), (win * ys).sum() / win.sum()]))
    return torch.stack(out)


def test_hard_affine_warps_images_and_heatmaps_consistently() -> None:
    b = 12
    theta = sample_hard_theta(b, generator=gen(3), dtype=torch.float64)
    p = torch.rand(b, 2, generator=gen(4), dtype=torch.float64) * torch.tensor([10.0, 14.0]) + torch.tensor(
        [19.0, 25.0]
    )
    hm = warp_normalized(gaussian((64, 48), p, 2.0), theta)
    im = warp_normalized(gaussian((H, W), 4 * p + 1.5, 8.0), theta)
    expected = apply_affine(theta_to_pixel(theta, (64, 48)), p[:, None])[:, 0]
    assert (decode(hm) - expected).abs().max() < 0.5
    assert ((decode(im) - 1.5) / 4 - expected).abs().max() < 0.5
    expected_img = apply_affine(theta_to_pixel(theta, (H, W)), (4 * p + 1.5)[:, None])[:, 0]
    torch.testing.assert_close((expected_img - 1.5) / 4, expected)


def test_identity_theta_leaves_inputs_unchanged() -> None:
    x = torch.randn(2, 3, 64, 48, generator=gen(0))
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(2, 2, 3)
    torch.testing.assert_close(warp_normalized(x, eye), x, atol=1e-4, rtol=0)  # float32 grid rounding
    torch.testing.assert_close(theta_to_pixel(eye, (64, 48)), eye)


def test_hard_theta_distribution_within_bounds() -> None:
    theta = sample_hard_theta(4000, generator=gen(0), dtype=torch.float64)
    assert theta.shape == (4000, 2, 3)
    assert bool((theta[..., 2] == 0).all())
    scale = torch.sqrt(torch.linalg.det(theta[..., :2]))
    rot = torch.rad2deg(torch.atan2(theta[:, 0, 1], theta[:, 0, 0]))
    assert float(scale.min()) >= 0.75 - 1e-9 and float(scale.max()) <= 1.25 + 1e-9
    assert float(rot.abs().max()) <= 60 + 1e-6
    assert abs(float((rot == 0).double().mean()) - 0.2) < 0.03  # p(rot) = 0.8
    assert abs(float(scale.std()) - 0.18) < 0.02  # N(0, 0.25²) clipped at ±1 sigma
    assert abs(float((scale == 1.25).double().mean()) - 0.159) < 0.03
    assert math.isclose(float(rot[rot != 0].abs().mean()), 30 * math.sqrt(2 / math.pi), rel_tol=0.08)
    again = sample_hard_theta(4000, generator=gen(0), dtype=torch.float64)
    assert torch.equal(theta, again)
