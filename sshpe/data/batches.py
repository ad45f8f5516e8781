"""Samples to batches: canvases of different sizes padded into one channels-last tensor, or their JPEG bytes packed
for the training device, which decodes them there (`data.decode`, DESIGN decision 2).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from sshpe.data.shard_access import ShardError


def pad_stack(images: list[torch.Tensor]) -> torch.Tensor:
    """Stack (H_i, W_i, 3) canvases into a (B, 3, H_max, W_max) batch, each at the top left, zeros elsewhere.

    Canvas coordinates are pixels from the top-left corner, so every record's maps stay valid, and a warp reads
    zeros beyond a canvas as it would beyond the canvas alone (`geometry.warp_images`). The batch is stored
    channels-last (a (B, H, W, 3) buffer seen as (B, 3, H, W)): filling it copies whole rows of each canvas, where a
    contiguous (B, 3, H, W) batch would cost a transposing copy of every pixel.
    """
    h = max(int(im.shape[0]) for im in images)
    w = max(int(im.shape[1]) for im in images)
    out = torch.empty((len(images), h, w, images[0].shape[2]), dtype=images[0].dtype, device=images[0].device)
    for i, im in enumerate(images):
        hi, wi = int(im.shape[0]), int(im.shape[1])
        out[i, :hi, :wi] = im
        out[i, hi:] = 0
        out[i, :hi, wi:] = 0
    return out.permute(0, 3, 1, 2)


def _pack_jpegs(jpegs: list[np.ndarray]) -> dict:
    """JPEG bytes of a batch as one flat tensor and offsets (one shared-memory block through the DataLoader)."""
    offsets = np.zeros(len(jpegs) + 1, dtype=np.int64)
    np.cumsum([j.size for j in jpegs], out=offsets[1:])
    return {"jpeg": torch.from_numpy(np.concatenate(jpegs)), "jpeg_offsets": torch.from_numpy(offsets)}


def decode_batch(batch: dict, device: torch.device | str) -> dict:
    """Finish a batch collated with `decode=False`: decode its JPEGs on `device` (nvJPEG, batched, on CUDA; libjpeg
    on CPU, the same pixels as the workers' OpenCV decode) into "canvas" (B, 3, H_max, W_max) uint8 RGB. A batch
    that holds canvases already is returned as it is.

    Raises:
        ShardError: a JPEG does not decode; the message names the sample keys of the batch.
    """
    if "jpeg" not in batch:
        return batch
    out = dict(batch)
    data, offsets = out.pop("jpeg"), out.pop("jpeg_offsets").tolist()
    chunks = [data[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    device = torch.device(device)
    try:
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders for TorchCodec (still supported)
            warnings.simplefilter("ignore", DeprecationWarning)
            images = decode_jpeg(chunks, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as err:
        raise ShardError(f"a JPEG of the batch with samples {out['key']} does not decode on {device} ({err}); "
                         "re-run `sshpe shard`, or set data.decode: worker") from None  # fmt: skip
    out["canvas"] = pad_stack([im.permute(1, 2, 0) for im in images])
    return out


def decode_in_workers(mode: str, device: torch.device | str) -> bool:
    """Resolve `data.decode` (auto | worker | device) for a training device: True = the DataLoader workers decode."""
    if mode not in ("auto", "worker", "device"):
        raise ValueError(f"data.decode must be auto, worker or device, got {mode!r}")
    return mode == "worker" or (mode == "auto" and torch.device(device).type != "cuda")


def collate(samples: list[dict]) -> dict:
    """Stack decoded samples into a batch.

    Returns:
        "canvas" (B, 3, H, W) uint8 RGB, stored channels-last (canvases of different sizes padded to the largest,
        `pad_stack`) or, for samples read with `decode=False`, "jpeg" (N,) uint8 bytes and "jpeg_offsets" (B + 1,)
        int64 that `decode_batch` turns into "canvas" on the training device; "kpts" (B, K, 2) float32 canvas px;
        "vis" (B, K) float32 COCO v; "center" (B, 2) float64 image px; "scale" (B, 2) float64 (200-px units);
        "canvas_to_image" (B, 2, 3) float64; "score" (B,) float32; "raw_bbox" (B, 4) float64 the source's box
        (x, y, w, h) in image px; "image_id", "ann_id" (B,) int64; "key" list[str]. When every record has the
        unlabeled split's hidden ground truth, also "hidden_kpts" (B, K, 2) canvas px and "hidden_vis" (B, K): for
        pseudo-label metrics only (`sshpe.step.train_step` never reads them).
    """
    recs = [s["record"] for s in samples]
    if "jpeg" in samples[0]:
        pixels = _pack_jpegs([s["jpeg"] for s in samples])
    else:
        pixels = {"canvas": pad_stack([torch.from_numpy(s["canvas"]) for s in samples])}
    kpts = torch.tensor([r["keypoints"] for r in recs], dtype=torch.float32)
    hidden = {}
    if all("hidden_keypoints" in r for r in recs):
        h = torch.tensor([r["hidden_keypoints"] for r in recs], dtype=torch.float32)
        hidden = {"hidden_kpts": h[..., :2].contiguous(), "hidden_vis": h[..., 2].contiguous()}
    fields = {
        "kpts": kpts[..., :2].contiguous(),
        "vis": kpts[..., 2].contiguous(),
        "center": torch.tensor([r["center"] for r in recs], dtype=torch.float64),
        "scale": torch.tensor([r["scale"] for r in recs], dtype=torch.float64),
        "canvas_to_image": torch.tensor([r["canvas_to_image"] for r in recs], dtype=torch.float64),
        "score": torch.tensor([r["score"] for r in recs], dtype=torch.float32),
        # shards written before raw_bbox existed: the (cleaned) box
        "raw_bbox": torch.tensor([r["raw_bbox"] if "raw_bbox" in r else r["bbox"] for r in recs], dtype=torch.float64),
        "image_id": torch.tensor([r["image_id"] for r in recs], dtype=torch.int64),
        "ann_id": torch.tensor([r["ann_id"] for r in recs], dtype=torch.int64),
        "key": [r["key"] for r in recs],
    }
    return hidden | pixels | fields
