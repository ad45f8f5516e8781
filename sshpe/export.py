"""Weights users exchange: `model.safetensors` with the metadata needed to run it (DESIGN decision 10).

Metadata values are strings (safetensors' rule); structured values are JSON. Nothing here pickles or unpickles.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from sshpe.atomic import atomic_path
from sshpe.errors import quoted
from sshpe.models import HeatmapEnsemble, build_model
from sshpe.recipe import Recipe
from sshpe.views import HEATMAP_STRIDE

FORMAT = "sshpe-model/1"
_REQUIRED_META = ("arch", "num_joints", "head_channels", "head_kernel", "input_size", "mean", "std", "schema")


class WeightsFileError(ValueError):
    """A weights file that cannot be used (missing, truncated, corrupt, or not written by sshpe); the message names
    the file and what to do."""


_READ_ERRORS = (SafetensorError, RuntimeError, OSError, ValueError)


def _unreadable(path: Path, err: BaseException) -> str:
    return (
        f"{path} is not a readable safetensors file ({quoted(str(err), 120)}): it is truncated, corrupt or another "
        "format; write it again (sshpe export / sshpe import-weights) or copy it again"
    )


def read_safetensors(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor and the raw metadata of a safetensors file, read through `safe_open` (no pickle).

    Raises:
        WeightsFileError: the file is missing, or its header or data are truncated or corrupt (named).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except _READ_ERRORS as err:
        raise WeightsFileError(_unreadable(path, err)) from None
    return state, meta


def model_metadata(recipe: Recipe, network: str, provenance: dict | None = None) -> dict[str, str]:
    """Everything `sshpe predict` needs besides the weights, and where the weights come from: the sshpe version,
    the recipe's name and hash, and `provenance` (the training step, the validation score, ...)."""
    from sshpe import __version__

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
        "sshpe_version": __version__,
        **(provenance or {}),
    }
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def fp32_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state_dict as contiguous CPU tensors, floating ones in fp32 (integer buffers kept as they are)."""
    return {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu().contiguous() for k, v in state.items()
    }


def export_model(
    net: torch.nn.Module, path: Path, recipe: Recipe, network: str, provenance: dict | None = None
) -> Path:
    """Write one pose network (fp32, BN buffers included) with metadata (`model_metadata`; `provenance` e.g.
    {"step": 1250, "val_AP": 0.465}), atomically, honouring the umask. A `HeatmapEnsemble` is written whole (each
    member under `members.<i>.`, metadata `members`), so the file predicts what the ensemble was scored as."""
    path = Path(path)
    meta = model_metadata(recipe, network, provenance)
    if isinstance(net, HeatmapEnsemble):
        meta["members"] = str(len(net.members))
    with atomic_path(path) as tmp:
        save_file(fp32_state(net.state_dict()), str(tmp), metadata=meta)
    return path


def _decode_metadata(raw: dict[str, str], path: Path) -> dict:
    """Metadata strings -> values (JSON where they parse), checked to hold what rebuilding the network needs."""
    if raw.get("format") != FORMAT:
        raise WeightsFileError(
            f"{path}: not an sshpe model (metadata format {quoted(raw.get('format'))}, expected {FORMAT!r}); "
            "export one with `sshpe export RUN_DIR`"
        )
    out = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    missing = [k for k in _REQUIRED_META if k not in out]
    if missing:
        raise WeightsFileError(f"{path}: model metadata lacks {missing}; export the model again")
    return out


def read_metadata(path: Path) -> dict:
    """Decoded metadata of an exported model; raises a clear error for files sshpe did not write."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file; create one with `sshpe export RUN_DIR`")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except _READ_ERRORS as err:
        raise WeightsFileError(_unreadable(path, err)) from None
    return _decode_metadata(raw, path)


def load_exported(path: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the network from metadata and load its weights (strict); returns (model in eval mode, metadata).
    A file with `members` metadata (an exported ensemble) comes back as a `HeatmapEnsemble`.

    Raises:
        FileNotFoundError: no such file.
        WeightsFileError: a truncated or corrupt file, foreign or incomplete metadata, or weights that do not fit
            the network the metadata describes (each names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file; create one with `sshpe export RUN_DIR`")
    state, raw = read_safetensors(path, device)
    meta = _decode_metadata(raw, path)
    try:
        members = int(meta.get("members", 1))
        nets = [
            build_model(
                str(meta["arch"]),
                int(meta["num_joints"]),
                pretrained=False,
                head_channels=tuple(int(c) for c in meta["head_channels"]),
                head_kernel=int(meta["head_kernel"]),
            )
            for _ in range(members)
        ]
        net = nets[0] if members == 1 else HeatmapEnsemble(nets)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise WeightsFileError(f"{path}: its metadata does not describe a network sshpe can build ({err})") from None
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise WeightsFileError(
            f"{path}: its tensors do not fit the {meta['arch']} network its metadata describes "
            f"({quoted(str(err).splitlines()[0], 160)}); export the model again"
        ) from None
    return net.to(device).eval(), meta
