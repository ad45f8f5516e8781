"""Accelerator construction, refused engine combinations, and cross-rank helpers (DESIGN decision 5).

DDP (accelerate's default under `accelerate launch`) is the main path. DeepSpeed ZeRO-1/2 is optional; its mixed
precision always goes through DeepSpeed's `torch_autocast` with accelerate's `mixed_precision="no"`, because the
DeepSpeed bf16/fp16 engines break BatchNorm (ECOSYSTEM_NOTES 1.2).
"""

from __future__ import annotations

import os

import torch
from torch import nn


class EngineError(ValueError):
    """An engine/precision/device combination that cannot work; the message says what to change."""


def _world_size_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_engine(recipe, *, cuda: bool, world_size: int) -> None:
    """Refuse combinations that silently break (ECOSYSTEM_NOTES pitfalls 1-3)."""
    d = recipe.distributed
    if d.engine != "deepspeed":
        return
    if d.cpu:
        raise EngineError(
            "distributed.engine=deepspeed with distributed.cpu=true: Accelerator(cpu=True) silently drops DeepSpeed; "
            "use engine=ddp on CPU"
        )
    if not cuda and world_size > 1:
        raise EngineError(
            f"distributed.engine=deepspeed with {world_size} processes on CPU: accelerate mis-reports ranks there "
            "(every rank is 'main'); use engine=ddp for multi-process CPU runs"
        )
    if d.zero_stage == 3 and recipe.teacher.kind in ("ema", "eman"):
        raise EngineError("distributed.zero_stage=3 cannot hold an EMA/EMAN teacher; use zero_stage 1 or 2")


def deepspeed_config(recipe) -> dict:
    """DeepSpeed config: ZeRO stage, torch_autocast for bf16/fp16, accumulation and clipping left to accelerate."""
    t, d = recipe.train, recipe.distributed
    cfg: dict = {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "zero_optimization": {"stage": d.zero_stage},
        "gradient_clipping": recipe.optim.grad_clip or 0.0,
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
    }
    if t.mixed_precision != "no":
        dtype = "bfloat16" if t.mixed_precision == "bf16" else "float16"
        cfg["torch_autocast"] = {"enabled": True, "dtype": dtype}
    return cfg


def _allow_deepspeed_without_transformers() -> None:
    """accelerate >= 1.0 imports transformers for any DeepSpeedPlugin only to keep a ZeRO-3 weakref
    (ECOSYSTEM_NOTES 1.10); without ZeRO-3 that is unnecessary, so skip it when transformers is absent."""
    import importlib.util

    if importlib.util.find_spec("transformers") is not None:
        return
    from accelerate.utils import DeepSpeedPlugin

    DeepSpeedPlugin.set_deepspeed_weakref = lambda self: None


def build_accelerator(recipe):
    """Build the Accelerator a recipe asks for (works unchanged under `accelerate launch` and `torchrun`)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cuda = torch.cuda.is_available() and not recipe.distributed.cpu
    check_engine(recipe, cuda=cuda, world_size=_world_size_env())
    t = recipe.train
    if recipe.distributed.engine == "deepspeed":
        from accelerate.utils import DeepSpeedPlugin

        _allow_deepspeed_without_transformers()
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(recipe))
        acc = Accelerator(mixed_precision="no", deepspeed_plugin=plugin, gradient_accumulation_steps=t.grad_accum)
    else:
        ddp = DistributedDataParallelKwargs(find_unused_parameters=False, broadcast_buffers=True)
        acc = Accelerator(
            cpu=recipe.distributed.cpu,
            mixed_precision=t.mixed_precision,
            gradient_accumulation_steps=t.grad_accum,
            kwargs_handlers=[ddp],
        )
    return acc


def maybe_sync_batchnorm(model: nn.Module, recipe, accelerator) -> nn.Module:
    """Convert BN to SyncBatchNorm when asked (auto: multi-GPU CUDA only; SyncBN cannot run on CPU/gloo)."""
    mode = recipe.distributed.sync_bn
    on = mode == "on" or (mode == "auto" and accelerator.device.type == "cuda" and accelerator.num_processes > 1)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if on else model


@torch.no_grad()
def sync_bn_buffers(model: nn.Module, accelerator) -> None:
    """Average BatchNorm running statistics over ranks (DDP/DeepSpeed never do it at the end of a step)."""
    if accelerator.num_processes == 1:
        return
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
            for buf in (mod.running_mean, mod.running_var):
                buf.copy_(accelerator.reduce(buf.clone(), reduction="mean"))
