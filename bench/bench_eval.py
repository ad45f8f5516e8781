"""Time COCO keypoint evaluation with pycocotools and faster-coco-eval (`eval.backend`) on the same results file.

The ground truth and results are synthetic but COCO-val sized by default: 5000 images, about 11k person annotations
of which about 6.4k carry keypoints (val2017: 11004 / 6352), one result per labelled person (GT boxes, as the semi
tables) plus false positives. Both backends score the same file; the script checks the 10 stats agree to 1e-4.
Usage: python bench/bench_eval.py [--images 5000] [--repeat 3] [--seed 0]
Timings need a quiet machine; the ratio is the figure that travels.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from sshpe.evaluation.coco_ap import STAT_KEYS, coco_keypoint_eval
from sshpe.schema import COCO17

# A standing person in a unit box (x right, y down), COCO-17 order.
TEMPLATE = np.array([
    [0.50, 0.08], [0.54, 0.06], [0.46, 0.06], [0.58, 0.08], [0.42, 0.08], [0.68, 0.22], [0.32, 0.22],
    [0.75, 0.38], [0.25, 0.38], [0.78, 0.52], [0.22, 0.52], [0.62, 0.55], [0.38, 0.55], [0.63, 0.76],
    [0.37, 0.76], [0.64, 0.96], [0.36, 0.96],
])  # fmt: skip


def make_eval_set(num_images: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """A COCO keypoint ground truth and a results list for it.

    Persons per image ~ Poisson(2.2); 58% carry 5-17 labelled keypoints (the others none, as COCO's unlabelled
    persons); each labelled person gets one result with keypoints jittered by 0.5-8% of its height, a third of the
    images get a false positive. Box sizes span COCO's small / medium / large ranges. Results carry `bbox` (the
    area pycocotools uses then) and `center`/`scale` as SHP/MA write them.
    """
    rng = np.random.default_rng(seed)
    w_img, h_img = 640, 480
    images, anns, results = [], [], []
    for img_id in range(1, num_images + 1):
        images.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "width": w_img, "height": h_img})
        for _ in range(rng.poisson(2.2)):
            h = float(np.exp(rng.uniform(np.log(20), np.log(420))))
            w = h * rng.uniform(0.3, 0.6)
            x, y = rng.uniform(0, w_img - w), rng.uniform(0, max(1.0, h_img - h))
            kpts = TEMPLATE * [w, h] + [x, y]
            vis = np.zeros(17)
            if rng.random() < 0.58:
                labelled = rng.choice(17, int(rng.integers(5, 18)), replace=False)
                vis[labelled] = rng.choice([1, 2], len(labelled))
            flat = np.concatenate([kpts * (vis[:, None] > 0), vis[:, None]], 1)
            anns.append({
                "id": len(anns) + 1, "image_id": img_id, "category_id": 1, "iscrowd": 0, "bbox": [x, y, w, h],
                "area": w * h * 0.6, "keypoints": flat.reshape(-1).tolist(), "num_keypoints": int((vis > 0).sum()),
            })  # fmt: skip
            if vis.any():
                results.append(_result(rng, img_id, kpts, (x, y, w, h), h * rng.uniform(0.005, 0.08)))
        if rng.random() < 1 / 3:
            h = float(rng.uniform(30, 300))
            box = (rng.uniform(0, 500), rng.uniform(0, 200), h * 0.45, h)
            results.append(_result(rng, img_id, TEMPLATE * box[2:] + box[:2], box, 0.0))
    cats = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(COCO17.names),
             "skeleton": [[a + 1, b + 1] for a, b in COCO17.skeleton]}]  # fmt: skip
    return {"images": images, "annotations": anns, "categories": cats}, results


def _result(rng, img_id: int, kpts: np.ndarray, box, noise: float) -> dict:
    pred = kpts + rng.normal(0, noise, kpts.shape)
    conf = rng.uniform(0.1, 1.0, (17, 1))
    x, y, w, h = (float(v) for v in box)
    return {"image_id": img_id, "category_id": 1, "keypoints": np.concatenate([pred, conf], 1).reshape(-1).tolist(),
            "score": float(rng.uniform(0.2, 1.0)), "center": [x + w / 2, y + h / 2],
            "scale": [w * 1.25 / 200, h * 1.25 / 200], "bbox": [x, y, w, h]}  # fmt: skip


def time_backend(gt_file: Path, results: list[dict], backend: str, repeat: int) -> tuple[float, float, dict]:
    """Best wall time and best process CPU time over `repeat` runs of the whole evaluation (GT load, loadRes,
    evaluate, accumulate, summarize), and the stats. On a shared machine the CPU time is the steadier figure."""
    wall, cpu, stats = float("inf"), float("inf"), {}
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        stats = coco_keypoint_eval(gt_file, results, backend=backend)
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    gt, results = make_eval_set(args.images, args.seed)
    labelled = sum(a["num_keypoints"] > 0 for a in gt["annotations"])
    print(f"{args.images} images, {len(gt['annotations'])} persons ({labelled} with keypoints), {len(results)} results")
    with tempfile.TemporaryDirectory() as tmp:
        gt_file = Path(tmp) / "person_keypoints_val.json"
        gt_file.write_text(json.dumps(gt))
        w_ref, c_ref, s_ref = time_backend(gt_file, results, "pycocotools", args.repeat)
        w_fast, c_fast, s_fast = time_backend(gt_file, results, "faster", args.repeat)
    diff = max(abs(s_ref[k] - s_fast[k]) for k in STAT_KEYS)
    print(f"pycocotools      wall {w_ref:8.2f} s  cpu {c_ref:8.2f} s  AP {100 * s_ref['AP']:.2f}")
    print(f"faster-coco-eval wall {w_fast:8.2f} s  cpu {c_fast:8.2f} s  AP {100 * s_fast['AP']:.2f}")
    print(f"speed-up x{w_ref / w_fast:.1f} wall, x{c_ref / c_fast:.1f} cpu; largest stat difference {diff:.2e} "
          "(parity bound 1e-4)")  # fmt: skip


if __name__ == "__main__":
    main()
