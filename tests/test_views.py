"""Easy views from canvases equal the reference pipeline on the original image (DESIGN decision 1)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from sshpe.data.batches import collate
from sshpe.data.streams import ValDataset
from sshpe.evaluation.codec import decode_heatmaps
from sshpe.schema import COCO17
from sshpe.views import EasyParams, make_view, sample_easy_params, view_targets

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _reference_affine(center, scale_x, rot, out_wh):
    """The reference `get_affine_transform` via three point correspondences (cv2.getAffineTransform)."""
    src_w, (dw, dh), rad = scale_x * 200.0, out_wh, np.pi * rot / 180.0
    sn, cs = np.sin(rad), np.cos(rad)
    src_dir = np.array([0 * cs - (-0.5 * src_w) * sn, 0 * sn + (-0.5 * src_w) * cs])
    third = lambda a, b: b + np.array([-(a - b)[1], (a - b)[0]])  # noqa: E731
    src = np.stack([center, center + src_dir, np.zeros(2)]).astype(np.float32)
    dst = np.stack([[dw * 0.5, dh * 0.5], [dw * 0.5, dh * 0.5 - dw * 0.5], np.zeros(2)]).astype(np.float32)
    src[2], dst[2] = third(src[0], src[1]), third(dst[0], dst[1])
    return cv2.getAffineTransform(src, dst)


def _reference_view(img_rgb, rec, sf, rot, flip, out_wh):
    """Reference §1.3.4-5 on the original image: flip the image and joints, then crop with (c, s*sf, r)."""
    img, c = img_rgb, np.array(rec["center"], dtype=np.float64)
    kpts = np.array(rec["kpts_img"], dtype=np.float64)
    vis = kpts[:, 2].copy()
    if flip:
        w = img.shape[1]
        img, c = img[:, ::-1].copy(), np.array([w - c[0] - 1, c[1]])
        kpts[:, 0] = w - kpts[:, 0] - 1
        perm = COCO17.flip_index()
        kpts, vis = kpts[perm], vis[perm]
    m = _reference_affine(c, rec["scale"][0] * sf, rot, out_wh)
    crop = cv2.warpAffine(img, m, out_wh, flags=cv2.INTER_LINEAR)
    kp = kpts[:, :2] @ m[:, :2].T + m[:, 2]
    return crop, kp, vis


@pytest.mark.parametrize("sf, rot, flip", [(1.0, 0.0, False), (1.2, 35.0, False), (0.8, -50.0, True), (1.0, 0.0, True)])
def test_canvas_view_equals_reference_on_original_image(synth_root, smoke_shards, sf, rot, flip):
    ds = ValDataset(smoke_shards, "val")
    sample = max((ds[i] for i in range(len(ds))), key=lambda s: s["record"]["num_keypoints"])
    rec = sample["record"]
    ann = {
        a["id"]: a
        for a in __import__("json").load(open(synth_root / "annotations/person_keypoints_val.json"))["annotations"]
    }
    rec = rec | {"kpts_img": np.array(ann[rec["ann_id"]]["keypoints"]).reshape(-1, 3)}
    img = cv2.cvtColor(cv2.imread(str(synth_root / "images" / "val" / rec["file_name"])), cv2.COLOR_BGR2RGB)
    ref_crop, ref_kp, ref_vis = _reference_view(img, rec, sf, rot, flip, (64, 64))

    batch = collate([sample])
    # Flipping the image before a crop with rotation r equals reflecting the crop made with rotation -r.
    params = EasyParams(torch.tensor([sf]), torch.tensor([-rot if flip else rot]), torch.tensor([flip]))
    view = make_view(batch, params, (64, 64), COCO17.flip_index(), mean=(0, 0, 0), std=(1 / 255,) * 3, color="rgb")
    ours = view.img[0].permute(1, 2, 0).numpy()
    diff = np.abs(ours - ref_crop.astype(np.float64))
    assert diff.mean() < 6.0, diff.mean()  # interpolation twice + JPEG, never a geometric shift
    labelled = ref_vis > 0
    assert np.array_equal(view.vis[0].numpy() > 0, labelled)
    assert np.abs(view.kpts[0].numpy()[labelled] - ref_kp[labelled]).max() < 1e-3


def test_targets_peak_at_keypoints(smoke_shards):
    ds = ValDataset(smoke_shards, "val")
    batch = collate([ds[i] for i in range(len(ds))])
    g = torch.Generator().manual_seed(0)
    params = sample_easy_params(len(ds), scale_factor=0.25, rot_factor=30, rot_prob=0.6, flip=True, generator=g)
    view = make_view(batch, params, (64, 64), COCO17.flip_index(), mean=MEAN, std=STD, color="rgb")
    hm, weight = view_targets(view, sigma=2.0)
    assert hm.shape == (len(ds), 17, 16, 16)
    kpts_hm, maxvals = decode_heatmaps(hm)
    on = weight > 0
    inside = on & (view.kpts >= 0).all(-1) & (view.kpts < 64 - 2).all(-1)
    assert inside.sum() > 10
    err = (kpts_hm - view.kpts / 4).abs()[inside]
    assert err.max() <= 0.5 + 0.25 + 1e-6  # integer-rounded centre + quarter offset
    assert torch.all(maxvals[inside] == 1.0)
    assert torch.all(weight[view.vis == 0] == 0)


def test_bgr_reverses_channels():
    canvas = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    canvas[:, 0] = 255
    batch = {
        "canvas": canvas, "center": torch.tensor([[3.5, 3.5]], dtype=torch.float64),
        "scale": torch.tensor([[8 / 200, 8 / 200]], dtype=torch.float64),
        "canvas_to_image": torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]], dtype=torch.float64),
        "kpts": torch.zeros(1, 17, 2), "vis": torch.zeros(1, 17),
    }  # fmt: skip
    params = EasyParams(torch.ones(1), torch.zeros(1), torch.zeros(1, dtype=torch.bool))
    rgb = make_view(batch, params, (8, 8), COCO17.flip_index(), mean=(0, 0, 0), std=(1, 1, 1), color="rgb").img
    bgr = make_view(batch, params, (8, 8), COCO17.flip_index(), mean=(0, 0, 0), std=(1, 1, 1), color="bgr").img
    assert rgb[0, 0, 4, 4] > 0.9 and rgb[0, 2, 4, 4] == 0
    assert bgr[0, 2, 4, 4] > 0.9 and bgr[0, 0, 4, 4] == 0


def test_views_of_a_padded_batch_equal_views_of_each_canvas(smoke_shards):
    """Canvases of different sizes batch by zero padding; each view equals the one made from its canvas alone."""
    ds = ValDataset(smoke_shards, "val")
    samples = [ds[i] for i in range(len(ds))]
    assert len({s["canvas"].shape for s in samples}) > 1
    gen = torch.Generator().manual_seed(0)
    params = sample_easy_params(len(samples), scale_factor=0.35, rot_factor=45, rot_prob=1.0, flip=True, generator=gen)
    kw = dict(mean=MEAN, std=STD, color="rgb")
    together = make_view(collate(samples), params, (64, 48), COCO17.flip_index(), **kw)
    for i, s in enumerate(samples):
        p = EasyParams(params.scale[i : i + 1], params.rot[i : i + 1], params.flip[i : i + 1])
        alone = make_view(collate([s]), p, (64, 48), COCO17.flip_index(), **kw)
        torch.testing.assert_close(together.img[i : i + 1], alone.img, atol=1e-3, rtol=0)  # float32 grids
        torch.testing.assert_close(together.kpts[i : i + 1], alone.kpts)
