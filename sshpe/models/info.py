"""Model size and cost: parameters, true MACs, the HRNet README "GFLOPs" convention, stride and stage shapes."""

from __future__ import annotations

from typing import Any

import torch
from rich.table import Table
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from sshpe.models.contract import Feat, PoseModel


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


def hrnet_readme_gflops(model: nn.Module, x: Tensor) -> float:
    """FLOPs as the HRNet README counts them (`get_model_summary`, reference §8.1), in units of 2^30.

    Per conv / transposed conv: weight elements x output H x W (so a stride-2 deconv counts 4x its true MACs);
    per Linear: output elements x input features; BN, activations, pooling and upsampling are free; biases
    are not counted.

    Args:
        model: any module; evaluated once on `x` under `torch.no_grad()`.
        x: (1,3,H,W) input (the README numbers are per image).
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * inputs[0].shape[-1]
        else:
            total += module.weight.numel() * output.shape[-2] * output.shape[-1]

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total / 2**30


def true_macs(model: nn.Module, x: Tensor) -> int:
    """Multiply-accumulates of one forward on `x`, from `torch.utils.flop_counter` (MACs = FLOPs / 2)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2


def _shapes(feat: Feat) -> list[tuple[int, ...]]:
    return [tuple(feat.shape)] if isinstance(feat, Tensor) else [tuple(f.shape) for f in feat]


def model_info(model: PoseModel, input_hw: tuple[int, int]) -> dict[str, Any]:
    """Size and cost of `model` for one (1,3,H,W) image.

    Runs on the model's device in eval mode (restoring the previous mode); a model on the "meta" device is
    counted without computing anything.

    Args:
        model: a PoseModel.
        input_hw: (H, W) input size in pixels, e.g. (256, 192).

    Returns:
        dict with keys: arch, input_hw, params, gmacs (true MACs / 1e9), hrnet_gflops (README convention,
        / 2^30), output_shape (1,K,h,w), output_stride, stages ({stage name: [feature shapes]}).
    """
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, *input_hw, device=device)
    stages: dict[str, list[tuple[int, ...]]] = {}

    def record(name: str, feat: Feat) -> Feat:
        stages[name] = _shapes(feat)
        return feat

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.forward_head(model.forward_encoder(x, hook=record))
        macs = true_macs(model, x)
        gflops = hrnet_readme_gflops(model, x)
    finally:
        model.train(was_training)
    return {
        "arch": model.arch,
        "input_hw": tuple(input_hw),
        "params": count_params(model),
        "gmacs": macs / 1e9,
        "hrnet_gflops": gflops,
        "output_shape": tuple(out.shape),
        "output_stride": input_hw[0] // out.shape[-2],
        "stages": stages,
    }


def format_info(info: dict[str, Any]) -> Table:
    """A rich Table of a `model_info` dict: one summary block, then one row per stage."""
    h, w = info["input_hw"]
    table = Table(title=f"{info['arch']} @ {h}x{w}", show_header=True)
    table.add_column("item")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{info['params'] / 1e6:.3f}M")
    table.add_row("MACs (flop_counter / 2)", f"{info['gmacs']:.2f}G")
    table.add_row("GFLOPs (HRNet README, /2^30)", f"{info['hrnet_gflops']:.2f}")
    table.add_row("output", "x".join(str(d) for d in info["output_shape"]))
    table.add_row("output stride", str(info["output_stride"]))
    for name, shapes in info["stages"].items():
        table.add_row(f"stage {name}", ", ".join("x".join(str(d) for d in s[1:]) for s in shapes))
    return table
