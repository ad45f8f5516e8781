"""The synthetic semi-supervised table: every `recipes/synth-*` method on one labeled split, one budget, 2+ seeds.

Protocol (docs/benchmarks.md, "Semi-supervised methods on the synthetic data"):
  1. data: `sshpe synth` (default: 2000 train + 300 val images), sharded once per labeled fraction: the first F of
     the train instances labeled (the reference's first-N protocol), every train instance unlabeled with its labels
     hidden (kept apart for the pseudo-label metric only).
  2. burn-in: per seed, supervised training on the labeled split for `--burn-in` steps at a constant learning
     rate. It stands in for the papers' ImageNet initialisation, which cannot be downloaded here, so that teachers
     start from a model that already finds people; two-network methods get two burn-ins (seeds s and s + 1000).
  3. each method continues from its seed's burn-in for `--steps` steps (fresh Adam, LR x0.1 at 2/3 and 5/6); the
     supervised row continues supervised on the same schedule.
Reports COCO AP on the synthetic val split per seed, the mean, the gap to supervised, the teachers' pseudo-label
PCK@0.05 over the last logged windows, and wall time; JSON and markdown under bench/results/.

`--calibrate` runs only the supervised row (same burn-in and budget) at every `--fractions` and with all labels:
the runs that decide the labeled fraction before any semi-supervised method is trained (docs/benchmarks.md
records the rule and the decision).

Runs are resumable: a finished run (its `result.json` beside a recipe that resolves to the same fields; schema
fields added since it ran take their defaults) is reused, so re-running the same command after a kill only does the
missing work; `--fresh` retrains. `--jobs N` trains N runs at once in separate processes that die with the bench
process.

Usage:
    python bench/bench_methods.py --calibrate                      # supervised at 1%, 2.5%, 5% and all labels
    python bench/bench_methods.py                                 # the table (9 methods x 2 seeds, 2.5% labeled)
    python bench/bench_methods.py --quick --methods supervised posecons --seeds 0   # smoke (~2 min)
    python bench/bench_methods.py --plan --jobs 1 --threads 2      # time each method's step, project the wall time
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
from safetensors import safe_open
from safetensors.torch import save_file

from sshpe.checkpoint import STUDENT, latest_checkpoint
from sshpe.data.prepare import find_sources, shard_dataset
from sshpe.data.readers.coco import load_instances
from sshpe.data.shard_writer import MANIFEST_NAME
from sshpe.loop import fit
from sshpe.recipe import RecipeError, load_recipe, recipe_changes
from sshpe.schema import get_schema
from sshpe.synth import generate

REPO = Path(__file__).resolve().parents[1]
PREFIX = "synth2p5pct-synth_hrnetsmall-128x96_"
METHODS = (
    "supervised", "posecons", "posecons-jc", "posedual-jc", "multiaugs-single", "multiaugs-dual", "mum",
    "posemum-eman", "multiaugs-eman-posemum",
)  # fmt: skip
TWO_NETS = ("posedual-jc", "multiaugs-dual")
INPUT_HW = (128, 96)
FRACTIONS = (0.01, 0.025, 0.05)
QUICK = {"burn_in": 20, "steps": 12}
# relative step cost (forward+backward passes per step), used only to start the most expensive runs first
COST = {"multiaugs-dual": 10.7, "multiaugs-single": 5.3, "multiaugs-eman-posemum": 5.3, "posedual-jc": 4.7}
SECOND_NET_SEED = 1000


def frac_tag(fraction: float | None) -> str:
    """Folder tag of a labeled fraction: 0.025 -> '2p5pct', None (all labels) -> 'all'."""
    if fraction is None:
        return "all"
    return f"{100 * fraction:g}".replace(".", "p") + "pct"


def prepare_data(args: argparse.Namespace, fraction: float | None) -> tuple[Path, int]:
    """Generate the synthetic dataset and shard it with the first `fraction` of train instances labeled (None:
    all), unless that exists; returns the shard folder and its labeled count."""
    data = args.data
    if not (data / "annotations" / "person_keypoints_train.json").is_file():
        print(f"generating {args.train_images} + {args.val_images} synthetic images into {data} ...", flush=True)
        generate(data, num_train=args.train_images, num_val=args.val_images, workers=args.workers, progress=False)
    shards = args.shards_root / f"synth{frac_tag(fraction)}"
    manifest = shards / MANIFEST_NAME
    if manifest.is_file():
        return shards, int(json.loads(manifest.read_text())["splits"]["labeled"]["count"])
    src = find_sources(data)
    total = len(load_instances(
        src.train_ann, src.train_images, kind="labeled", aspect=INPUT_HW[1] / INPUT_HW[0],
        num_joints=get_schema("coco17").num_joints,
    ))  # fmt: skip
    labeled = total if fraction is None else max(1, round(fraction * total))
    print(f"sharding {data} -> {shards}: first {labeled} of {total} train instances labeled", flush=True)
    shard_dataset(src, shards, dataset="synth", input_hw=INPUT_HW, labeled=labeled, unlabeled=fraction is not None,
                  workers=args.workers, progress=False)  # fmt: skip
    return shards, labeled


def _recipe(method: str, seed: int, shards: Path, steps: int, overrides: list[str], *, decay: bool):
    milestones = [max(1, round(steps * 2 / 3)), max(1, round(steps * 5 / 6))] if decay else []
    return load_recipe(
        REPO / "recipes" / f"{PREFIX}{method}.yaml",
        [
            f"data.shards={shards}", f"seed={seed}", f"train.duration={steps}", f"optim.milestones={milestones}",
            f"train.ckpt_every={max(1, steps // 2)}", f"train.log_every={max(1, steps // 20)}",
            "train.progress=false", *overrides,
        ],
    )  # fmt: skip


def same_recipe(stored: Path, recipe) -> bool:
    """Whether the run folder's `recipe.yaml` resolves to `recipe`: every field equal after both are validated, so
    a field added to the schema since the run (its default keeps the old behaviour) does not force retraining."""
    if not stored.is_file():
        return False
    try:
        return not recipe_changes(load_recipe(stored), recipe)
    except RecipeError:  # a field since removed or renamed: not the same run
        return False


def _finished(run_dir: Path, recipe, fresh: bool) -> dict | None:
    """The stored result of an identical finished run, or None after clearing a stale/different one."""
    done = run_dir / "result.json"
    if fresh or not same_recipe(run_dir / "recipe.yaml", recipe):
        shutil.rmtree(run_dir, ignore_errors=True)  # another budget or network: the table compares equal runs
        return None
    return json.loads(done.read_text()) if done.is_file() else None


def burn_in(seed: int, *, shards: Path, steps: int, overrides: list[str], run_root: Path, threads: int,
            fresh: bool) -> Path:  # fmt: skip
    """Supervised training on the labeled split at a constant LR; returns its final student weights."""
    torch.set_num_threads(threads)
    recipe = _recipe("supervised", seed, shards, steps, overrides, decay=False)
    run_dir = run_root / "burn_in" / f"seed{seed}"
    if _finished(run_dir, recipe, fresh) is None:
        t0 = time.perf_counter()
        stats = fit(recipe, run_dir, resume=True)
        write_atomic(run_dir / "result.json", json.dumps({"AP": stats["AP"], "wall_s": time.perf_counter() - t0}))
    return latest_checkpoint(run_dir / "checkpoints") / STUDENT


def init_weights(method: str, seed: int, burn_ins: dict[int, Path], run_root: Path) -> Path:
    """The weights a method starts from: its seed's burn-in, or two burn-ins side by side for two networks.

    Written into a folder of its own (no trainer_state.json), so the run starts its schedule at step 0.
    """
    seeds = [seed, seed + SECOND_NET_SEED] if method in TWO_NETS else [seed]
    out = run_root / "init" / f"{'-'.join(map(str, seeds))}.safetensors"
    if out.is_file():
        return out
    state, meta = {}, {}
    for i, s in enumerate(seeds):
        with safe_open(str(burn_ins[s]), "pt") as f:
            meta = f.metadata() or {}
            state |= {k.replace("nets.0.", f"nets.{i}.", 1): f.get_tensor(k) for k in f.keys()}
    meta["num_nets"] = str(len(seeds))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, out)
    return out


def run_one(method: str, seed: int, *, shards: Path, steps: int, init: Path, overrides: list[str], run_root: Path,
            threads: int, fresh: bool) -> dict:  # fmt: skip
    """Train one method from `init` for `steps` steps (or reuse that run); returns AP, pseudo-label PCK, wall."""
    torch.set_num_threads(threads)
    recipe = _recipe(method, seed, shards, steps, overrides, decay=True)
    run_dir = run_root / method / f"seed{seed}"
    stored = _finished(run_dir, recipe, fresh)
    if stored is not None:
        return stored
    t0 = time.perf_counter()
    stats = fit(recipe, run_dir, resume=True, init_from=init)
    logs = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    pck = [r["train/pseudo_pck"] for r in logs if "train/pseudo_pck" in r]
    result = {"AP": float(stats["AP"]), "wall_s": time.perf_counter() - t0,
              "pseudo_pck": sum(pck[-3:]) / len(pck[-3:]) if pck else None}  # fmt: skip
    write_atomic(run_dir / "result.json", json.dumps(result) + "\n")
    return result


def step_seconds(method: str, shards: Path, overrides: list[str], threads: int, steps: int = 6) -> float:
    """Median wall seconds of one optimizer step of a method (train_step + backward + Adam) on real batches."""
    from sshpe.data.streams import make_train_loader
    from sshpe.nets import build_nets
    from sshpe.step import train_step
    from sshpe.teachers import make_teacher

    torch.set_num_threads(threads)
    recipe = _recipe(method, 0, shards, 100, overrides, decay=False)
    nets = build_nets(recipe).to(memory_format=torch.channels_last).train()
    teacher = make_teacher(nets) if recipe.teacher.kind in ("ema", "eman") else None
    opt = torch.optim.Adam(nets.parameters(), 1e-3)
    t = recipe.train

    def loader(split: str, bs: int):
        return iter(make_train_loader(shards, split, batch_size=bs, seed=0, rank=0, world_size=1, num_workers=0))

    lab = loader(recipe.data.labeled_split, t.batch_size)
    semi = recipe.teacher.kind != "none"
    unl = loader(recipe.data.unlabeled_split, t.unlabeled_batch_size or t.batch_size) if semi else None
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(steps + 2):
        bl, bu = next(lab), next(unl) if unl is not None else None
        t0 = time.perf_counter()
        out = train_step(nets, teacher, bl, bu, recipe, gen)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return sorted(times[2:])[len(times[2:]) // 2]


def plan(args: argparse.Namespace, burn: int, steps: int) -> None:
    """Time one step of every method here and project the table's wall time for this budget (no training)."""
    shards, _ = prepare_data(args, args.fraction)
    cost = {m: step_seconds(m, shards, args.overrides, args.threads) for m in args.methods}
    seeds = len(args.seeds)
    two = sum(m in TWO_NETS for m in args.methods) > 0
    burn_s = burn * cost.get("supervised", min(cost.values())) * seeds * (2 if two else 1)
    run_s = steps * sum(cost.values()) * seeds
    for m, c in cost.items():
        print(f"{m:24s} {c:6.3f} s/step  ({c / cost.get('supervised', c):4.1f}x supervised)")
    wall = (burn_s + run_s) / args.jobs
    print(f"projected: burn-ins {burn_s:.0f} s + runs {run_s:.0f} s of {args.threads}-thread work, {args.jobs} at a "
          f"time -> ~{wall / 60:.0f} min (+ data preparation and evaluations)")  # fmt: skip


def _die_with_parent() -> None:
    """Pool initializer: on Linux a worker gets SIGTERM when the bench process dies, so killing the bench (even with
    SIGKILL) does not leave orphaned runs training into the run folders a restarted bench then uses."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)


def _call(job: tuple):
    fn, args, kwargs = job
    return fn(*args, **kwargs)


def parallel(jobs: list[tuple], n: int) -> list:
    """Results of `(fn, args, kwargs)` jobs, run `n` at a time in processes that die with this one."""
    if n == 1 or len(jobs) <= 1:
        return [_call(j) for j in jobs]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(n, mp_context=ctx, initializer=_die_with_parent) as pool:
        return [f.result() for f in [pool.submit(_call, j) for j in jobs]]


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cpus": os.cpu_count(), "gpu": gpu,
    }  # fmt: skip


def to_markdown(result: dict) -> str:
    seeds = result["seeds"]
    head = (
        "| method | " + " | ".join(f"AP seed {s}" for s in seeds) + " | mean AP | vs supervised | pseudo PCK | wall s |"
    )
    rows = [head, "|" + "---|" * (len(seeds) + 5)]
    base = result["rows"].get("supervised", {}).get("mean_AP")
    for name, r in result["rows"].items():
        aps = " | ".join(f"{100 * a:.1f}" for a in r["AP"])
        delta = f"{100 * (r['mean_AP'] - base):+.1f}" if base is not None and name != "supervised" else ""
        pck = [p for p in r["pseudo_pck"] if p is not None]
        pck_s = f"{100 * sum(pck) / len(pck):.1f}" if pck else ""
        rows.append(f"| {name} | {aps} | {100 * r['mean_AP']:.1f} | {delta} | {pck_s} | {sum(r['wall_s']):.0f} |")
    m = result["machine"]
    return "\n".join([
        f"# {result['title']}", "",
        f"Command: `{result['command']}`  ", f"Date: {result['date']}  ",
        f"Machine: {m['platform']}, {m['cpus']} CPUs, GPU: {m['gpu'] or 'none'}, torch {m['torch']}  ",
        f"Budget: burn-in {result['burn_in']} + {result['steps']} steps; total wall time {result['wall_s']:.0f} s", "",
        *rows, "",
    ])  # fmt: skip


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def table(args: argparse.Namespace, rows: list[tuple[str, float | None]], burn: int, steps: int) -> dict:
    """Train (or reuse) every (row name, labeled fraction) for every seed: burn-ins first, then the runs."""
    common = dict(overrides=args.overrides, threads=args.threads, fresh=args.fresh)
    out: dict[str, dict] = {}
    needs = {frac for _, frac in rows}
    for frac in sorted(needs, key=lambda f: -1 if f is None else f):
        shards, labeled = prepare_data(args, frac)
        root = args.runs / frac_tag(frac)
        names = [name for name, f in rows if f == frac]
        seeds = sorted({s + (SECOND_NET_SEED if m in TWO_NETS and k else 0) for m in names for s in args.seeds
                        for k in (0, 1)})  # fmt: skip
        burn_jobs = [(burn_in, (s,), dict(shards=shards, steps=burn, run_root=root, **common)) for s in seeds]
        burn_ins = dict(zip(seeds, parallel(burn_jobs, args.jobs)))
        jobs, keys = [], []
        for name in sorted(names, key=lambda n: -COST.get(n, 1)):  # most expensive first: workers finish together
            method = name.split("@")[0]
            for s in args.seeds:
                init = init_weights(method, s, burn_ins, root)
                jobs.append((run_one, (method, s), dict(shards=shards, steps=steps, init=init, run_root=root,
                                                        **common)))  # fmt: skip
                keys.append((name, s))
        results = dict(zip(keys, parallel(jobs, args.jobs)))
        for name in names:
            runs = [results[name, s] for s in args.seeds]
            aps = [r["AP"] for r in runs]
            out[name] = {"AP": aps, "mean_AP": sum(aps) / len(aps), "wall_s": [r["wall_s"] for r in runs],
                         "pseudo_pck": [r.get("pseudo_pck") for r in runs], "labeled": labeled}  # fmt: skip
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, help="methods to run")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds (recipe `seed`)")
    p.add_argument("--fraction", type=float, default=0.025, help="labeled fraction of the train instances")
    p.add_argument("--plan", action="store_true", help="time one step of each method, project the wall time, exit")
    p.add_argument("--calibrate", action="store_true", help="supervised only, at every --fractions and all labels")
    p.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS), help="fractions --calibrate tries")
    p.add_argument("--burn-in", type=int, default=800, help="supervised burn-in steps per seed")
    p.add_argument("--steps", type=int, default=600, help="steps of every method after the burn-in")
    p.add_argument("--quick", action="store_true", help=f"smoke budget: {QUICK}")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at once (separate processes)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: CPUs / jobs)")
    p.add_argument("--fresh", action="store_true", help="retrain every run instead of reusing/resuming")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override section.field=value")
    p.add_argument("--data", type=Path, default=REPO / "data" / "synth", help="synthetic dataset folder")
    p.add_argument("--shards-root", type=Path, default=REPO / "shards", help="shards go to <root>/synth<fraction>")
    p.add_argument("--train-images", type=int, default=2000, help="synthetic train images when generating")
    p.add_argument("--val-images", type=int, default=300, help="synthetic val images when generating")
    p.add_argument("--workers", type=int, default=2, help="processes for generation and sharding")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "bench_methods", help="run folders")
    p.add_argument("--out", type=Path, default=None, help="JSON (.md beside); default bench/results/<mode>.json")
    args = p.parse_args()
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    burn, steps = (QUICK["burn_in"], QUICK["steps"]) if args.quick else (args.burn_in, args.steps)

    if args.plan:
        plan(args, burn, steps)
        return
    t0 = time.perf_counter()
    if args.calibrate:
        rows = [(f"supervised@{frac_tag(f)}", f) for f in args.fractions] + [("supervised@all", None)]
        title = "Label-split calibration: supervised only"
    else:
        rows = [(m, args.fraction) for m in args.methods]
        title = f"Synthetic semi-supervised table, {frac_tag(args.fraction)} labeled"
    results = table(args, rows, burn, steps)
    result = {
        "title": title, "command": "python bench/bench_methods.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "seeds": args.seeds,
        "burn_in": burn, "steps": steps, "jobs": args.jobs, "threads": args.threads, "overrides": args.overrides,
        "machine": machine(), "rows": results, "wall_s": time.perf_counter() - t0,
    }  # fmt: skip
    out = args.out or REPO / "bench" / "results" / ("calibration.json" if args.calibrate else "methods.json")
    write_atomic(out, json.dumps(result, indent=1) + "\n")
    md = to_markdown(result)
    write_atomic(out.with_suffix(".md"), md)
    print(md)


if __name__ == "__main__":
    main()
