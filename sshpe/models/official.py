"""Import official SimpleBaseline (PoseResNet) and pose HRNet `.pth` checkpoints, strictly and without pickle code.

Our ResNet SimpleBaseline and pose HRNet use the official key layout, so the key map is the identity after
removing wrapper prefixes (`module.` from DataParallel, `net1.`/`resnet1.`-style prefixes of the reference repos'
PoseDual/PoseCons checkpoints). Checkpoints saved by PyTorch < 0.4.1 lack BatchNorm `num_batches_tracked`
buffers; those are filled from the fresh model and reported.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sshpe.models.build import build_model
from sshpe.models.contract import PoseModel

_CONTAINER_KEYS = ("state_dict", "best_state_dict", "model")
_MAX_LISTED = 20


@dataclass(frozen=True)
class ImportReport:
    """What `import_official` did.

    Attributes:
        path: the checkpoint file.
        arch: the sshpe architecture it was loaded into.
        container: the dict key the state_dict came from ("" for a bare state_dict).
        prefix: the wrapper prefix removed from every key (e.g. "module.", "module.net1."), or "".
        nets: every network prefix found in a multi-network checkpoint (empty for a single network).
        num_tensors: tensors loaded.
        filled: keys absent from the file and kept from the fresh model (only `num_batches_tracked`).
    """

    path: str
    arch: str
    container: str
    prefix: str
    nets: tuple[str, ...]
    num_tensors: int
    filled: tuple[str, ...] = field(default_factory=tuple)


def to_official_key(key: str) -> str:
    """Our state_dict key -> the official checkpoint key (identity: the layouts are the same)."""
    return key


def from_official_key(key: str) -> str:
    """Official checkpoint key -> our state_dict key (identity: the layouts are the same)."""
    return key


def _unwrap(obj: object, path: Path) -> tuple[dict[str, Tensor], str]:
    """Finds the state_dict inside a loaded checkpoint: bare, or under state_dict/best_state_dict/model."""
    if isinstance(obj, dict):
        for key in _CONTAINER_KEYS:
            if isinstance(obj.get(key), dict):
                return obj[key], key
        if obj and all(isinstance(v, Tensor) for v in obj.values()):
            return obj, ""
    raise ValueError(
        f"{path}: not a state_dict checkpoint (expected a dict of tensors, or one under "
        f"{list(_CONTAINER_KEYS)}); got {type(obj).__name__}"
    )


def _find_prefix(keys: list[str], expected: set[str], net: str | None, path: Path) -> tuple[str, tuple[str, ...]]:
    """The prefix to strip so `keys` match `expected`, choosing one network of a multi-network checkpoint.

    Returns:
        (prefix, nets): nets lists every candidate network prefix (empty when the checkpoint holds one net).
    """
    prefix = ""
    while keys and all(k.startswith(prefix + "module.") for k in keys):
        prefix += "module."
    stripped = [k[len(prefix) :] for k in keys]
    if net is None and expected & set(stripped):
        return prefix, ()
    heads = sorted({k.split(".", 1)[0] for k in stripped if "." in k})
    nets = tuple(h for h in heads if expected & {k[len(h) + 1 :] for k in stripped if k.startswith(h + ".")})
    if not nets:
        if net is not None:
            raise ValueError(f"{path}: holds a single network, so net={net!r} does not apply; leave net unset")
        return prefix, ()
    if net is None:
        return f"{prefix}{nets[0]}.", nets
    if net not in nets:
        raise ValueError(f"{path}: network {net!r} not found; the checkpoint holds {list(nets)}")
    return f"{prefix}{net}.", nets


def _listing(title: str, keys: list[str]) -> str:
    shown = keys[:_MAX_LISTED]
    more = f" ... and {len(keys) - len(shown)} more" if len(keys) > len(shown) else ""
    return f"{title} ({len(keys)}): {', '.join(shown)}{more}"


def _check_keys(
    ours: dict[str, Tensor], theirs: dict[str, Tensor], path: Path, arch: str, num_joints: int
) -> tuple[str, ...]:
    """Raises listing every missing, unexpected and shape-mismatched key; returns the fillable missing keys."""
    missing = [k for k in ours if k not in theirs]
    filled = tuple(k for k in missing if k.endswith("num_batches_tracked"))
    missing = [k for k in missing if k not in filled]
    unexpected = [k for k in theirs if k not in ours]
    mismatched = [
        f"{k} {tuple(theirs[k].shape)} vs ours {tuple(ours[k].shape)}"
        for k in ours
        if k in theirs and theirs[k].shape != ours[k].shape
    ]
    if not (missing or unexpected or mismatched):
        return filled
    problems = [
        _listing(title, keys)
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched))
        if keys
    ]
    hint = ""
    final = theirs.get(from_official_key("final_layer.weight"))
    if final is not None and final.shape[0] != num_joints:
        hint = f"; the checkpoint's final_layer has {final.shape[0]} joints, pass num_joints={final.shape[0]}"
    raise ValueError(
        f"{path}: does not match {arch} with {num_joints} joints: "
        + "; ".join(problems)
        + hint
        + " (is it an official SimpleBaseline/HRNet pose checkpoint of this architecture?)"
    )


def _load_pth(path: Path) -> Any:
    """`torch.load(weights_only=True)` with one-line errors naming the file (truncated, not a checkpoint, or holding
    pickled objects other than tensors and containers, which are refused rather than run)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path}: refused to unpickle it ({first[:160]}): it is not a plain weights checkpoint, or it holds "
            "objects other than tensors (weights_only=True never runs pickled code)"
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path}: not a readable PyTorch checkpoint ({first[:160]}); it is truncated or corrupt"
        ) from None


def import_official(
    path: str | Path, arch: str, num_joints: int, *, net: str | None = None, **model_kwargs: Any
) -> tuple[PoseModel, ImportReport]:
    """Loads an official pose checkpoint into a fresh sshpe model, strictly.

    Args:
        path: `.pth` file; read with `torch.load(weights_only=True)`, so it never runs pickled code. Accepts a
            bare state_dict, a dict holding one under "state_dict"/"best_state_dict"/"model", `module.`
            prefixes, and multi-network checkpoints (`net1.*`, `resnet2.*`, ...).
        arch: sshpe architecture name ("resnet50", "hrnet_w32", ...).
        num_joints: K heatmap channels of the checkpoint's final layer.
        net: which network of a multi-network checkpoint to load (its key prefix, e.g. "net2"); default: the
            first in sorted order.
        model_kwargs: head settings for `build_model` (head_channels, head_kernel, final_kernel); the defaults
            are the official 3 x 256 deconvs with 4x4 kernels.

    Returns:
        (model, report): the model with the checkpoint's weights (in train mode, on CPU) and what was done.

    Raises:
        ValueError: the file is not a state_dict, or its keys/shapes do not match; the message lists every
            missing, unexpected and shape-mismatched key.
    """
    path = Path(path)
    obj = _load_pth(path)
    raw, container = _unwrap(obj, path)
    model = build_model(arch, num_joints, **model_kwargs)
    ours = model.state_dict()
    prefix, nets = _find_prefix(list(raw), set(ours), net, path)
    theirs = {from_official_key(k[len(prefix) :]): v for k, v in raw.items() if k.startswith(prefix)}
    filled = _check_keys(ours, theirs, path, arch, num_joints)
    theirs.update({k: ours[k] for k in filled})
    model.load_state_dict(theirs, strict=True)
    report = ImportReport(
        path=str(path),
        arch=arch,
        container=container,
        prefix=prefix,
        nets=nets,
        num_tensors=len(theirs) - len(filled),
        filled=filled,
    )
    return model, report
