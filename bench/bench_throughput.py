"""Training throughput of a recipe on this machine: data-only, model-only and end-to-end samples/s, peak memory.

* data-only: the training loaders (TrainStream: read + JPEG decode + collate), labeled and unlabeled when used.
* model-only: synthetic input of the recipe's input size, forward + backward + optimizer step of the student.
* end-to-end: the fit loop body (loaders, easy views, teacher targets, every hard path, backward, step).
Samples count labeled + unlabeled crops per step. Peak memory is CUDA max allocated (GPU) or the process's peak RSS.

Usage: python bench/bench_throughput.py RECIPE [--set k=v ...] [--steps 10] [--warmup 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch


def _loaders(recipe, start: int = 0):
    from sshpe.data.streams import make_train_loader

    t, d = recipe.train, recipe.data
    lab = iter(make_train_loader(d.shards, d.labeled_split, batch_size=t.batch_size, seed=recipe.seed, rank=0,
                                 world_size=1, num_workers=d.num_workers, start_batch=start))  # fmt: skip
    if recipe.teacher.kind == "none":
        return lab, None
    unl = iter(make_train_loader(d.shards, d.unlabeled_split, batch_size=t.unlabeled_batch_size or t.batch_size,
                                 seed=recipe.seed + 1, rank=0, world_size=1, num_workers=d.num_workers))  # fmt: skip
    return lab, unl


def _timed(fn, steps: int, warmup: int, sync) -> tuple[float, int]:
    """Seconds for `steps` calls of fn() after `warmup` untimed calls; fn returns samples processed."""
    for _ in range(warmup):
        fn()
    sync()
    t0, samples = time.perf_counter(), 0
    for _ in range(steps):
        samples += fn()
    sync()
    return time.perf_counter() - t0, samples


def bench(recipe, steps: int, warmup: int, device: torch.device) -> dict:
    from sshpe.evaluation.predict import batch_to_device
    from sshpe.loop import _optimizer
    from sshpe.nets import build_nets
    from sshpe.step import train_step
    from sshpe.teachers import make_teacher

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    amp = recipe.train.mixed_precision
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16,  # noqa: E731
                                      enabled=amp != "no")  # fmt: skip
    lab, unl = _loaders(recipe)

    def data_step() -> int:
        n = next(lab)["canvas"].shape[0]
        return n + (next(unl)["canvas"].shape[0] if unl is not None else 0)

    data_s, data_n = _timed(data_step, steps, warmup, sync)

    torch.manual_seed(recipe.seed)
    nets = build_nets(recipe).to(device).train()
    if recipe.model.channels_last:
        nets = nets.to(memory_format=torch.channels_last)
    opt = _optimizer(recipe, nets.parameters())
    b, (h, w) = recipe.train.batch_size, recipe.data.input_size
    x = torch.randn(b, 3, h, w, device=device)
    target = torch.rand(b, recipe.schema.num_joints, h // 4, w // 4, device=device)

    def model_step() -> int:
        with autocast():
            loss = sum(((nets(x, i).float() - target) ** 2).mean() for i in range(len(nets.nets)))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return b

    model_s, model_n = _timed(model_step, steps, warmup, sync)

    teacher = make_teacher(nets) if recipe.teacher.kind in ("ema", "eman", "triple") else None
    lab, unl = _loaders(recipe, start=steps + warmup)
    gen = torch.Generator(device=device).manual_seed(recipe.seed)

    def e2e_step() -> int:
        bl = batch_to_device(next(lab), device)
        bu = batch_to_device(next(unl), device) if unl is not None else None
        with autocast():
            out = train_step(nets, teacher, bl, bu, recipe, gen)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return bl["canvas"].shape[0] + (bu["canvas"].shape[0] if bu is not None else 0)

    e2e_s, e2e_n = _timed(e2e_step, steps, warmup, sync)
    if device.type == "cuda":
        peak = {"peak_cuda_allocated_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20}
    return {
        "recipe": recipe.name, "device": str(device), "threads": torch.get_num_threads(),
        "arch": recipe.model.arch, "input_size": list(recipe.data.input_size), "batch_size": b,
        "teacher": recipe.teacher.kind, "paths": len(recipe.augment.paths), "num_workers": recipe.data.num_workers,
        "mixed_precision": amp, "steps": steps,
        "data_samples_per_s": data_n / data_s, "model_samples_per_s": model_n / model_s,
        "e2e_samples_per_s": e2e_n / e2e_s, **peak,
    }  # fmt: skip


def main() -> None:
    from sshpe.recipe import load_recipe

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override k=v")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe, args.overrides)
    res = bench(recipe, args.steps, args.warmup, torch.device(args.device))
    print(f"{'measure':<22}{'value':>12}")
    for k, v in res.items():
        print(f"{k:<22}{v:>12.1f}" if isinstance(v, float) else f"{k:<22}{str(v):>12}")
    print(json.dumps(res))
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
