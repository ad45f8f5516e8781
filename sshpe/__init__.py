"""sshpe: semi-supervised 2D human pose estimation in one Accelerate trainer.

Public surface: `load_recipe`, `Recipe`, `fit`, `train_step`, `build_model`, `get_schema`, and `load_model` (an
exported model as a callable on images and person boxes, for notebooks).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Recipe", "build_model", "fit", "get_schema", "load_model", "load_recipe", "train_step"]


def __getattr__(name: str):
    # Lazy so `import sshpe` (and `sshpe --help`) stays cheap and works without the training stack loaded.
    if name in ("Recipe", "load_recipe"):
        from sshpe import recipe

        return getattr(recipe, name)
    if name == "fit":
        from sshpe.loop import fit

        return fit
    if name == "train_step":
        from sshpe.step import train_step

        return train_step
    if name == "build_model":
        from sshpe.models import build_model

        return build_model
    if name == "load_model":
        from sshpe.inference.pose_model import load_model

        return load_model
    if name == "get_schema":
        from sshpe.schema import get_schema

        return get_schema
    raise AttributeError(name)
