"""Weights users exchange: `model.safetensors` with the metadata needed to run it (DESIGN decision 10).

Metadata values are strings (safetensors' rule); structured values are JSON. Nothing here pickles or unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sshpe.atomic import atomic_path
from sshpe.models import build_model
from sshpe.recipe import Recipe
from sshpe.views import HEATMAP_STRIDE

FORMAT = "sshpe-model/1"


def model_metadata(recipe: Recipe, network: str) -> dict[str, str]:
    """Everything `sshpe predict` needs besides the weights."""
    d, m, e = recipe.data, recipe.model, recipe.eval
    meta = {
        "format": FORMAT,
        "arch": m.arch,
        "head_channels": list(m.head_channels),
        "head_kernel": m.head_kernel,
        "num_joints": recipe.schema.num_joints,
        "schema": recipe.schema.as_metadata(),
        "input_size": list(d.input_size),
        "mean": list(d.mean),
        "std": list(d.std),
        "color": d.color,
        "heatmap_stride": HEATMAP_STRIDE,
        "sigma": d.sigma,
        "decode": {"mode": e.decode, "flip_test": e.flip_test, "shift_heatmap": e.shift_heatmap},
        "recipe_name": recipe.name,
        "recipe_hash": recipe.hash(),
        "network": network,
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def fp32_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state_dict as contiguous CPU tensors, floating ones in fp32 (integer buffers kept as they are)."""
    return {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous() for k, v in state.items()
    }


def export_model(net: torch.nn.Module, path: Path, recipe: Recipe, network: str) -> Path:
    """Write one pose network (fp32, BN buffers included) with metadata, atomically, honouring the umask."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(fp32_state(net.state_dict()), str(tmp), metadata=model_metadata(recipe, network))
    return path


def read_metadata(path: Path) -> dict:
    """Decoded metadata of an exported model; raises a clear error for files sshpe did not write."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file; create one with `sshpe export RUN_DIR`")
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    if raw.get("format") != FORMAT:
        raise ValueError(f"{path}: not an sshpe model (metadata format {raw.get('format')!r}, expected {FORMAT!r})")
    out = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def load_exported(path: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the network from metadata and load its weights (strict); returns (model in eval mode, metadata)."""
    meta = read_metadata(path)
    net = build_model(
        meta["arch"],
        int(meta["num_joints"]),
        pretrained=False,
        head_channels=tuple(meta["head_channels"]),
        head_kernel=int(meta["head_kernel"]),
    )
    net.load_state_dict(load_file(str(path), device=str(device)))
    return net.to(device).eval(), meta
