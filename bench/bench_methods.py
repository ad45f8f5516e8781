"""The synthetic method-comparison mini-table: every `recipes/synth1pct-*.yaml` method, same step budget, val AP.

Generates (or reuses) the synthetic dataset, shards it with ~1% of the train instances labeled, trains each method
for each seed with `sshpe.loop.fit`, and writes a markdown table (AP per seed, mean) plus wall time and machine.

Usage:
    python bench/bench_methods.py --quick --seeds 0 --methods supervised posecons     # CPU smoke (~minutes)
    python bench/bench_methods.py --steps 3000 --seeds 0 1                             # the full table (GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from sshpe.data.coco import load_instances
from sshpe.data.prepare import find_sources, shard_dataset
from sshpe.data.shard_writer import MANIFEST_NAME
from sshpe.loop import fit
from sshpe.recipe import load_recipe
from sshpe.schema import get_schema
from sshpe.synth import generate

REPO = Path(__file__).resolve().parents[1]
PREFIX = "synth1pct-synth_res18-128x96_"
METHODS = (
    "supervised", "posecons", "posecons-jc", "posedual-jc", "multiaugs-single", "multiaugs-dual", "mum", "posemum-eman",
)  # fmt: skip
INPUT_HW = (128, 96)
QUICK_STEPS = 60


def prepare_data(data: Path, shards: Path, *, num_train: int, num_val: int, label_frac: float, workers: int) -> int:
    """Generate the synthetic dataset and its 1%-label shards unless they exist; returns the labeled count."""
    if not (data / "annotations" / "person_keypoints_train.json").is_file():
        print(f"generating {num_train} + {num_val} synthetic images into {data} ...", flush=True)
        generate(data, num_train=num_train, num_val=num_val, workers=workers, progress=False)
    manifest = shards / MANIFEST_NAME
    if manifest.is_file():
        return int(json.loads(manifest.read_text())["splits"]["labeled"]["count"])
    src = find_sources(data)
    total = len(load_instances(
        src.train_ann, src.train_images, kind="labeled", aspect=INPUT_HW[1] / INPUT_HW[0],
        num_joints=get_schema("coco17").num_joints,
    ))  # fmt: skip
    labeled = max(1, round(label_frac * total))
    print(f"sharding {data} -> {shards}: first {labeled} of {total} train instances labeled", flush=True)
    shard_dataset(src, shards, dataset="synth", input_hw=INPUT_HW, labeled=labeled, workers=workers, progress=False)
    return labeled


def run_one(method: str, seed: int, *, shards: Path, steps: int, overrides: list[str], run_root: Path) -> dict:
    """Train one method for `steps` steps from scratch; returns {"AP": ..., "wall_s": ...}."""
    milestones = [max(1, round(steps * 2 / 3)), max(1, round(steps * 5 / 6))]  # the recipes' 2000/2500 of 3000
    recipe = load_recipe(
        REPO / "recipes" / f"{PREFIX}{method}.yaml",
        [
            f"data.shards={shards}", f"seed={seed}", f"train.duration={steps}", f"optim.milestones={milestones}",
            f"train.ckpt_every={steps}", f"train.log_every={max(1, steps // 10)}", "train.progress=false",
            *overrides,
        ],
    )  # fmt: skip
    run_dir = run_root / method / f"seed{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run every time: the table compares equal budgets
    t0 = time.perf_counter()
    stats = fit(recipe, run_dir, resume=False)
    return {"AP": float(stats["AP"]), "wall_s": time.perf_counter() - t0}


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cpus": os.cpu_count(), "gpu": gpu,
    }  # fmt: skip


def to_markdown(result: dict) -> str:
    seeds = result["seeds"]
    head = "| method | " + " | ".join(f"AP seed {s}" for s in seeds) + " | mean AP | wall s |"
    rows = [head, "|" + "---|" * (len(seeds) + 3)]
    for method, r in result["methods"].items():
        aps = " | ".join(f"{100 * a:.2f}" for a in r["AP"])
        rows.append(f"| {method} | {aps} | {100 * r['mean_AP']:.2f} | {sum(r['wall_s']):.0f} |")
    m = result["machine"]
    return "\n".join([
        f"# Synthetic method comparison ({result['steps']} steps, {result['labeled']} labeled instances)", "",
        f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
        f"Machine: {m['platform']}, {m['cpus']} CPUs, GPU: {m['gpu'] or 'none'}, torch {m['torch']}  ",
        f"Total wall time: {result['wall_s']:.0f} s", "", *rows, "",
    ])  # fmt: skip


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods to run")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds (recipe `seed`)")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps per run (LR drops at 2/3 and 5/6)")
    p.add_argument("--quick", action="store_true", help=f"CPU smoke budget: {QUICK_STEPS} steps")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override section.field=value")
    p.add_argument("--data", type=Path, default=REPO / "data" / "synth", help="synthetic dataset folder")
    p.add_argument("--shards", type=Path, default=REPO / "shards" / "synth1pct", help="1%%-label shard folder")
    p.add_argument("--train-images", type=int, default=2000, help="synthetic train images when generating")
    p.add_argument("--val-images", type=int, default=300, help="synthetic val images when generating")
    p.add_argument("--label-frac", type=float, default=0.01, help="labeled fraction of the train instances")
    p.add_argument("--workers", type=int, default=2, help="processes for generation and sharding")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "bench_methods", help="run folders")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "methods.json", help="JSON; .md beside")
    args = p.parse_args()
    steps = QUICK_STEPS if args.quick else args.steps

    t0 = time.perf_counter()
    labeled = prepare_data(args.data, args.shards, num_train=args.train_images, num_val=args.val_images,
                           label_frac=args.label_frac, workers=args.workers)  # fmt: skip
    methods: dict[str, dict] = {}
    for method in args.methods:
        runs = []
        for seed in args.seeds:
            r = run_one(method, seed, shards=args.shards, steps=steps, overrides=args.overrides, run_root=args.runs)
            print(f"{method:18s} seed {seed}: AP {100 * r['AP']:.2f} ({r['wall_s']:.0f} s)", flush=True)
            runs.append(r)
        aps = [r["AP"] for r in runs]
        methods[method] = {"AP": aps, "mean_AP": sum(aps) / len(aps), "wall_s": [r["wall_s"] for r in runs]}

    result = {
        "command": "python bench/bench_methods.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "steps": steps, "seeds": args.seeds, "labeled": labeled, "overrides": args.overrides,
        "machine": machine(), "methods": methods, "wall_s": time.perf_counter() - t0,
    }  # fmt: skip
    write_atomic(args.out, json.dumps(result, indent=1) + "\n")
    md = to_markdown(result)
    write_atomic(args.out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
