"""Run folders and checkpoints: atomic writes, completeness markers, keep-last-K, auto-resume (exact or weights-only).

Layout of a run folder::

    runs/<name>/recipe.yaml            the resolved recipe
    runs/<name>/metrics.jsonl          one JSON object per logged step / evaluation
    runs/<name>/checkpoints/step-000200/
        accelerate save_state files    exact resume on the same topology (DDP: model.safetensors + optimizer.bin;
                                       DeepSpeed: pytorch_model/ ZeRO shards), RNG states
        student.safetensors            consolidated fp32 `PoseNets` container (all networks, BN buffers), metadata
        teacher.safetensors            the EMA/EMAN/SSPCM teacher container, same format (when the recipe has one)
        trainer_state.json             step, world size, engine, ZeRO stage, precision, recipe hash
        COMPLETE                       written last
    runs/<name>/final/                 model.safetensors (exported eval network) + eval results

Two layers (ECOSYSTEM_NOTES 1.6): `save_state` resumes bit-exactly on the same world size and engine; the
safetensors pair resumes "weights-only" (fresh optimizer, step count kept) on any world size or engine.

A checkpoint is written under `step-XXXXXX.tmp` and renamed only after its COMPLETE marker exists; old ones are
renamed to `step-XXXXXX.old` before deletion. Neither name matches `step-XXXXXX`, so a run killed at any instant
never leaves a folder that auto-resume would pick. Test hook: with the environment variable
`SSHPE_TEST_KILL_IN_CHECKPOINT=<step>`, rank 0 SIGKILLs itself while writing that step's checkpoint, after the
accelerate state and student.safetensors and before the marker (tests/test_kill_resume.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sshpe.atomic import honour_umask
from sshpe.export import fp32_state, model_metadata

COMPLETE = "COMPLETE"
STUDENT = "student.safetensors"
TEACHER = "teacher.safetensors"
TRAINER_STATE = "trainer_state.json"
FORMAT = "sshpe-checkpoint/1"
TOPOLOGY_KEYS = ("world_size", "engine", "zero_stage")
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


class CheckpointError(ValueError):
    """A run folder / checkpoint problem a user can fix; the message says how."""


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def complete_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first; torn, temp or half-deleted folders are ignored."""
    if not ckpt_root.is_dir():
        return []
    found = []
    for d in ckpt_root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and d.is_dir() and (d / COMPLETE).is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    found = complete_checkpoints(ckpt_root)
    return found[-1][1] if found else None


def _weights_metadata(recipe, network: str, num_nets: int, step: int) -> dict[str, str]:
    return model_metadata(recipe, network) | {
        "format": FORMAT, "container": "PoseNets", "num_nets": str(num_nets), "step": str(step),
    }  # fmt: skip


def save_checkpoint(
    accelerator, ckpt_root: Path, step: int, student, teacher: torch.nn.Module | None, recipe, keep_last: int
) -> Path:
    """Save both checkpoint layers for `step` (every rank must call this; rank 0 writes files, finalises, prunes).

    Args:
        student: the prepared (DDP/DeepSpeed-wrapped) student container; its state is consolidated to fp32.
        teacher: the plain teacher container or None. BN buffers must already be synchronised across ranks.
    """
    from sshpe.distributed import engine_info

    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / (step_dir_name(step) + ".tmp")
    if accelerator.is_main_process:
        for stale in [*ckpt_root.glob("step-*.tmp"), *ckpt_root.glob("step-*.old")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    state = accelerator.get_state_dict(student)  # collective under DeepSpeed; full fp32 for ZeRO-1/2
    if accelerator.is_main_process:
        num_nets = len(accelerator.unwrap_model(student).nets)
        save_file(fp32_state(state), str(tmp / STUDENT), metadata=_weights_metadata(recipe, "student", num_nets, step))
        if os.environ.get("SSHPE_TEST_KILL_IN_CHECKPOINT") == str(step):
            os.kill(os.getpid(), signal.SIGKILL)  # test hook (module docstring): die with a torn temp folder
        if teacher is not None:
            meta = _weights_metadata(recipe, "teacher", len(teacher.nets), step)
            save_file(fp32_state(teacher.state_dict()), str(tmp / TEACHER), metadata=meta)
        info = {"step": step, **engine_info(accelerator), "mixed_precision": recipe.train.mixed_precision,
                "grad_accum": recipe.train.grad_accum, "recipe_hash": recipe.hash()}  # fmt: skip
        (tmp / TRAINER_STATE).write_text(json.dumps(info, indent=1))
        honour_umask(tmp)  # accelerate's and our safetensors files are created 0600
        (tmp / COMPLETE).write_text("ok\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for s, old in complete_checkpoints(ckpt_root)[:-keep_last]:
            doomed = old.with_name(step_dir_name(s) + ".old")
            os.replace(old, doomed)  # stop matching first, then delete (a kill mid-rmtree leaves no torn step-*)
            shutil.rmtree(doomed, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_trainer_state(path: Path) -> dict:
    """trainer_state.json of a checkpoint folder (or of the folder holding a weights file); {} when absent."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    f = folder / TRAINER_STATE
    return json.loads(f.read_text()) if f.is_file() else {}


def load_checkpoint(accelerator, path: Path, teacher: torch.nn.Module | None) -> int:
    """Exact resume: restore model/optimizer/RNG (and the teacher) from a complete checkpoint written on the same
    topology; returns the step to continue from."""
    if not (path / COMPLETE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE} marker); pick another one")
    accelerator.load_state(str(path))
    if teacher is not None:
        state = load_file(str(path / TEACHER), device=str(next(teacher.parameters()).device))
        teacher.load_state_dict(state)
    return int(read_trainer_state(path)["step"])


@dataclass(frozen=True)
class ResumePlan:
    """How `fit` starts: from `path` exactly (accelerate load_state after prepare) or weights-only (safetensors
    before prepare, fresh optimizer). `message` is the log line that says which and why."""

    path: Path
    exact: bool
    message: str


def plan_resume(ckpt_root: Path, resume: bool | Path, init_from: Path | None, current: dict) -> ResumePlan | None:
    """Decide where training starts.

    Args:
        ckpt_root: the run's checkpoints folder.
        resume: True = latest complete checkpoint of the run (if any), a Path = that checkpoint, False = fresh
            (refused when the run already has checkpoints).
        init_from: weights-only start (checkpoint folder or a student .safetensors) used when the run has no
            checkpoint of its own; the step count continues when a trainer_state.json lies next to it.
        current: `sshpe.distributed.engine_info` of this run; a checkpoint from another world size / engine /
            ZeRO stage is resumed weights-only (ZeRO shards cannot be re-partitioned, ECOSYSTEM_NOTES 1.6).
    """
    own = latest_checkpoint(ckpt_root)
    if resume is False and own is not None:
        raise CheckpointError(f"{ckpt_root.parent} already has checkpoints; pass --resume or choose another --out")
    path = Path(resume) if isinstance(resume, (str, Path)) else (own if resume else None)
    if path is None:
        if init_from is None:
            return None
        return ResumePlan(
            Path(init_from), False, f"initialised weights from {init_from} (weights only, fresh optimizer)"
        )
    if not (path / COMPLETE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE} marker); pick another one")
    saved = read_trainer_state(path)
    differs = {k: (saved[k], current[k]) for k in TOPOLOGY_KEYS if k in saved and saved[k] != current[k]}
    if not differs:
        return ResumePlan(path, True, f"resumed from {path} at step {saved.get('step')}")
    what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in differs.items())
    return ResumePlan(
        path, False,
        f"resuming weights only from {path / STUDENT} at step {saved.get('step')} ({what}: exact resume needs the "
        "same world size and engine); the optimizer state starts fresh and the data order differs",
    )  # fmt: skip


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return load_file(str(path)), meta


def load_weights(path: Path, nets: torch.nn.Module) -> int:
    """Weights-only start: load a consolidated student container into `nets` (before `prepare`).

    Args:
        path: a checkpoint folder (its student.safetensors) or a .safetensors file written by `save_checkpoint`.
        nets: the freshly built `PoseNets` student container.

    Returns:
        The step to continue from: trainer_state.json's step next to the weights, else 0.
    """
    path = Path(path)
    file = path / STUDENT if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"{file}: no consolidated weights; --init-from takes a checkpoint folder (step-XXXXXX/) or its {STUDENT}"
        )
    state, meta = _read_weights(file)
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{file}: not an sshpe checkpoint container (metadata format {meta.get('format')!r}, expected "
            f"{FORMAT!r}); exported single-network model files cannot seed a training container"
        )
    missing, unexpected = nets.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{file} does not fit this recipe's model (arch {meta.get('arch')}, {meta.get('num_nets')} network(s)): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}; use a recipe with the same model and teacher kind"
        )
    return int(read_trainer_state(path).get("step", 0))


def load_teacher_weights(path: Path, teacher: torch.nn.Module | None) -> bool:
    """Weights-only start of a teacher from teacher.safetensors beside `path`; False (teacher kept as the copy of
    the loaded student) when there is none."""
    path = Path(path)
    file = (path if path.is_dir() else path.parent) / TEACHER
    if teacher is None or not file.is_file():
        return False
    teacher.load_state_dict(_read_weights(file)[0])
    return True
