"""Accelerator construction, refused engine combinations, and cross-rank helpers (DESIGN decision 5).

DDP (accelerate's default under `accelerate launch`) is the main path. DeepSpeed ZeRO-1/2 is optional; its mixed
precision always goes through DeepSpeed's `torch_autocast` with accelerate's `mixed_precision="no"`, because the
DeepSpeed bf16/fp16 engines break BatchNorm (ECOSYSTEM_NOTES 1.2).
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class EngineError(ValueError):
    """An engine/precision/device combination that cannot work; the message says what to change."""


@dataclass(frozen=True)
class EngineChoice:
    """The engine a run uses after the recipe and the launcher (`accelerate launch --config_file`) are combined.

    Attributes:
        engine: "ddp" or "deepspeed".
        zero_stage: DeepSpeed ZeRO stage (ignored under DDP).
        ds_config_file: a DeepSpeed JSON named by the accelerate config (`deepspeed_config_file`), or None.
        source: "recipe" or "launcher", for the start-up log line.
    """

    engine: str
    zero_stage: int
    ds_config_file: Path | None
    source: str


def _world_size_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_engine(recipe) -> EngineChoice:
    """Recipe `distributed:` section, overridden by an accelerate DeepSpeed config the job was launched with.

    `accelerate launch --config_file configs/accelerate/2x8-deepspeed-zero2.yaml` exports ACCELERATE_USE_DEEPSPEED
    and the ZeRO stage / config file; those win over the recipe, so one recipe runs under either launcher config.
    """
    d = recipe.distributed
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return EngineChoice(d.engine, d.zero_stage, None, "recipe")
    cfg_file = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE") or None
    stage = int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", d.zero_stage))
    if cfg_file:
        stage = int(json.loads(Path(cfg_file).read_text()).get("zero_optimization", {}).get("stage", stage))
    return EngineChoice("deepspeed", stage, Path(cfg_file) if cfg_file else None, "launcher")


def check_engine(recipe, *, cuda: bool, world_size: int, choice: EngineChoice | None = None) -> None:
    """Refuse combinations that silently break (ECOSYSTEM_NOTES 1.2-1.5, 2). `sshpe.recipe.DistributedCfg` /
    `Recipe._cross_field` refuse the recipe-only ones at validation time; this adds what needs the launcher,
    the device and the world size."""
    d = recipe.distributed
    choice = choice or resolve_engine(recipe)
    launcher_mp = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if launcher_mp not in ("no", recipe.train.mixed_precision):
        raise EngineError(
            f"the launcher asks for mixed_precision={launcher_mp!r} but the recipe has train.mixed_precision="
            f"{recipe.train.mixed_precision!r}; precision comes from the recipe: set train.mixed_precision="
            f"{launcher_mp} (--set) or mixed_precision: 'no' in the accelerate config"
        )
    if d.sync_bn == "on" and not cuda:
        raise EngineError("distributed.sync_bn=on needs CUDA (SyncBatchNorm cannot run on CPU/gloo); use auto or off")
    if choice.engine != "deepspeed":
        return
    if d.cpu:
        raise EngineError(
            "distributed.engine=deepspeed with distributed.cpu=true: Accelerator(cpu=True) silently drops DeepSpeed; "
            "use engine=ddp on CPU"
        )
    if not cuda and world_size > 1:
        raise EngineError(
            f"distributed.engine=deepspeed with {world_size} processes on CPU: accelerate mis-reports ranks there "
            "(every rank is 'main', data is not sharded); use engine=ddp with distributed.cpu=true for "
            "multi-process CPU runs"
        )
    if choice.zero_stage == 3:
        raise EngineError(
            f"DeepSpeed ZeRO-3 (from the {choice.source}) partitions parameters, but EMA/EMAN teachers, evaluation "
            "and the fp32 checkpoint export need whole parameters; use zero_stage 1 or 2"
        )


def deepspeed_config(recipe, choice: EngineChoice | None = None) -> dict:
    """DeepSpeed config: ZeRO stage, `torch_autocast` for bf16/fp16 (never DeepSpeed's bf16/fp16 engines),
    accumulation and clipping from the recipe. A launcher's DeepSpeed JSON is the base when there is one."""
    t = recipe.train
    choice = choice or resolve_engine(recipe)
    cfg: dict = json.loads(choice.ds_config_file.read_text()) if choice.ds_config_file else {}
    cfg.pop("train_batch_size", None)  # derived by DeepSpeed from the two below and the world size
    cfg |= {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "gradient_clipping": recipe.optim.grad_clip or 0.0,
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
    }
    cfg["zero_optimization"] = cfg.get("zero_optimization", {}) | {"stage": choice.zero_stage}
    cfg.pop("torch_autocast", None)
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


def _require_deepspeed(choice: EngineChoice) -> None:
    """DeepSpeed is an optional extra: a run that asks for it without it installed fails with the fix."""
    try:
        import deepspeed  # noqa: F401
    except ImportError as e:
        raise EngineError(
            f"engine=deepspeed (from the {choice.source}) but DeepSpeed cannot be imported ({e}); "
            "pip install -e '.[deepspeed]', or use distributed.engine: ddp"
        ) from None


def build_accelerator(recipe, project_dir: Path | None = None):
    """Build the Accelerator a recipe asks for (works unchanged under `accelerate launch` and `torchrun`).

    Args:
        project_dir: where the recipe's trackers (`train.trackers`) write; None for no trackers (eval, predict).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cuda = torch.cuda.is_available() and not recipe.distributed.cpu
    choice = resolve_engine(recipe)
    check_engine(recipe, cuda=cuda, world_size=_world_size_env(), choice=choice)
    t = recipe.train
    track = dict(log_with=available_trackers(t.trackers), project_dir=str(project_dir)) if project_dir else {}
    if choice.engine == "deepspeed":
        from accelerate.utils import DeepSpeedPlugin

        _require_deepspeed(choice)
        _allow_deepspeed_without_transformers()
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(recipe, choice))
        acc = Accelerator(
            mixed_precision="no", deepspeed_plugin=plugin, gradient_accumulation_steps=t.grad_accum, **track
        )
    else:
        ddp = DistributedDataParallelKwargs(find_unused_parameters=False, broadcast_buffers=True)
        acc = Accelerator(
            cpu=recipe.distributed.cpu,
            mixed_precision=t.mixed_precision,
            gradient_accumulation_steps=t.grad_accum,
            kwargs_handlers=[ddp],
            **track,
        )
    check_launch(acc, recipe, cuda=cuda)
    return acc


TRACKER_PACKAGES = {
    "tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",), "aim": ("aim",), "clearml": ("clearml",), "dvclive": ("dvclive",),
}  # fmt: skip


def available_trackers(names) -> list[str]:
    """The recipe's trackers whose package is installed (TensorBoard, the default, is skipped silently when it is
    not; the others are checked at `recipe check`)."""
    return [n for n in names if any(importlib.util.find_spec(p) for p in TRACKER_PACKAGES[n])]


_CPU_MULTI = (
    "on CPU, run `torchrun --nproc_per_node N -m sshpe._cli.app train RECIPE --set distributed.cpu=true` (gloo; "
    "docs/scaling.md)"
)


def check_launch(acc, recipe, *, cuda: bool, env: dict | None = None) -> None:
    """Refuse a launch whose processes would not form the job the launcher started (issue 14).

    A launcher's view (`WORLD_SIZE`, `RANK`, `LOCAL_RANK` from torchrun / `accelerate launch`) must equal the
    Accelerator's. When they differ every process trains alone as a world-size-1 run on the same run folder: on a
    machine without CUDA when `distributed.cpu` is off, or under an accelerate config written for other hardware.
    `accelerate launch --cpu --num_processes N` (N > 1) starts a single process without `WORLD_SIZE` (it exports
    only `MASTER_ADDR`); that is refused too, since the user asked for N.

    Raises:
        EngineError: naming both views and the fix.
    """
    env = os.environ if env is None else env
    launcher = {k: int(env[k]) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK") if str(env.get(k, "")).isdigit()}
    ours = {"WORLD_SIZE": acc.num_processes, "RANK": acc.process_index, "LOCAL_RANK": acc.local_process_index}
    differs = {k: (v, ours[k]) for k, v in launcher.items() if v != ours[k]}
    if differs:
        what = ", ".join(f"{k}={a} but the trainer sees {b}" for k, (a, b) in differs.items())
        if not cuda and not recipe.distributed.cpu:
            fix = f"this machine has no CUDA device; add `--set distributed.cpu=true`, or {_CPU_MULTI}"
        elif cuda and _int(env, "LOCAL_WORLD_SIZE") > torch.cuda.device_count():
            fix = (
                f"the launcher starts {_int(env, 'LOCAL_WORLD_SIZE')} processes on a machine with "
                f"{torch.cuda.device_count()} GPU(s); use an accelerate config (num_processes, num_machines) or "
                "torchrun --nproc_per_node written for this machine"
            )
        else:
            fix = "check that the accelerate config / torchrun arguments match this machine (docs/scaling.md)"
        raise EngineError(
            f"the launcher started a {launcher.get('WORLD_SIZE', '?')}-process job ({what}): each process would "
            f"train alone on the same run folder; {fix}"
        )
    single_cpu = str(env.get("ACCELERATE_USE_CPU", "")).lower() in ("true", "1") and "WORLD_SIZE" not in env
    if single_cpu and env.get("MASTER_ADDR") and acc.num_processes == 1:
        raise EngineError(
            "`accelerate launch --cpu --num_processes N` starts one process, not N (it sets MASTER_ADDR but no "
            f"WORLD_SIZE); {_CPU_MULTI}, or drop --num_processes for a single process (unset MASTER_ADDR if "
            "you exported it yourself)"
        )


def _int(env, key: str) -> int:
    value = str(env.get(key, ""))
    return int(value) if value.isdigit() else 0


def engine_info(accelerator) -> dict:
    """What a checkpoint records about the topology that wrote it (trainer_state.json)."""
    from accelerate.utils import DistributedType

    ds = accelerator.distributed_type == DistributedType.DEEPSPEED
    stage = accelerator.state.deepspeed_plugin.zero_stage if ds else None
    return {"world_size": accelerator.num_processes, "engine": "deepspeed" if ds else "ddp", "zero_stage": stage}


def check_prepared(student, accelerator) -> None:
    """After `prepare`: a DeepSpeed engine must not run its bf16/fp16 engines (they cast BN weights but not BN
    buffers, ECOSYSTEM_NOTES 1.2); precision must come from `torch_autocast`."""
    if engine_info(accelerator)["engine"] != "deepspeed":
        return
    if student.bfloat16_enabled() or student.fp16_enabled():
        raise EngineError(
            "the DeepSpeed engine runs its bf16/fp16 mode, which breaks BatchNorm; remove `bf16`/`fp16` from the "
            "DeepSpeed config and set train.mixed_precision (it becomes torch_autocast)"
        )


def maybe_sync_batchnorm(model: nn.Module, recipe, accelerator) -> nn.Module:
    """Convert BN to SyncBatchNorm when asked (auto: multi-GPU CUDA only; SyncBN cannot run on CPU/gloo).
    Must run before `prepare` (DeepSpeed cannot convert its wrapped module, ECOSYSTEM_NOTES 1.3)."""
    mode = recipe.distributed.sync_bn
    on = mode == "on" or (mode == "auto" and accelerator.device.type == "cuda" and accelerator.num_processes > 1)
    return nn.SyncBatchNorm.convert_sync_batchnorm(model) if on else model


@torch.no_grad()
def sync_bn_buffers(accelerator, *models: nn.Module | None) -> None:
    """Average BatchNorm running statistics of `models` over ranks (DDP/DeepSpeed never do it at the end of a step).

    Every rank must call it (one all-reduce per BN layer); None entries are skipped. `num_batches_tracked` is
    equal on every rank already, because every rank runs the same number of steps.
    """
    if accelerator.num_processes == 1:
        return
    mods = [m for model in models if model is not None for m in model.modules()]
    bns = [m for m in mods if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
    for mod in bns:
        flat = torch.cat([mod.running_mean, mod.running_var])
        flat = accelerator.reduce(flat, reduction="mean")
        mod.running_mean.copy_(flat[: mod.running_mean.numel()])
        mod.running_var.copy_(flat[mod.running_mean.numel() :])
