"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU): not a test module itself.

Usage: python tests/_dist_worker.py SHARDS OUT. Writes, per rank, what the test asserts on:
  OUT/ddp.safetensors          weights after a few DDP steps on fixed per-rank halves of a global batch (rank 0)
  OUT/keys-<rank>.json         sample keys of the first training batches this rank's TrainStream yields, and the
                               ann_ids of its validation share
  OUT/run/                     a 2-process `fit` run folder (checkpoints with student.safetensors, final eval)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from sshpe.data.batches import collate
from sshpe.data.streams import ValDataset, make_train_loader, make_val_loader
from sshpe.distributed import build_accelerator
from sshpe.loop import _optimizer, fit
from sshpe.nets import build_nets
from sshpe.recipe import Recipe, load_recipe
from sshpe.step import train_step

REPO = Path(__file__).resolve().parents[1]
EQUIV_STEPS = 3
# identity easy views (no scale, rotation or flip), so a sample's view does not depend on which rank draws it
NO_AUG = ["data.easy.scale_factor=0", "data.easy.rot_factor=0", "data.easy.rot_prob=0", "data.easy.flip=false"]


def equiv_recipe(shards: Path) -> Recipe:
    """`_smoke` on CPU with SGD and identity views: the DDP-vs-one-process comparison."""
    return load_recipe(
        REPO / "recipes" / "_smoke.yaml",
        [f"data.shards={shards}", "distributed.cpu=true", "optim.name=sgd", "optim.lr=0.05", *NO_AUG],
    )


def global_batch(shards: Path, step: int, size: int, parts: int) -> list[dict]:
    """The `size` labeled samples of global batch `step` (fixed order, wrapping), split into `parts` batches."""
    ds = ValDataset(shards, "labeled")
    idx = [(step * size + j) % len(ds) for j in range(size)]
    per = size // parts
    return [collate([ds[i] for i in idx[p * per : (p + 1) * per]]) for p in range(parts)]


def ddp_steps(shards: Path, out: Path) -> None:
    """DDP through the project's accelerator: rank r trains on half r of each global batch."""
    recipe = equiv_recipe(shards)
    acc = build_accelerator(recipe)
    rank, world = acc.process_index, acc.num_processes
    torch.manual_seed(recipe.seed)
    nets = build_nets(recipe)
    student, opt = acc.prepare(nets, _optimizer(recipe, nets.parameters()))
    assert type(student).__name__ == "DistributedDataParallel", type(student)
    gen = torch.Generator()
    for step in range(EQUIV_STEPS):
        halves = global_batch(shards, step, recipe.train.batch_size * world, parts=world)
        out_ = train_step(student, None, halves[rank], None, recipe, gen)
        acc.backward(out_["loss"])
        opt.step()
        opt.zero_grad(set_to_none=True)
    if acc.is_main_process:
        state = acc.unwrap_model(student).state_dict()
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(out / "ddp.safetensors"))
    acc.wait_for_everyone()


def record_shares(shards: Path, out: Path, rank: int, world: int) -> None:
    """What each rank reads: training keys of 6 batches (> one epoch of its share) and its val ann_ids."""
    it = iter(make_train_loader(shards, "labeled", batch_size=2, seed=0, rank=rank, world_size=world, num_workers=0))
    train_keys = [k for _ in range(6) for k in next(it)["key"]]
    val = make_val_loader(shards, "val", batch_size=3, rank=rank, world_size=world, num_workers=0)
    val_ids = [int(a) for b in val for a in b["ann_id"]]
    (out / f"keys-{rank}.json").write_text(json.dumps({"train": train_keys, "val": val_ids}))


def main() -> None:
    shards, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    ddp_steps(shards, out)
    recipe = load_recipe(
        REPO / "recipes" / "_smoke.yaml",
        [f"data.shards={shards}", "distributed.cpu=true", "train.duration=4", "train.ckpt_every=2"],
    )
    acc = build_accelerator(recipe)
    record_shares(shards, out, acc.process_index, acc.num_processes)
    fit(recipe, out / "run")


if __name__ == "__main__":
    main()
