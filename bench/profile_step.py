"""Time one supervised training step of a recipe on this machine: data (decode), easy views + targets, and
fwd+bwd+Adam, averaged over 5 batches. Usage: python bench/profile_step.py RECIPE [--set-style overrides...]

Run from a folder where the recipe's shards exist. Used for the channels_last measurement in docs/benchmarks.md.
"""

import sys
import time

import torch

from sshpe.data.streams import TrainStream
from sshpe.nets import build_nets
from sshpe.recipe import load_recipe
from sshpe.step import easy_view, train_step
from sshpe.views import view_targets

torch.set_num_threads(2)
r = load_recipe(sys.argv[1], sys.argv[2:])
nets = build_nets(r).to(memory_format=torch.channels_last) if r.model.channels_last else build_nets(r)
opt = torch.optim.Adam(nets.parameters(), 1e-3)
it = iter(TrainStream(r.data.shards, "labeled", seed=0, rank=0, world_size=1, batch_size=r.train.batch_size))
t = time.perf_counter()
b = [next(it) for _ in range(5)]
print("data per batch", (time.perf_counter() - t) / 5)
g = torch.Generator().manual_seed(0)
t = time.perf_counter()
for x in b:
    v = easy_view(x, r, g)
    view_targets(v, 2.0)
print("views per batch", (time.perf_counter() - t) / 5)
for i in range(6):
    if i == 1:
        t = time.perf_counter()
    out = train_step(nets, None, b[i % 5], None, r, g)
    out["loss"].backward()
    opt.step()
    opt.zero_grad()
print("step", (time.perf_counter() - t) / 5, "samples/s", r.train.batch_size * 5 / (time.perf_counter() - t))
