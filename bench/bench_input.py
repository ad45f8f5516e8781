"""Worker CPU time per sample: the reference's per-sample data path vs sshpe's workers, side by side (issue 12).

One process, one thread (a worker's share of one core); CPU time (`time.process_time`) per sample, the median of
`--repeats` rounds that interleave the paths so that load on a shared machine hits them alike.

* reference: what each reference DataLoader worker does per sample (SSHPE_REFERENCE §1.3): `cv2.imread` of the
  whole image, the flip of the whole array (p = 0.5), `get_affine_transform` + `cv2.warpAffine` for the easy view
  and for a second (hard / RandAugment copy) view, `generate_target` (integer-rounded Gaussians in a (6σ+1)² window).
  Its ToTensor/Normalize per view are left out, so the baseline is, if anything, cheaper than the reference.
* sshpe, `data.decode: worker`: read the sample's members from the tar, check its record, decode the canvas JPEG,
  collate (stack, padding canvases to the batch's largest).
* sshpe, `data.decode: device`: read the members, check the record and the JPEG markers, collate the bytes.
* device side, per sample of a batch: `decode_batch` (the decode the workers skipped) and the easy view + targets,
  on `--device` (CPU time on cpu; synchronised wall time on cuda: nvJPEG + grid_sample).

Usage: python bench/bench_input.py DATA SHARDS [--split labeled] [--samples 256] [--batch 32] [--repeats 5]
       [--device cpu|cuda] [--json out.json]
DATA: the dataset root `sshpe shard` read (e.g. data/synth); SHARDS: its shard folder. The reference path reads the
same persons from the original images.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch


def _affine(center: np.ndarray, scale_x: float, rot: float, out_wh: tuple[int, int]) -> np.ndarray:
    """The reference's `get_affine_transform`: three point correspondences -> cv2.getAffineTransform."""
    src_w, (dst_w, dst_h) = scale_x * 200.0, out_wh
    rad = math.radians(rot)
    src_dir = np.array([0.5 * src_w * math.sin(rad), -0.5 * src_w * math.cos(rad)])
    dst_dir = np.array([0.0, -0.5 * dst_w])
    src = np.zeros((3, 2), np.float32)
    dst = np.zeros((3, 2), np.float32)
    src[0], src[1] = center, center + src_dir
    dst[0] = dst[1] = (dst_w * 0.5, dst_h * 0.5)
    dst[1] += dst_dir
    for pts in (src, dst):
        d = pts[0] - pts[1]
        pts[2] = pts[1] + np.array([-d[1], d[0]])
    return cv2.getAffineTransform(src, dst)


def _targets(joints: np.ndarray, vis: np.ndarray, hm_wh: tuple[int, int], sigma: float) -> np.ndarray:
    """The reference's `generate_target`: per joint, a peak-1 Gaussian in a (6σ+1)² window at the rounded centre."""
    w, h = hm_wh
    out = np.zeros((len(joints), h, w), np.float32)
    r = int(3 * sigma)
    size = 2 * r + 1
    g1 = np.arange(size, dtype=np.float32)
    g = np.exp(-((g1[None, :] - r) ** 2 + (g1[:, None] - r) ** 2) / (2 * sigma**2))
    for j, ((x, y), v) in enumerate(zip(joints, vis)):
        mx, my = int(x / 4 + 0.5), int(y / 4 + 0.5)
        x0, y0, x1, y1 = mx - r, my - r, mx + r + 1, my + r + 1
        if v <= 0 or x0 >= w or y0 >= h or x1 < 0 or y1 < 0:
            continue
        gx, gy = (max(0, -x0), min(x1, w) - x0), (max(0, -y0), min(y1, h) - y0)
        out[j, max(0, y0) : min(y1, h), max(0, x0) : min(x1, w)] = g[gy[0] : gy[1], gx[0] : gx[1]]
    return out


def reference_sample(inst, input_hw: tuple[int, int], flip_index: list[int], rng: np.random.Generator) -> None:
    """One sample of the reference's worker path (§1.3.1-6), for the easy view and a second view."""
    h_in, w_in = input_hw
    img = cv2.imread(str(inst.image_path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    for _view in range(2):
        joints, vis, center = inst.keypoints[:, :2].copy(), inst.keypoints[:, 2].copy(), inst.center.copy()
        s = inst.scale[0] * float(np.clip(1 + 0.25 * rng.standard_normal(), 0.75, 1.25))
        r = float(np.clip(30 * rng.standard_normal(), -60, 60)) if rng.random() <= 0.6 else 0.0
        src = img
        if rng.random() <= 0.5:
            src = img[:, ::-1]  # the reference flips the whole array (a copy in cv2 below)
            joints = joints[flip_index]
            vis = vis[flip_index]
            joints[:, 0] = img.shape[1] - joints[:, 0] - 1
            center[0] = img.shape[1] - center[0] - 1
        m = _affine(center, s, r, (w_in, h_in))
        cv2.warpAffine(np.ascontiguousarray(src), m, (w_in, h_in), flags=cv2.INTER_LINEAR)
        crop_joints = joints @ m[:, :2].T + m[:, 2]
        _targets(crop_joints, vis, (w_in // 4, h_in // 4), 2.0)


def _cpu_per_sample(fn, n: int) -> float:
    t0 = time.process_time()
    fn()
    return (time.process_time() - t0) / n


def _wall_per_sample(fn, n: int) -> float:
    """Seconds per sample of work queued on a CUDA device (synchronised before and after)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("shards", type=Path)
    parser.add_argument("--split", default="labeled")
    parser.add_argument("--samples", type=int, default=256, help="samples per round (the split's first N)")
    parser.add_argument("--batch", type=int, default=32, help="collate / device batch size")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--device", default="cpu", help="device of the device-side figures (cpu | cuda)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    from sshpe.data.batches import collate, decode_batch
    from sshpe.data.prepare import find_sources, load_split
    from sshpe.data.shard_writer import read_manifest
    from sshpe.data.streams import ValDataset
    from sshpe.evaluation.predict import batch_to_device
    from sshpe.schema import schema_from_data
    from sshpe.views import identity_params, make_view, view_targets

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    manifest = read_manifest(args.shards)
    input_hw = tuple(manifest["input_size"])
    schema = schema_from_data(manifest["schema"], str(args.shards))
    worker = ValDataset(args.shards, args.split)
    handover = ValDataset(args.shards, args.split, decode=False)
    n = min(args.samples, len(worker))
    recs = [worker[i]["record"] for i in range(n)]  # also warms the tar index and checksum caches
    handover[0]
    train = load_split(find_sources(args.data), "train", kind="labeled", aspect=input_hw[1] / input_hw[0],
                       num_joints=schema.num_joints)  # fmt: skip
    by_id = {(i.image_id, i.ann_id): i for i in train}
    insts = [by_id[(r["image_id"], r["ann_id"])] for r in recs]
    flip_index = schema.flip_index()
    rng = np.random.default_rng(0)
    batches = [range(a, min(a + args.batch, n)) for a in range(0, n, args.batch)]

    def ref() -> None:
        for inst in insts:
            reference_sample(inst, input_hw, flip_index, rng)

    def ours(ds) -> None:
        for b in batches:
            collate([ds[i] for i in b])

    bytes_batches = [collate([handover[i] for i in b]) for b in batches]

    device = torch.device(args.device)

    def device_decode() -> None:
        for b in bytes_batches:
            decode_batch(b, device)

    decoded = [batch_to_device(b, device) for b in bytes_batches]

    def device_views() -> None:
        for b in decoded:
            view = make_view(b, identity_params(len(b["key"])), input_hw, flip_index, mean=(0.485, 0.456, 0.406),
                             std=(0.229, 0.224, 0.225), color="rgb")  # fmt: skip
            view_targets(view, 2.0)

    paths = {"reference": ref, "worker_decode": lambda: ours(worker), "device_decode": lambda: ours(handover),
             "device_side_decode": device_decode, "device_side_view_targets": device_views}  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(args.repeats):
        for name, fn in paths.items():
            on_device = name.startswith("device_side") and device.type == "cuda"
            times[name].append(_wall_per_sample(fn, n) if on_device else _cpu_per_sample(fn, n))
    med = {k: statistics.median(v) for k, v in times.items()}
    split = manifest["splits"][args.split]
    px = split.get("canvas_pixels") or {"mean": manifest["canvas_side"] ** 2}
    image_px = statistics.mean(i.image_size[0] * i.image_size[1] for i in insts)
    out = {
        "shards": str(args.shards), "split": args.split, "input_size": list(input_hw), "samples": n,
        "repeats": args.repeats, "device": str(device), "canvas_pixels_mean": px["mean"], "image_pixels_mean": image_px,
        "shard_bytes_per_sample": sum(s["size"] or 0 for s in split["shards"]) / split["count"],
        "cpu_ms_per_sample": {k: 1e3 * v for k, v in med.items()},
        "samples_per_s_per_core": {k: 1.0 / v for k, v in med.items()},
        "reference_over": {k: med["reference"] / med[k] for k in ("worker_decode", "device_decode")},
    }  # fmt: skip
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
