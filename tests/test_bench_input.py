"""bench/bench_input.py: its reference baseline is the reference's maths (so the ratio it prints compares like with
like), and it runs on real shards, printing every figure the benchmark table needs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

from sshpe import geometry
from sshpe.evaluation.codec import encode_heatmaps

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_input", REPO / "bench" / "bench_input.py")
bench_input = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_input)


def test_baseline_targets_and_affine_are_the_references():
    rng = np.random.default_rng(1)
    joints = rng.uniform(-10, 200, size=(17, 2))
    vis = (rng.random(17) > 0.3).astype(np.float64)
    ours, weight = encode_heatmaps(torch.tensor(joints)[None], torch.tensor(vis)[None], (64, 48), 4, 2.0)
    baseline = bench_input._targets(joints, vis, (48, 64), 2.0)
    np.testing.assert_allclose(baseline, ours[0].numpy() * weight[0].numpy()[:, None, None], atol=1e-6)
    center, scale_x, rot = np.array([150.0, 120.0]), 0.9, 35.0
    m = bench_input._affine(center, scale_x, rot, (192, 256))
    ref = geometry.crop_matrix(torch.tensor(center)[None], torch.tensor([scale_x], dtype=torch.float64),
                               torch.tensor([rot], dtype=torch.float64), (192, 256))  # fmt: skip
    np.testing.assert_allclose(m, ref[0].numpy(), atol=1e-3)


def test_bench_runs_on_real_shards(synth_root, smoke_shards, tmp_path, monkeypatch):
    out = tmp_path / "input.json"
    argv = ["bench_input.py", str(synth_root), str(smoke_shards), "--samples", "8", "--batch", "4", "--repeats", "1",
            "--json", str(out)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    bench_input.main()
    res = json.loads(out.read_text())
    paths = {"reference", "worker_decode", "device_decode", "device_side_decode", "device_side_view_targets"}
    assert set(res["cpu_ms_per_sample"]) == paths and all(v > 0 for v in res["cpu_ms_per_sample"].values())
    assert res["samples"] == 8 and res["input_size"] == [64, 64] and res["device"] == "cpu"
    manifest = json.loads((smoke_shards / "manifest.json").read_text())
    assert res["canvas_pixels_mean"] == manifest["splits"]["labeled"]["canvas_pixels"]["mean"]
    ms = res["cpu_ms_per_sample"]
    assert res["reference_over"]["worker_decode"] == ms["reference"] / ms["worker_decode"]
