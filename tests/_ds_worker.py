"""Run by tests/test_deepspeed.py in a fresh process (DeepSpeed initialises torch.distributed and accelerate's
global state, which must not leak into other tests): single-process DeepSpeed ZeRO-2 on CPU, bf16 autocast.

Usage: python tests/_ds_worker.py SHARDS OUT. Writes OUT/report.json and OUT/checkpoints/step-000008/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from safetensors.torch import load_file

from sshpe.checkpoint import STUDENT, load_checkpoint, save_checkpoint
from sshpe.distributed import build_accelerator, check_prepared, engine_info
from sshpe.loop import _optimizer
from sshpe.nets import build_nets
from sshpe.recipe import load_recipe
from sshpe.step import train_step
from sshpe.teachers import ema_update, make_teacher

sys.path.insert(0, str(Path(__file__).parent))
from _dist_worker import NO_AUG, REPO, global_batch  # noqa: E402

STEPS = 8


def main() -> None:
    shards, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    recipe = load_recipe(REPO / "recipes" / "_smoke.yaml", [
        f"data.shards={shards}", "distributed.engine=deepspeed", "train.mixed_precision=bf16", "optim.grad_clip=1.0",
        "teacher.kind=eman", *NO_AUG,
    ])  # fmt: skip
    acc = build_accelerator(recipe)
    torch.manual_seed(recipe.seed)
    nets = build_nets(recipe)
    teacher = make_teacher(nets)
    student, opt = acc.prepare(nets, _optimizer(recipe, nets.parameters()))
    check_prepared(student, acc)
    raw = acc.unwrap_model(student)
    batch = global_batch(shards, 0, recipe.train.batch_size, 1)[0]
    gen, losses = torch.Generator(), []

    def one_step() -> float:
        with acc.accumulate(student), acc.autocast():
            loss = train_step(student, None, batch, None, recipe, gen)["loss"]
            acc.backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
        ema_update(teacher, raw, 0.5, include_buffers=True)
        return float(loss.detach())

    out_dtype = str(student(batch["canvas"][:, :, :64, :64].float() / 255).dtype)  # through the engine's autocast
    losses = [one_step() for _ in range(STEPS)]
    ckpt = save_checkpoint(acc, out / "checkpoints", STEPS, student, teacher, recipe, keep_last=2)
    after_save = [one_step() for _ in range(2)]
    load_checkpoint(acc, ckpt, teacher)
    after_load = [one_step() for _ in range(2)]
    zero = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="pytorch_model")  # DeepSpeed's own consolidation
    mine = load_file(str(ckpt / STUDENT))
    report = {
        "engine": engine_info(acc), "type": type(student).__name__, "out_dtype": out_dtype,
        "bf16_engine": student.bfloat16_enabled(), "fp16_engine": student.fp16_enabled(),
        "autocast": student.torch_autocast_enabled(),
        "buffer_dtypes": sorted({str(b.dtype) for n, b in raw.named_buffers() if "running" in n}),
        "param_dtypes": sorted({str(p.dtype) for p in raw.parameters()}),
        "zero_keys_equal": sorted(zero) == sorted(mine),
        "zero_max_diff": max(float((zero[k].float() - mine[k].float()).abs().max()) for k in mine if k in zero),
        "losses": losses, "after_save": after_save, "after_load": after_load,
    }  # fmt: skip
    (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
