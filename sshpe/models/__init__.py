"""Pose networks: the `PoseModel` contract (`contract.py`, stage API for MUM/Pose-MUM tile mixing) and its builders.

Architectures live in `simple_baseline.py` (any timm `features_only` backbone + deconv head) and `hrnet.py`
(official pose HRNet-W32/W48 from timm); `build.py` maps names to them, `info.py` counts parameters and FLOPs,
`official.py` imports official `.pth` checkpoints, `ensemble.py` averages several networks' heatmaps.
"""

from sshpe.models.build import ARCHS, build_model
from sshpe.models.contract import Feat, PoseModel, StageHook, init_normal_
from sshpe.models.ensemble import HeatmapEnsemble
from sshpe.models.info import format_info, model_info
from sshpe.models.official import ImportReport, import_official

__all__ = [
    "ARCHS",
    "Feat",
    "HeatmapEnsemble",
    "ImportReport",
    "PoseModel",
    "StageHook",
    "build_model",
    "format_info",
    "import_official",
    "init_normal_",
    "model_info",
]
