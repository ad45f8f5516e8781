"""The synthetic method-comparison mini-table: every `recipes/synth1pct-*.yaml` method, same step budget, val AP.

Generates (or reuses) the synthetic dataset, shards it with ~1% of the train instances labeled, trains each method
for each seed with `sshpe.loop.fit`, and writes a markdown table (AP per seed, mean) plus wall time and machine.

Two profiles share the recipes and differ only in the network and the default budget:
  cpu      the recipes with a width-8 pose HRNet (`hrnet_tiny`, 0.33M parameters): ~7x cheaper per sample than
           ResNet-18 at 128x96 on a CPU core, learning somewhat slower per step (all labels, 1500 steps: 3.1 vs
           5.4 AP); MUM / Pose-MUM mix at the HRNet stages instead of the ResNet ones. Default 1000 steps
           (the CPU table in docs/benchmarks.md: ~82 min with --jobs 2 on 2 cores).
  recipes  the recipes as written (ResNet-18 SimpleBaseline, narrow head). Default 3000 steps; meant for a GPU.

Runs are resumable: a finished run (its `result.json` matches the settings) is reused, an interrupted one continues
from its last checkpoint, so re-running the same command after a kill only does the missing work. `--fresh` starts
every run again. `--jobs N` trains N runs at once in separate processes (CPU threads split between them); on
Linux they die with the bench process, so a killed bench leaves no run training behind.

Usage:
    python bench/bench_methods.py --quick --seeds 0 --methods supervised posecons     # smoke (~minutes)
    python bench/bench_methods.py --seeds 0 1 --jobs 2                                 # the CPU table (~82 min)
    python bench/bench_methods.py --profile recipes --steps 3000 --seeds 0 1           # ResNet-18 table (GPU)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch

from sshpe.data.coco import load_instances
from sshpe.data.prepare import find_sources, shard_dataset
from sshpe.data.shard_writer import MANIFEST_NAME
from sshpe.loop import fit
from sshpe.recipe import dump_recipe, load_recipe
from sshpe.schema import get_schema
from sshpe.synth import generate

REPO = Path(__file__).resolve().parents[1]
PREFIX = "synth1pct-synth_res18-128x96_"
METHODS = (
    "supervised", "posecons", "posecons-jc", "posedual-jc", "multiaugs-single", "multiaugs-dual", "mum", "posemum-eman",
)  # fmt: skip
INPUT_HW = (128, 96)
QUICK_STEPS = 60
MUM_METHODS = ("mum", "posemum-eman")
# relative step cost (forward+backward passes per step), used only to start the most expensive runs first
COST = {"multiaugs-dual": 10.7, "multiaugs-single": 5.3, "posedual-jc": 4.7}
HRNET_MUM = ["augment.mum.unmix_after=stage4", "augment.mum.pose_mum.candidates=[stage1,stage2,stage3]"]
PROFILES = {
    "cpu": {"steps": 1000, "overrides": ["model.arch=hrnet_tiny", "model.head_channels=[256,256,256]"]},
    "recipes": {"steps": 3000, "overrides": []},
}


def profile_overrides(profile: str, method: str) -> list[str]:
    """Recipe overrides a profile applies to one method (the MUM stage names follow the backbone)."""
    extra = HRNET_MUM if profile == "cpu" and method in MUM_METHODS else []
    if profile == "cpu" and method == "mum":
        extra = extra[:1]  # plain MUM has no pose_mum section
    return [*PROFILES[profile]["overrides"], *extra]


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


def run_one(
    method: str, seed: int, *, shards: Path, steps: int, overrides: list[str], run_root: Path, threads: int, fresh: bool
) -> dict:
    """Train one method for `steps` steps from scratch (or finish/reuse that run); returns {"AP", "wall_s"}."""
    torch.set_num_threads(threads)
    milestones = [max(1, round(steps * 2 / 3)), max(1, round(steps * 5 / 6))]  # the recipes' 2000/2500 of 3000
    recipe = load_recipe(
        REPO / "recipes" / f"{PREFIX}{method}.yaml",
        [
            f"data.shards={shards}", f"seed={seed}", f"train.duration={steps}", f"optim.milestones={milestones}",
            f"train.ckpt_every={max(1, steps // 3)}", f"train.log_every={max(1, steps // 10)}", "train.progress=false",
            *overrides,
        ],
    )  # fmt: skip
    run_dir = run_root / method / f"seed{seed}"
    done = run_dir / "result.json"
    same = (run_dir / "recipe.yaml").is_file() and (run_dir / "recipe.yaml").read_text() == dump_recipe(recipe)
    if not same or fresh:
        shutil.rmtree(run_dir, ignore_errors=True)  # another budget or network: the table compares equal runs
    elif done.is_file():
        return json.loads(done.read_text())
    resumed = any((run_dir / "checkpoints").glob("*/COMPLETE"))  # an interrupted run of the same settings
    t0 = time.perf_counter()
    stats = fit(recipe, run_dir, resume=True)
    result = {"AP": float(stats["AP"]), "wall_s": time.perf_counter() - t0, "resumed": resumed}  # this process only
    write_atomic(done, json.dumps(result) + "\n")
    return result


def _die_with_parent() -> None:
    """Pool initializer: on Linux a worker gets SIGTERM when the bench process dies, so killing the bench (even with
    SIGKILL) does not leave orphaned runs training into the run folders a restarted bench then uses."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)


def _run_job(job: tuple) -> tuple[str, int, dict]:
    method, seed, kwargs = job
    return method, seed, run_one(method, seed, **kwargs)


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cpus": os.cpu_count(), "gpu": gpu,
    }  # fmt: skip


def to_markdown(result: dict) -> str:
    seeds = result["seeds"]
    head = "| method | " + " | ".join(f"AP seed {s}" for s in seeds) + " | mean AP | vs supervised | wall s |"
    rows = [head, "|" + "---|" * (len(seeds) + 4)]
    base = result["methods"].get("supervised", {}).get("mean_AP")
    for method, r in result["methods"].items():
        aps = " | ".join(f"{100 * a:.2f}" for a in r["AP"])
        delta = f"{100 * (r['mean_AP'] - base):+.2f}" if base is not None and method != "supervised" else ""
        rows.append(f"| {method} | {aps} | {100 * r['mean_AP']:.2f} | {delta} | {sum(r['wall_s']):.0f} |")
    m = result["machine"]
    return "\n".join([
        f"# Synthetic method comparison ({result['profile']} profile, {result['steps']} steps, "
        f"{result['labeled']} labeled instances)", "",
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
    p.add_argument("--profile", default="cpu", choices=PROFILES, help="network and default budget (see above)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (LR drops at 2/3 and 5/6)")
    p.add_argument("--quick", action="store_true", help=f"smoke budget: {QUICK_STEPS} steps")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (separate processes)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: CPUs / jobs)")
    p.add_argument("--fresh", action="store_true", help="retrain every run instead of reusing/resuming")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override section.field=value")
    p.add_argument("--data", type=Path, default=REPO / "data" / "synth", help="synthetic dataset folder")
    p.add_argument("--shards", type=Path, default=REPO / "shards" / "synth1pct", help="1%%-label shard folder")
    p.add_argument("--train-images", type=int, default=2000, help="synthetic train images when generating")
    p.add_argument("--val-images", type=int, default=300, help="synthetic val images when generating")
    p.add_argument("--label-frac", type=float, default=0.01, help="labeled fraction of the train instances")
    p.add_argument("--workers", type=int, default=2, help="processes for generation and sharding")
    p.add_argument("--runs", type=Path, default=None, help="run folders (default runs/bench_methods/PROFILE)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "methods.json", help="JSON; .md beside")
    args = p.parse_args()
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    steps = QUICK_STEPS if args.quick else args.steps or PROFILES[args.profile]["steps"]
    run_root = args.runs or REPO / "runs" / "bench_methods" / args.profile
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)

    t0 = time.perf_counter()
    labeled = prepare_data(args.data, args.shards, num_train=args.train_images, num_val=args.val_images,
                           label_frac=args.label_frac, workers=args.workers)  # fmt: skip
    jobs = [
        (method, seed, dict(
            shards=args.shards, steps=steps, overrides=[*profile_overrides(args.profile, method), *args.overrides],
            run_root=run_root, threads=threads, fresh=args.fresh,
        ))
        for method in args.methods for seed in args.seeds
    ]  # fmt: skip
    jobs.sort(key=lambda j: -COST.get(j[0], 1))  # most expensive first: parallel runs finish closer together
    done: dict[tuple[str, int], dict] = {}
    if args.jobs == 1:
        results = map(_run_job, jobs)
    else:
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(args.jobs, mp_context=ctx, initializer=_die_with_parent)
        results = (f.result() for f in [pool.submit(_run_job, j) for j in jobs])
    for method, seed, r in results:
        print(f"{method:18s} seed {seed}: AP {100 * r['AP']:.2f} ({r['wall_s']:.0f} s)", flush=True)
        done[method, seed] = r
    methods: dict[str, dict] = {}
    for method in args.methods:
        runs = [done[method, seed] for seed in args.seeds]
        aps = [r["AP"] for r in runs]
        methods[method] = {"AP": aps, "mean_AP": sum(aps) / len(aps), "wall_s": [r["wall_s"] for r in runs]}

    result = {
        "command": "python bench/bench_methods.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": args.profile, "steps": steps, "seeds": args.seeds, "labeled": labeled, "jobs": args.jobs,
        "overrides": [*PROFILES[args.profile]["overrides"], *args.overrides],
        "machine": machine(), "methods": methods, "wall_s": time.perf_counter() - t0,
    }  # fmt: skip
    write_atomic(args.out, json.dumps(result, indent=1) + "\n")
    md = to_markdown(result)
    write_atomic(args.out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
