"""Session fixtures: a tiny synthetic dataset written by the real generator and sharded by the real writer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    from sshpe.synth import generate

    root = tmp_path_factory.mktemp("synth")
    generate(root, num_train=10, num_val=4, seed=3, image_size=(160, 120), progress=False)
    return root


@pytest.fixture(scope="session")
def smoke_shards(synth_root, tmp_path_factory) -> Path:
    """Labeled/unlabeled/val/val_det shards at 64x64 input, several small shards per split."""
    from sshpe.data.prepare import find_sources, shard_dataset

    out = tmp_path_factory.mktemp("shards")
    shard_dataset(find_sources(synth_root), out, dataset="synth", input_hw=(64, 64), shard_size=8, progress=False)
    return out


def smoke_recipe(shards: Path, *overrides: str):
    """The `_smoke` test recipe pointed at test shards."""
    from sshpe.recipe import load_recipe

    return load_recipe(REPO / "recipes" / "_smoke.yaml", [f"data.shards={shards}", *overrides])
