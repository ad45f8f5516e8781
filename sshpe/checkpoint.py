"""Run folders and resumable checkpoints: atomic writes, completeness markers, keep-last-K, auto-resume.

Layout of a run folder::

    runs/<name>/recipe.yaml            the resolved recipe
    runs/<name>/metrics.jsonl          one JSON object per logged step / evaluation
    runs/<name>/checkpoints/step-000200/  accelerate save_state + teacher.safetensors + trainer_state.json + COMPLETE
    runs/<name>/final/                 model.safetensors (exported eval network) + eval results

A checkpoint is written under `step-XXXXXX.tmp` and renamed only after its COMPLETE marker exists, so a run killed
mid-write never leaves a folder that auto-resume would pick.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temp name + rename (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def complete_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first; torn or temp folders are ignored."""
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


def save_checkpoint(accelerator, ckpt_root: Path, step: int, teacher: torch.nn.Module | None, keep_last: int) -> Path:
    """Save an exactly-resumable checkpoint (all ranks must call this; rank 0 finalises and prunes)."""
    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / (step_dir_name(step) + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        if teacher is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()}, tmp / "teacher.safetensors")
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        (tmp / COMPLETE).write_text("ok\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in complete_checkpoints(ckpt_root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, teacher: torch.nn.Module | None) -> int:
    """Restore model/optimizer (and the teacher) from a complete checkpoint; returns the step to continue from."""
    if not (path / COMPLETE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {COMPLETE} marker); pick another one")
    accelerator.load_state(str(path))
    if teacher is not None:
        state = load_file(str(path / "teacher.safetensors"), device=str(next(teacher.parameters()).device))
        teacher.load_state_dict(state)
    return int(json.loads((path / "trainer_state.json").read_text())["step"])
