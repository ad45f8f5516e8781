"""Teacher construction and pure teacher updates: EMA / EMAN of a student (reference §4.3, §6) and decay schedules.

The loop owns when these run (after each optimiser step, from the unwrapped student, DESIGN decision 4).
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from torch import nn

DecaySchedule = Literal["const", "linear", "cosine"]


def make_teacher(student: nn.Module) -> nn.Module:
    """Deep copy of the whole student (parameters and BN buffers, reference §6 "deep-copy init"), frozen, eval mode.

    The caller must keep it in eval mode (`model.train()` on a container would flip it back).
    """
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()


def _paired_tensors(teacher: nn.Module, student: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, bool]]:
    """(teacher tensor, student tensor, is_parameter) for every parameter and buffer; names and shapes checked.

    Raises:
        ValueError: listing every key present on one side only and every shape mismatch, all at once.
    """
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    t_bufs, s_bufs = dict(teacher.named_buffers()), dict(student.named_buffers())
    problems = []
    for kind, t_dict, s_dict in (("parameters", t_params, s_params), ("buffers", t_bufs, s_bufs)):
        for side, mine, other in (("teacher", t_dict, s_dict), ("student", s_dict, t_dict)):
            if only := sorted(set(mine) - set(other)):
                problems.append(f"{kind} only in the {side}: {only}")
        for key in sorted(set(t_dict) & set(s_dict)):
            if t_dict[key].shape != s_dict[key].shape:
                problems.append(
                    f"{key!r} has shape {tuple(t_dict[key].shape)} in the teacher and "
                    f"{tuple(s_dict[key].shape)} in the student"
                )
    if problems:
        raise ValueError(
            "ema_update: teacher and student differ: " + "; ".join(problems) + ". Build the teacher with "
            "make_teacher(student) from the unwrapped student (not a DDP/compiled wrapper)."
        )
    pairs = [(t, s_params[k], True) for k, t in t_params.items()]
    return pairs + [(t, s_bufs[k], False) for k, t in t_bufs.items()]


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float, *, include_buffers: bool) -> None:
    """In-place t ← m·t + (1 − m)·s with m = `decay`.

    Floating-point parameters are always averaged. Floating buffers (BN running mean/var) are averaged when
    `include_buffers` (EMAN, reference §6) and copied from the student otherwise. Integer buffers
    (`num_batches_tracked`) are always copied.

    Args:
        teacher: the EMA model (same architecture as `student`).
        student: the unwrapped student after the optimiser step.
        decay: m in [0, 1]; 1 keeps the teacher, 0 copies the student.

    Raises:
        ValueError: naming the offending key when names or shapes differ.
    """
    for t, s, is_param in _paired_tensors(teacher, student):
        s = s.detach().to(device=t.device, dtype=t.dtype)
        if t.is_floating_point() and (is_param or include_buffers):
            t.lerp_(s, 1.0 - decay)
        else:
            t.copy_(s)


def decay_at(
    step: int,
    *,
    base: float,
    warmup_steps: int = 0,
    start: float = 0.5,
    schedule: DecaySchedule,
) -> float:
    """EMA decay m at optimiser step `step` (0-based).

    * "const": `base`.
    * "linear" (MUM's DYNAMIC_EMA): `start` at step 0 rising linearly to `base` at `warmup_steps`, then `base`.
    * "cosine" (BYOL): m = 1 − (1 − base)·(cos(π·k/K) + 1)/2 with K = `warmup_steps` (the total annealing
      length, > 0): `base` at step 0, 1 at K and after.
    """
    if schedule == "const":
        return float(base)
    if schedule == "linear":
        if step >= warmup_steps:
            return float(base)
        return float(start + (base - start) * step / warmup_steps)
    if schedule == "cosine":
        if warmup_steps <= 0:
            raise ValueError("decay_at: the cosine schedule needs warmup_steps > 0 (its total annealing length)")
        k = min(step, warmup_steps)
        return float(1.0 - (1.0 - base) * (math.cos(math.pi * k / warmup_steps) + 1.0) / 2.0)
    raise ValueError(f"decay_at: schedule {schedule!r} is not one of ['const', 'linear', 'cosine']")
