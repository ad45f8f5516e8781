"""Teacher construction, EMA / EMAN updates on a tiny Conv-BN net, and decay schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sshpe.teachers import decay_at, ema_update, make_teacher


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def train_student(student: nn.Module, steps: int = 3) -> None:
    """A few optimiser steps in train mode, so parameters and BN running stats move away from the teacher's."""
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(1)
    student.train()
    for _ in range(steps):
        loss = student(torch.randn(4, 3, 8, 8, generator=g) * 3 + 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_make_teacher_is_a_frozen_eval_copy() -> None:
    torch.manual_seed(0)
    student = tiny_net().train()
    teacher = make_teacher(student)
    assert not teacher.training and all(not m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters()) and student.training
    for (k, t), s in zip(teacher.state_dict().items(), student.state_dict().values()):
        assert torch.equal(t, s), k
        assert t.data_ptr() != s.data_ptr(), f"{k} shares storage with the student"


def _trained_pair():
    """A student trained a few steps away from its teacher copy, and the teacher's state before any update."""
    torch.manual_seed(0)
    student = tiny_net()
    teacher = make_teacher(student)
    train_student(student)
    return student, teacher, {k: v.clone() for k, v in teacher.state_dict().items()}


@pytest.mark.parametrize("include_buffers", [True, False])
def test_ema_update_matches_the_formula(include_buffers: bool) -> None:
    student, teacher, before = _trained_pair()
    ema_update(teacher, student, 0.6, include_buffers=include_buffers)
    after, s = teacher.state_dict(), student.state_dict()
    for key in before:
        if key.endswith("num_batches_tracked"):
            assert int(after[key]) == int(s[key]) == 3
        elif key.endswith(("running_mean", "running_var")) and not include_buffers:
            assert torch.equal(after[key], s[key])
        else:
            assert not torch.equal(before[key], s[key]), f"{key} did not move; the test would be vacuous"
            torch.testing.assert_close(after[key], 0.6 * before[key] + 0.4 * s[key])
    assert all(not p.requires_grad for p in teacher.parameters())


def test_ema_update_extremes() -> None:
    student, teacher, frozen = _trained_pair()
    ema_update(teacher, student, 1.0, include_buffers=True)
    for key, value in teacher.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, frozen[key]), key
    ema_update(teacher, student, 0.0, include_buffers=True)
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, student.state_dict()[key]), key


def test_ema_update_names_the_mismatching_key() -> None:
    student = tiny_net()
    other = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 5, 1))
    with pytest.raises(ValueError, match=r"'3\.weight' has shape"):
        ema_update(make_teacher(other), student, 0.9, include_buffers=True)
    shorter = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"only in the student: \['3\.bias', '3\.weight'\]"):
        ema_update(make_teacher(shorter), student, 0.9, include_buffers=True)


def test_decay_schedules() -> None:
    assert decay_at(0, base=0.6, schedule="const") == 0.6
    assert decay_at(10_000, base=0.6, warmup_steps=100, schedule="const") == 0.6
    lin = dict(base=0.9996, warmup_steps=2000, schedule="linear")
    assert decay_at(0, **lin) == 0.5
    assert math.isclose(decay_at(1000, **lin), 0.5 + (0.9996 - 0.5) / 2)
    assert decay_at(2000, **lin) == decay_at(5000, **lin) == 0.9996
    assert decay_at(0, base=0.9, warmup_steps=0, schedule="linear") == 0.9
    cos = dict(base=0.996, warmup_steps=1000, schedule="cosine")
    assert math.isclose(decay_at(0, **cos), 0.996)
    assert math.isclose(decay_at(500, **cos), 1 - 0.004 / 2)
    assert decay_at(1000, **cos) == decay_at(3000, **cos) == 1.0
    assert decay_at(100, **cos) < decay_at(200, **cos)
    with pytest.raises(ValueError, match="warmup_steps > 0"):
        decay_at(0, base=0.99, schedule="cosine")
    with pytest.raises(ValueError, match="'cosin'"):
        decay_at(0, base=0.99, schedule="cosin")  # type: ignore[arg-type]
