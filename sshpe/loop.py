"""`fit`: the one training loop. It owns every side effect; the math is `sshpe.step.train_step`.

Read it top to bottom (big_vision style): set-up, resume, then one loop whose periodic work is gated by `itstime`.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sshpe.atomic import atomic_path, atomic_write_text
from sshpe.checkpoint import (
    complete_checkpoints,
    load_checkpoint,
    load_teacher_weights,
    load_weights,
    plan_resume,
    read_trainer_state,
    save_checkpoint,
)  # fmt: skip
from sshpe.data.batches import decode_in_workers
from sshpe.data.locations import shard_location
from sshpe.data.shard_writer import MANIFEST_NAME, read_manifest, source_file
from sshpe.data.streams import make_train_loader, make_val_loader
from sshpe.distributed import build_accelerator, check_prepared, engine_info, maybe_sync_batchnorm, sync_bn_buffers
from sshpe.evaluation.coco_ap import check_backend
from sshpe.evaluation.predict import batch_to_device, data_schema, merge_instances, predict_instances, score_predictions
from sshpe.export import export_model
from sshpe.models import HeatmapEnsemble
from sshpe.nets import build_nets
from sshpe.portable_paths import write_run_paths
from sshpe.pseudo_labels import pseudo_label_pck
from sshpe.recipe import (
    Recipe,
    RecipeError,
    check_resume_recipe,
    dump_recipe,
    flat_fields,
    load_recipe,
    parse_duration,
)
from sshpe.run_lock import run_lock
from sshpe.schema import eval_channels, joint_map
from sshpe.step import remap_labels, train_step
from sshpe.teachers import decay_at, ema_update, make_teacher


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf; the message names the step window and the last good checkpoint."""


def itstime(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


@dataclass(frozen=True)
class Schedule:
    """Every recipe duration converted once to optimizer steps."""

    steps_per_epoch: int
    total: int
    milestones: tuple[int, ...]
    warmup: int
    log_every: int
    ckpt_every: int
    eval_every: int
    teacher_warmup: int


def resolve_schedule(recipe: Recipe, manifest: dict, world_size: int) -> Schedule:
    t = recipe.train
    split = t.epoch_split
    if split == "auto":
        split = "unlabeled" if recipe.teacher.kind != "none" else "labeled"
    name = recipe.data.unlabeled_split if split == "unlabeled" else recipe.data.labeled_split
    count = manifest["splits"][name]["count"]
    per_step = (t.unlabeled_batch_size or t.batch_size) if split == "unlabeled" else t.batch_size
    spe = max(1, math.ceil(count / (per_step * world_size * t.grad_accum)))
    conv = lambda v: parse_duration(v, spe)  # noqa: E731
    tw = getattr(recipe.teacher, "warmup_steps", 0)
    return Schedule(
        steps_per_epoch=spe,
        total=conv(t.duration),
        milestones=tuple(conv(m) for m in recipe.optim.milestones),
        warmup=conv(recipe.optim.warmup),
        log_every=conv(t.log_every),
        ckpt_every=conv(t.ckpt_every),
        eval_every=conv(t.eval_every),
        teacher_warmup=conv(tw),
    )


def lr_at(step: int, recipe: Recipe, sched: Schedule) -> float:
    """MultiStepLR with optional linear warm-up, as a pure function of the step (so resume needs no state)."""
    lr = recipe.optim.lr * recipe.optim.gamma ** sum(step >= m for m in sched.milestones)
    if sched.warmup > 0 and step < sched.warmup:
        lr *= (step + 1) / sched.warmup
    return lr


def step_seed(seed: int, rank: int, step: int) -> int:
    """Augmentation seed of one step on one rank: a pure function, so resumed runs draw the same views."""
    return (seed * 1_000_003 + rank * 7919 + step * 104_729) % (2**63 - 1)


def check_data(recipe: Recipe, manifest: dict, shards: str | Path) -> tuple[int, ...]:
    """Recipe vs shards: splits exist, batches fit in their splits, aspect ratio matches, the shards' joints map onto
    the model's channels (and every evaluated joint has one). Returns that joint map (`sshpe.schema.joint_map`)."""
    d, t = recipe.data, recipe.train
    manifest_at = shard_location(shards).where(MANIFEST_NAME)
    semi = recipe.teacher.kind != "none"
    needed = [d.labeled_split, d.val_split] + ([d.unlabeled_split] if semi else [])
    missing = [s for s in needed if s not in manifest["splits"]]
    if missing:
        raise RecipeError(
            f"{manifest_at} has no split(s) {missing} (has {sorted(manifest['splits'])}); "
            "re-run `sshpe shard` with those splits or change data.*_split"
        )
    batches = [("train.batch_size", t.batch_size, d.labeled_split)]
    if semi:
        batches.append(("train.unlabeled_batch_size", t.unlabeled_batch_size or t.batch_size, d.unlabeled_split))
    for field, size, split in batches:
        count = manifest["splits"][split]["count"]
        if size > count:
            raise RecipeError(
                f"{field}={size} is larger than split {split!r} of {shards} ({count} samples): every batch would "
                "repeat samples; lower it or shard more data"
            )
    aspect = d.input_size[1] / d.input_size[0]
    if abs(aspect - manifest["aspect"]) > 1e-6:
        raise RecipeError(
            f"data.input_size {list(d.input_size)} has aspect {aspect:.4f} but {shards} was sharded for aspect "
            f"{manifest['aspect']:.4f} (input {manifest['input_size']}); re-shard with --input-size"
        )
    try:
        jmap = joint_map(data_schema(manifest, shards), recipe.schema)
        eval_channels(data_schema(manifest, shards), recipe.schema)
    except ValueError as err:
        raise RecipeError(f"{manifest_at} vs model.schema: {err}") from None
    return jmap


def _optimizer(recipe: Recipe, params) -> torch.optim.Optimizer:
    o = recipe.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    cls = torch.optim.AdamW if o.name == "adamw" else torch.optim.Adam
    return cls(params, lr=o.lr, weight_decay=o.weight_decay)


def evaluate_nets(net_fn, recipe: Recipe, accelerator, manifest: dict, out_dir: Path | None) -> dict:
    """Predict the val split on every rank (each sample once), gather, score on rank 0, broadcast the stats."""
    from accelerate.utils import gather_object

    shards = recipe.data.shards
    loader = make_val_loader(
        shards, recipe.data.val_split, batch_size=recipe.eval.batch_size, rank=accelerator.process_index,
        world_size=accelerator.num_processes, num_workers=min(recipe.data.num_workers, 2),
        decode=decode_in_workers(recipe.data.decode, accelerator.device),
    )  # fmt: skip
    local = predict_instances(net_fn, loader, recipe, accelerator.device)
    instances = merge_instances(gather_object([local])) if accelerator.num_processes > 1 else local
    stats = [None]
    if accelerator.is_main_process:
        stats = [score_predictions(instances, recipe, manifest, out_dir)]
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(stats)
    return stats[0]


def fit(recipe: Recipe, run_dir: Path, *, resume: bool | Path = True, init_from: Path | None = None) -> dict:
    """Train a recipe into `run_dir`; returns the final evaluation stats.

    Args:
        resume: True picks the latest complete checkpoint in run_dir whose files load (if any), a Path resumes
            from that checkpoint, False starts fresh (refusing to overwrite a run folder that has checkpoints). A
            checkpoint from another world size or engine resumes weights-only (`sshpe.checkpoint.plan_resume`).
        init_from: when run_dir has no checkpoint yet, start from these weights (default: `model.init_from`): a
            checkpoint folder or its student.safetensors (continuing its step count), or a model file from
            `sshpe export` / `sshpe import-weights` (from step 0); always with a fresh optimizer.

    Raises:
        CheckpointError: another process is training into `run_dir` (`sshpe.run_lock`), or no checkpoint loads.
    """
    accelerator = build_accelerator(recipe, project_dir=Path(run_dir) / "tb")
    with run_lock(Path(run_dir), accelerator):
        return _fit(accelerator, recipe, Path(run_dir), resume, init_from)


def _fit(accelerator, recipe: Recipe, run_dir: Path, resume: bool | Path, init_from: Path | None) -> dict:
    # ------------------------------------------------------------------ set-up
    rank, world = accelerator.process_index, accelerator.num_processes
    ckpt_root = run_dir / "checkpoints"
    shards = recipe.data.shards
    manifest = read_manifest(shards)
    jmap = check_data(recipe, manifest, shards)
    check_backend(recipe.eval.backend)
    gt_file = source_file(manifest, shards, "val_annotations")  # resolved now: a missing GT fails before training
    sched = resolve_schedule(recipe, manifest, world)
    stored = run_dir / "recipe.yaml"
    resuming = resume is not False and stored.is_file() and bool(complete_checkpoints(ckpt_root))
    notes = check_resume_recipe(load_recipe(stored), recipe, stored) if resuming else []
    init_from = init_from or recipe.model.init_from
    plan = plan_resume(ckpt_root, resume, init_from, engine_info(accelerator))
    done = _finished(run_dir, plan, sched.total) if resuming else None
    log = RunLog(run_dir, accelerator)
    if done is not None:
        log.line(
            f"{run_dir} is finished (step {sched.total} of {sched.total}; final stats in {run_dir}/final/stats.json):"
            " nothing to do. Extend train.duration to train on, or train into a new folder (--out)"
        )
        return done
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
    for note in notes:
        log.line(note)
    if accelerator.is_main_process:
        atomic_write_text(stored, dump_recipe(recipe))
        write_run_paths(run_dir, shards, gt_file)  # eval/export/predict find the data from anywhere, after a move

    torch.manual_seed(recipe.seed)  # identical initial weights on every rank
    nets = build_nets(recipe)
    # weights-only starts load before `prepare`: ZeRO-1/2 keeps its own fp32 copies made at prepare time
    weight_notes: list[str] = []
    start = load_weights(plan.path, nets, weight_notes) if plan is not None and not plan.exact else 0
    nets = maybe_sync_batchnorm(nets, recipe, accelerator)
    if recipe.model.channels_last:
        nets = nets.to(memory_format=torch.channels_last)
    teacher = make_teacher(nets).to(accelerator.device) if recipe.teacher.kind in ("ema", "eman", "triple") else None
    if plan is not None and not plan.exact:
        load_teacher_weights(plan.path, teacher)
    _set_modes(nets, teacher, recipe)
    optimizer = _optimizer(recipe, nets.parameters())
    student, optimizer = accelerator.prepare(nets, optimizer)
    check_prepared(student, accelerator)
    raw = accelerator.unwrap_model(student)

    # ------------------------------------------------------------------ resume
    if plan is not None and plan.exact:
        start = load_checkpoint(accelerator, plan.path, teacher)
    if plan is not None:
        log.line("\n".join([plan.message, *weight_notes]))
    last_ckpt = plan.path if plan is not None else None

    t = recipe.train
    ub = t.unlabeled_batch_size or t.batch_size
    semi = recipe.teacher.kind != "none"
    decode = decode_in_workers(recipe.data.decode, accelerator.device)
    lab_it = iter(make_train_loader(
        shards, recipe.data.labeled_split, batch_size=t.batch_size, seed=recipe.seed, rank=rank, world_size=world,
        num_workers=recipe.data.num_workers, start_batch=start * t.grad_accum, decode=decode,
    ))  # fmt: skip
    unl_it = iter(make_train_loader(
        shards, recipe.data.unlabeled_split, batch_size=ub, seed=recipe.seed + 1, rank=rank, world_size=world,
        num_workers=recipe.data.num_workers, start_batch=start * t.grad_accum, decode=decode,
    )) if semi else None  # fmt: skip

    metrics = MetricsLog(run_dir, accelerator, recipe, start)
    progress = _progress(accelerator, t.progress, sched.total, start, log)
    gen = torch.Generator(device=accelerator.device)
    last_log_step, window_t0, data_wait, seen = start, time.perf_counter(), 0.0, 0
    stats: dict = {}

    # ------------------------------------------------------------------ loop
    for step in range(start, sched.total):
        lr = lr_at(step, recipe, sched)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(t.grad_accum):
            gen.manual_seed(step_seed(recipe.seed, rank, step * t.grad_accum + micro))
            t0 = time.perf_counter()
            batch_l = remap_labels(batch_to_device(next(lab_it), accelerator.device), jmap)
            batch_u = remap_labels(batch_to_device(next(unl_it), accelerator.device), jmap) if semi else None
            data_wait += time.perf_counter() - t0
            with accelerator.accumulate(student), accelerator.autocast():
                out = train_step(student, teacher, batch_l, batch_u, recipe, gen)
                pseudo = out.pop("pseudo_labels", None)
                if not torch.isfinite(out["loss"]):
                    raise TrainingDiverged(
                        f"non-finite loss {out['loss'].item()} at step {step + 1}, in the window since step "
                        f"{last_log_step} (last logged finite loss); last good checkpoint: {last_ckpt or 'none'}. "
                        "Lower optim.lr, set optim.grad_clip, or check the data of this window"
                    )
                accelerator.backward(out["loss"])
                if recipe.optim.grad_clip and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(student.parameters(), recipe.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            seen += batch_l["canvas"].shape[0] + (batch_u["canvas"].shape[0] if semi else 0)
        step1 = step + 1

        if teacher is not None and recipe.teacher.kind == "triple":
            if itstime(step1, sched.steps_per_epoch):  # SSPCM's last-epoch snapshot (reference §7)
                teacher.load_state_dict(raw.state_dict())
        elif teacher is not None:
            tc = recipe.teacher
            if tc.kind == "eman":
                sync_bn_buffers(accelerator, raw)
            m = decay_at(
                step, base=tc.decay, warmup_steps=sched.teacher_warmup, start=tc.warmup_start, schedule=tc.schedule
            )
            ema_update(teacher, raw, m, include_buffers=tc.kind == "eman")

        if itstime(step1, sched.log_every) or step1 == sched.total:
            dt = time.perf_counter() - window_t0
            rec = {"step": step1, "epoch": round(step1 / sched.steps_per_epoch, 4), "lr": lr}
            rec |= {f"train/{k}": float(v.detach()) for k, v in out.items()}
            if pseudo is not None:  # the hidden ground truth is read here, for this metric only
                rec |= {f"train/{k}": v for k, v in pseudo_label_pck(pseudo, batch_u, recipe.schema).items()}
            rec |= {"perf/samples_per_s": seen * world / max(dt, 1e-9), "perf/data_wait": data_wait / max(dt, 1e-9)}
            metrics.write(rec)
            progress.update(step1, rec)
            last_log_step, window_t0, data_wait, seen = step1, time.perf_counter(), 0.0, 0

        t_side = time.perf_counter()  # checkpoint and eval time stays out of the samples/s window
        if itstime(step1, sched.ckpt_every) and step1 != sched.total:
            sync_bn_buffers(accelerator, raw, teacher)
            last_ckpt = save_checkpoint(accelerator, ckpt_root, step1, student, teacher, recipe, t.keep_last)

        if itstime(step1, sched.eval_every) and step1 != sched.total:
            stats = _eval_and_log(
                recipe, accelerator, raw, teacher, manifest, run_dir, run_dir / "eval" / f"step-{step1:06d}", metrics,
                step1, log,
            )  # fmt: skip
            _set_modes(raw, teacher, recipe)
        window_t0 += time.perf_counter() - t_side
        progress.advance(step1)

    # ------------------------------------------------------------------ final
    progress.close()
    sync_bn_buffers(accelerator, raw, teacher)
    if sched.total > start:
        save_checkpoint(accelerator, ckpt_root, sched.total, student, teacher, recipe, t.keep_last)
    stats = _eval_and_log(
        recipe, accelerator, raw, teacher, manifest, run_dir, run_dir / "final", metrics, sched.total, log
    )
    best = read_best(run_dir) if recipe.eval.keep_best else None
    if best is not None and best["step"] != sched.total and best["score"] > score_of(stats):  # strictly better
        log.line(
            f"final/ holds the best evaluation, step {best['step']} ({score_name(best['stats'])} "
            f"{best['score']:.4g}; the last step {sched.total} scored {score_of(stats):.4g})"
        )
        if accelerator.is_main_process:
            _copy_atomic(run_dir / BEST / "model.safetensors", run_dir / "final" / "model.safetensors")
            atomic_write_text(run_dir / "final" / "stats.json", json.dumps(best["stats"], indent=1))
            _take_predictions(run_dir / "eval" / f"step-{best['step']:06d}", run_dir / "final")
        stats = best["stats"]
    elif accelerator.is_main_process:
        net, name = eval_network(recipe, raw, teacher)
        export_model(net, run_dir / "final" / "model.safetensors", recipe, name, _provenance(sched.total, stats))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return stats


BEST = "best"


def score_name(stats: dict) -> str:
    """The validation score that ranks evaluations: COCO AP, or PCKh Mean for MPII."""
    return "AP" if "AP" in stats else "Mean"


def score_of(stats: dict) -> float:
    return float(stats[score_name(stats)])


def read_best(run_dir: Path) -> dict | None:
    """RUN/best/stats.json: {"step", "score", "stats"} of the best evaluation so far; None before the first."""
    path = run_dir / BEST / "stats.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # torn by a kill: the next evaluation writes it again


# What an evaluation writes beside stats.json: COCO results (`write_results`) or MPII's pred.mat (`score_pckh`).
PREDICTION_FILES = ("results.json", "pred.mat")


def _copy_atomic(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _take_predictions(src: Path, final: Path) -> None:
    """final/ gets the prediction files of the evaluation it now holds (RUN/eval/step-N/), so they match its model
    and stats; a file that evaluation has not is removed rather than left from the last step."""
    for name in PREDICTION_FILES:
        if (src / name).is_file():
            _copy_atomic(src / name, final / name)
        else:
            (final / name).unlink(missing_ok=True)


def _provenance(step: int, stats: dict) -> dict:
    return {"step": step} | {f"val_{k}": v for k, v in stats.items() if k in ("AP", "Mean")}


def _keep_if_best(recipe: Recipe, accelerator, raw, teacher, run_dir: Path, step: int, stats: dict) -> None:
    """Export the evaluated network to RUN/best/ when its score beats every earlier evaluation of the run."""
    if not (recipe.eval.keep_best and accelerator.is_main_process):
        return
    best = read_best(run_dir)
    if best is not None and score_of(stats) <= best["score"]:
        return
    net, name = eval_network(recipe, raw, teacher)
    export_model(net, run_dir / BEST / "model.safetensors", recipe, name, _provenance(step, stats))
    doc = {"step": step, "score": score_of(stats), "stats": stats}
    atomic_write_text(run_dir / BEST / "stats.json", json.dumps(doc, indent=1))


def student_networks(recipe: Recipe, raw) -> dict[str, torch.nn.Module]:
    """The student's networks by key: "a" (, "b", "c") and, for a dual student, "ensemble" (their heatmap mean)."""
    out = {"abc"[i]: net for i, net in enumerate(raw.nets)}
    if recipe.teacher.kind == "dual":
        out["ensemble"] = HeatmapEnsemble(raw.nets[:2])
    return out


def network_name(key: str, num_nets: int) -> str:
    """The name a network is evaluated and exported under (metadata `network`): "student" for a single student,
    "student_a"/"student_b"/"student_c" for one of several, "ensemble" for the dual heatmap ensemble."""
    if key == "ensemble":
        return key
    return "student" if num_nets == 1 else f"student_{key}"


def eval_network(recipe: Recipe, raw, teacher) -> tuple[torch.nn.Module, str]:
    """The network that evaluation and export use, and its name: the EMA teacher, the dual/triple network that
    `teacher.eval_net` selects (the dual ensemble included), or the student."""
    tc = recipe.teacher
    if teacher is not None and getattr(tc, "export", False):
        return teacher.nets[0], "teacher"
    key = getattr(tc, "eval_net", "a")
    return student_networks(recipe, raw)[key], network_name(key, len(raw.nets))


def _eval_and_log(
    recipe,
    accelerator,
    raw,
    teacher,
    manifest,
    run_dir: Path,
    out_dir: Path,
    metrics: MetricsLog,
    step: int,
    log: RunLog,
) -> dict:
    """Score the network the recipe evaluates (files into `out_dir`), and with `eval.all_nets` every network of a
    dual/triple student, the dual ensemble and the mean of the networks' scores (logged as `val_nets/...`); keep
    the best evaluation (`eval.keep_best`)."""
    sync_bn_buffers(accelerator, raw, teacher)  # every rank scores the same network
    net, name = eval_network(recipe, raw, teacher)
    raw.eval()
    net.eval()
    candidates = student_networks(recipe, raw)
    selected = getattr(recipe.teacher, "eval_net", None) if name != "teacher" else None
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
    with accelerator.autocast():
        stats = evaluate_nets(net, recipe, accelerator, manifest, out_dir)
        scores = {}
        if recipe.eval.all_nets and len(candidates) > 1:
            for key, other in candidates.items():
                scores[key] = stats if key == selected else evaluate_nets(other, recipe, accelerator, manifest, None)
    rec = {"step": step, "eval_network": name} | {f"val/{k}": v for k, v in stats.items()}
    if scores:
        nets = [score_of(v) for k, v in scores.items() if k != "ensemble"]
        rec |= {f"val_nets/{k}/{score_name(v)}": score_of(v) for k, v in scores.items()}
        rec |= {f"val_nets/mean/{score_name(stats)}": sum(nets) / len(nets)}
    metrics.write(rec)
    log.line(f"eval step {step} ({name}): " + "  ".join(f"{k} {v:.4g}" for k, v in stats.items()))
    if scores:
        log.line("  every network: " + "  ".join(f"{k[9:]} {v:.4g}" for k, v in rec.items() if k.startswith("val_n")))
    if accelerator.is_main_process:
        atomic_write_text(out_dir / "stats.json", json.dumps(stats, indent=1))
    _keep_if_best(recipe, accelerator, raw, teacher, run_dir, step, stats)
    return stats


def _set_modes(nets, teacher, recipe: Recipe) -> None:
    """Students train with batch statistics; an EMAN teacher normalises with its EMA statistics (eval mode), a
    mean teacher (`ema`) and SSPCM's last-epoch snapshot with batch statistics (train mode) (reference §6, §7)."""
    nets.train()
    if teacher is not None:
        teacher.train(recipe.teacher.kind in ("ema", "triple"))


class MetricsLog:
    """Rank 0's metrics: one JSON object per line in `metrics.jsonl` (with a unix `time`), mirrored to the recipe's
    trackers through accelerate (`train.trackers`: TensorBoard under `tb/` by default, W&B, MLflow, ...).

    A run that starts at step `start` (a resume, or a fresh start in a folder a killed run left rows in) first drops
    the rows after `start`, and TensorBoard purges its events after `start`, so every step is logged once.
    """

    def __init__(self, run_dir: Path, accelerator, recipe: Recipe, start: int = 0):
        self.path, self.main, self.acc = run_dir / "metrics.jsonl", accelerator.is_main_process, accelerator
        if self.main and self.path.is_file():
            keep = [line for line in self.path.read_text().splitlines() if _row_step(line) <= start]
            atomic_write_text(self.path, "".join(line + "\n" for line in keep))
        self.trackers = bool(accelerator.log_with)
        if self.trackers:
            config = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v) for k, v in
                      flat_fields(recipe.model_dump(mode="json", by_alias=True), "/").items()}  # fmt: skip
            purge = {"tensorboard": {"purge_step": start + 1}} if start > 0 else {}
            accelerator.init_trackers(recipe.name, config=config, init_kwargs=purge)

    def write(self, rec: dict) -> None:
        if self.main:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec | {"time": round(time.time(), 3)}) + "\n")
        if self.trackers:
            scalars = {k: v for k, v in rec.items() if k != "step" and isinstance(v, (int, float))}
            self.acc.log(scalars, step=rec["step"])


class RunLog:
    """Rank 0's readable log: `train.log` in the run folder (every line timestamped) and the console."""

    def __init__(self, run_dir: Path, accelerator):
        self.main = accelerator.is_main_process
        self.path = run_dir / "train.log"

    def line(self, text: str, console: bool = True) -> None:
        if not self.main:
            return
        if console:
            print(text, flush=True)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a") as f:
            f.write("".join(f"{stamp} {part}\n" for part in text.splitlines()))


def _row_step(line: str) -> float:
    """The step of one metrics.jsonl row; a torn last line (killed mid-write) counts as after every step."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _finished(run_dir: Path, plan, total: int) -> dict | None:
    """The final stats of a run whose newest loadable checkpoint is at the last step and whose final evaluation was
    written; None when there is something left to do."""
    stats = run_dir / "final" / "stats.json"
    if plan is None or not plan.exact or not stats.is_file():
        return None
    if read_trainer_state(plan.path).get("step", -1) < total:
        return None
    try:
        return json.loads(stats.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # torn: evaluate again


class _progress:
    """Rank 0's progress: a rich bar when stdout is a terminal; otherwise (cluster logs, pipes) one plain line per
    logging period. Both go to train.log; silent elsewhere, and only train.log when `train.progress` is off."""

    def __init__(self, accelerator, enabled: bool, total: int, start: int, log: RunLog):
        self.bar, self.log, self.total, self.enabled = None, log, total, enabled
        self.t0, self.start = time.perf_counter(), start
        if enabled and accelerator.is_main_process and sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
            )  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, info="")

    def update(self, step: int, rec: dict) -> None:
        parts = "  ".join(f"{k[6:]} {v:.3g}" for k, v in rec.items() if k.startswith("train/") and k != "train/loss")
        info = (
            f"loss {rec['train/loss']:.3g}  lr {rec['lr']:.2g}  {rec['perf/samples_per_s']:.0f} samples/s  "
            f"data {100 * rec['perf/data_wait']:.0f}%"
        )
        if self.bar is not None:
            self.bar.update(self.task, info=info)
        per_step = (time.perf_counter() - self.t0) / max(step - self.start, 1)
        eta = time.strftime("%H:%M:%S", time.gmtime(per_step * (self.total - step)))
        line = f"step {step}/{self.total}  {info}  ETA {eta}" + (f"  ({parts})" if parts else "")
        self.log.line(line, console=self.enabled and self.bar is None)

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
