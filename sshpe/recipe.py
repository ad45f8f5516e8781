"""Recipes: the strict, typed schema of a training run, loaded from YAML with CLI overrides.

Validation happens once, here, at the edge (STYLE habit 2): every class is frozen with `extra="forbid"`, unions are
discriminated on `kind`, and every problem in a file is reported at once with its field path and a fix.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sshpe.data.locations import shard_location
from sshpe.errors import quoted
from sshpe.schema import BUILTIN_NAMES, KeypointSchema, SchemaFile, read_schema_file, resolve_schema

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ep|epochs?|st|steps?)\s*$")
_RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+=@-]{0,127}$")
MAX_RECIPE_BYTES = 1 << 20  # recipes are a few KiB
MAX_YAML_DEPTH = 32  # recipes nest about 6 deep
MAX_YAML_VALUES = 20_000  # values after expanding YAML aliases (a shipped recipe has a few hundred)
MAX_LISTED_PROBLEMS = 50


def check_input_size(hw: tuple[int, int]) -> None:
    """The model input sizes any recipe accepts (also checked by `sshpe shard`, so no shards are written for a size
    no recipe could train on). Raises ValueError."""
    if min(hw) <= 0 or max(hw) > 2048:
        raise ValueError(f"input_size {list(hw)} must be positive and at most 2048 px")
    if hw[0] % 32 or hw[1] % 32:
        raise ValueError(f"input_size {list(hw)} must be multiples of 32 (stride-32 backbones, stride-4 heatmaps)")


class RecipeError(ValueError):
    """A recipe problem a user can fix; the message names the file, the field and the fix."""


class Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


Duration = Annotated[
    Union[int, str],
    Field(description="a length in optimizer steps (`500`, `500st`) or epochs of the epoch split (`30ep`, `0.5ep`)"),
]


def _check_duration(v: int | str) -> int | str:
    if isinstance(v, int):
        if v < 0:
            raise ValueError("a duration must be >= 0")
        return v
    if not _DURATION.match(v):
        raise ValueError(f"{v!r} is not a duration; write steps as `500` or `500st`, epochs as `30ep`")
    return v


# ---------------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------------


class EasyAffineCfg(Cfg):
    """The easy-view affine of every labeled and unlabeled crop (reference §1.3.4, "A30")."""

    scale_factor: float = Field(0.25, ge=0, lt=1, description="scale ~ clip(1 + f*N(0,1), 1-f, 1+f)")
    rot_factor: float = Field(30.0, ge=0, le=180, description="rotation ~ clip(r*N(0,1), -2r, 2r) degrees")
    rot_prob: float = Field(0.6, ge=0, le=1, description="probability that a crop is rotated at all")
    flip: bool = Field(True, description="horizontal flip with probability 0.5, swapping left/right joints")


class DataCfg(Cfg):
    shards: str = Field(
        description="where the shards of `sshpe shard` are: a local folder holding manifest.json and the tars, or the "
        "same folder uploaded to `http(s)://...`, `s3://...`, `gs://...` (any fsspec URL) or read by `pipe:CMD`, CMD "
        "writing the file `{name}` to stdout (e.g. `pipe:aws s3 cp s3://bucket/shards/{name} -`)"
    )
    labeled_split: str = Field("labeled", description="manifest split used for supervised batches")
    unlabeled_split: str | None = Field(
        "unlabeled", description="manifest split used for unlabeled batches; null for supervised-only training"
    )
    val_split: str = Field("val", description="manifest split used for evaluation")
    input_size: tuple[int, int] = Field(
        (256, 192), description="model input (height, width) in pixels: positive multiples of 32, at most 2048"
    )
    sigma: float = Field(2.0, gt=0, description="Gaussian target sigma in heatmap px (2 at 256x192, 3 at 384x288)")
    color: Literal["rgb", "bgr"] = Field(
        "rgb", description="channel order fed to the network; the reference code feeds BGR (reference §1.3.1)"
    )
    mean: tuple[float, float, float] = Field((0.485, 0.456, 0.406), description="normalisation mean (RGB order)")
    std: tuple[float, float, float] = Field((0.229, 0.224, 0.225), description="normalisation std (RGB order), > 0")
    joint_weights: bool = Field(False, description="use the schema's per-joint loss weights (HRNet option)")
    easy: EasyAffineCfg = Field(default_factory=EasyAffineCfg, description="easy-view affine parameters")
    num_workers: int = Field(
        2, ge=0, le=64, description="DataLoader worker processes per rank (they only decode JPEGs), at most 64"
    )
    decode: Literal["auto", "worker", "device"] = Field(
        "auto",
        description="where canvas JPEGs are decoded: `worker` (DataLoader workers, OpenCV), `device` (the workers "
        "only read bytes; the training device decodes the batch: nvJPEG on CUDA), `auto` (device on CUDA, worker "
        "otherwise)",
    )

    @field_validator("shards", mode="before")
    @classmethod
    def _location(cls, v: Any) -> Any:
        """A path object is kept as its text; a URL keeps its `//` (a `Path` would fold it); `pipe:` needs {name}."""
        v = os.fspath(v) if isinstance(v, os.PathLike) else v
        if isinstance(v, str):
            shard_location(v)
        return v

    @field_validator("input_size")
    @classmethod
    def _stride4(cls, v: tuple[int, int]) -> tuple[int, int]:
        check_input_size(v)
        return v

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(v) <= 0:
            raise ValueError(f"std {list(v)} must be > 0 in every channel (images are divided by it)")
        return v


# ---------------------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------------------


class ModelCfg(Cfg):
    arch: str = Field(
        "resnet18",
        description="resnet18..resnet152 (SimpleBaseline), hrnet_w32/hrnet_w48 (pose HRNet), hrnet_small/hrnet_tiny "
        "(CPU runs, tests), or any timm features_only backbone for the SimpleBaseline head: `convnext_tiny`, "
        "`timm:convnext_tiny`, `timm/convnext_tiny.fb_in1k` or `hf-hub:timm/convnext_tiny.fb_in1k`",
    )
    pretrained: bool = Field(False, description="initialise the backbone from timm ImageNet weights (needs network)")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        """Resolved against sshpe's architectures and timm's registry (no download), with did-you-mean."""
        from sshpe.models.build import ARCHS, resolve_timm_name

        if v not in ARCHS:
            resolve_timm_name(v)
        return v

    head_channels: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(
        (256, 256, 256), description="SimpleBaseline deconv widths, one per 2x (each 1..4096)"
    )
    head_kernel: Literal[2, 3, 4] = Field(4, description="SimpleBaseline deconv kernel size")
    schema_name: Union[str, SchemaFile] = Field(
        "coco17",
        alias="schema",
        description="keypoint schema (sets the head width): a built-in name (coco17, mpii16, aic14, union24), the "
        "path of a schema file (relative to the current directory; read once and stored inline in the run's "
        "recipe.yaml), or an inline schema mapping (docs/keypoint-schemas.md)",
    )
    channels_last: bool = Field(True, description="run convolutions in channels_last memory format")
    init_from: str | None = Field(
        None,
        description="start a new run from these weights (as MMPose's load_from): a checkpoint folder, its "
        "student.safetensors, or a model file from `sshpe export` / `sshpe import-weights`; a final layer with "
        "another keypoint count is re-initialised. The CLI's --init-from wins; ignored when the run resumes",
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    @field_validator("schema_name", mode="before")
    @classmethod
    def _schema_file(cls, v: Any) -> Any:
        """A path is read here (errors name the file and its field) so the run folder never needs the file."""
        if isinstance(v, (str, Path)) and str(v) not in BUILTIN_NAMES:
            if not Path(v).is_file():
                close = difflib.get_close_matches(str(v), BUILTIN_NAMES, n=1)
                raise ValueError(
                    f"{str(v)!r} is neither a built-in schema ({', '.join(BUILTIN_NAMES)}) nor an existing schema "
                    "file (relative paths are read from the current directory)"
                    + (f"; did you mean {close[0]!r}?" if close else "")
                )
            return read_schema_file(v)
        return v


# ---------------------------------------------------------------------------------------------------------------
# teachers
# ---------------------------------------------------------------------------------------------------------------


class NoTeacherCfg(Cfg):
    """Supervised only: no unlabeled loss."""

    kind: Literal["none"] = "none"


class SingleTeacherCfg(Cfg):
    """PoseCons: the live student in train mode teaches itself on the easy view (reference §2.5)."""

    kind: Literal["single"] = "single"


class DualTeacherCfg(Cfg):
    """PoseDual: two students teach each other with crossed targets and crossed joint sources (reference §2.6)."""

    kind: Literal["dual"] = "dual"
    eval_net: Literal["a", "b", "ensemble"] = Field("a", description="network evaluated and exported by default")


class EmaTeacherCfg(Cfg):
    """Mean teacher (EMA of parameters; BN in train mode) or EMAN (EMA of parameters and BN statistics, BN in eval
    mode; reference §6)."""

    kind: Literal["ema", "eman"]
    decay: float = Field(0.999, gt=0, lt=1, description="EMA decay m in t <- m*t + (1-m)*s (Pose-MUM: 0.6 for R18)")
    warmup_steps: Duration = Field(0, description="ramp the decay from `warmup_start` to `decay` over this long")
    warmup_start: float = Field(0.5, ge=0, lt=1, description="decay at step 0 when warming up (MUM: 0.5)")
    schedule: Literal["const", "linear", "cosine"] = Field(
        "const", description="const, MUM's linear ramp, or BYOL's cosine toward 1"
    )
    export: bool = Field(True, description="evaluate and export the teacher instead of the student")

    _d = field_validator("warmup_steps")(_check_duration)


class TripleTeacherCfg(Cfg):
    """SSPCM: two cross-teaching nets plus a third trained on position-corrected ensembles (reference §7)."""

    kind: Literal["triple"] = "triple"
    eval_net: Literal["a", "b", "c"] = Field("c", description="network evaluated and exported (c: the corrected one)")
    score_threshold: float = Field(0.1, ge=0, description="mask joints whose mean teacher maxval is below this")


TeacherCfg = Annotated[
    Union[NoTeacherCfg, SingleTeacherCfg, DualTeacherCfg, EmaTeacherCfg, TripleTeacherCfg],
    Field(discriminator="kind"),
]


# ---------------------------------------------------------------------------------------------------------------
# augmentation paths
# ---------------------------------------------------------------------------------------------------------------


REF_INPUT_HEIGHT = 256  # the reference's op sizes are pixels of its 256x192 input


class _SizedOp(Cfg):
    """An op with pixel sizes that can instead be given as fractions of the input height."""

    unit: Literal["px", "input_frac"] = Field(
        "px",
        description="px: sizes in input pixels (the reference's values at its input size); input_frac: sizes as "
        "fractions of the input height for both axes, so the op covers the same share of any input; omitted sizes "
        "then default to the reference's 256x192 pixel values divided by 256",
    )
    _px_sizes: ClassVar[dict[str, float]] = {}  # size field -> the reference's pixel default

    @model_validator(mode="before")
    @classmethod
    def _fraction_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("unit") == "input_frac":
            return {**{k: v / REF_INPUT_HEIGHT for k, v in cls._px_sizes.items()}, **data}
        return data

    @model_validator(mode="after")
    def _sizes_in_unit(self) -> _SizedOp:
        for name in self._px_sizes:
            v = getattr(self, name)
            if self.unit == "input_frac" and not 0 <= v <= 1:
                raise ValueError(f"{name}={v} with unit=input_frac must be a fraction of the input height in [0, 1]")
            if self.unit == "px" and name.startswith("half") and v != int(v):
                raise ValueError(f"{name}={v} with unit=px must be a whole number of pixels (or use unit=input_frac)")
        return self


class _BoxOp(_SizedOp):
    half_min: int | float = Field(10, gt=0, le=1024, description="smallest box half-extent (in `unit`; px: 1..1024)")
    half_max: int | float = Field(19, gt=0, le=1024, description="largest box half-extent (in `unit`; px: 1..1024)")
    _px_sizes: ClassVar[dict[str, float]] = {"half_min": 10, "half_max": 19}

    @model_validator(mode="after")
    def _extent(self) -> _BoxOp:
        if self.half_min > self.half_max:
            raise ValueError(f"half_min={self.half_min} must be <= half_max={self.half_max}")
        return self


class _JointBoxOp(_BoxOp):
    jitter: float = Field(10.0, ge=0, description="std of the Gaussian jitter added to joint positions (in `unit`)")
    _px_sizes: ClassVar[dict[str, float]] = {"half_min": 10, "half_max": 19, "jitter": 10}


class JointCutoutOp(_JointBoxOp):
    """JC: zero boxes around `num` joints chosen with replacement (reference §2.3)."""

    kind: Literal["joint_cutout"]
    num: int = Field(5, ge=1, le=100, description="joints masked per image (at most 100)")


class JointCutOcclusionOp(_JointBoxOp):
    """JO: paste boxes cut around joints of another image onto joints of this one (reference §3.2)."""

    kind: Literal["joint_cut_occlusion"]
    num: int = Field(2, ge=1, le=100, description="patches pasted per image (at most 100)")


class CutoutOp(_BoxOp):
    """CO: zero random boxes (reference §3.2)."""

    kind: Literal["cutout"]
    holes: int = Field(5, ge=1, le=100, description="boxes per image (at most 100)")


class CutmixOp(_BoxOp):
    """CM: fill random boxes with the same region of another image of the batch (reference §3.2)."""

    kind: Literal["cutmix"]
    holes: int = Field(2, ge=1, le=100, description="boxes per image (at most 100)")


class MixupOp(Cfg):
    """MU: x <- l*x + (1-l)*x[perm], l = 1 - 0.25*Beta(a, a) once per batch; targets unmixed (reference §3.2)."""

    kind: Literal["mixup"]
    alpha: float = Field(0.2, gt=0, description="Beta distribution parameter")


class RandAugmentOp(_SizedOp):
    """RandAugment on the device (reference §2.4): `n` photometric ops at magnitude `magnitude` of 30."""

    kind: Literal["randaugment"]
    n: int = Field(2, ge=1, le=20, description="ops per image (at most 20; each is a pass over the batch)")
    magnitude: float = Field(20.0, ge=0, le=30, description="magnitude on the 0-30 scale")
    cutout_max: float = Field(80.0, ge=0, le=1024, description="side of CutoutAbs's square at magnitude 30 (in `unit`)")
    _px_sizes: ClassVar[dict[str, float]] = {"cutout_max": 80}


OpCfg = Annotated[
    Union[JointCutoutOp, JointCutOcclusionOp, CutoutOp, CutmixOp, MixupOp, RandAugmentOp],
    Field(discriminator="kind"),
]


class PoseMumCfg(Cfg):
    """Pose-MUM's extra feature-level mixing at intermediate encoder stages (reference §5.1)."""

    candidates: tuple[str, ...] = Field(
        ("layer1", "layer2", "layer3"), description="encoder stages after which an extra mix may happen"
    )
    prob: float = Field(0.5, ge=0, le=1, description="probability that each candidate stage mixes (per step)")


class MumCfg(Cfg):
    """MUM tile mixing of the hard view (reference §4, §5)."""

    group: int = Field(4, ge=1, le=1024, description="N_G: images per mixing group; must divide the unlabeled batch")
    grid: tuple[Annotated[int, Field(ge=1, le=64)], Annotated[int, Field(ge=1, le=64)]] = Field(
        (4, 3), description="N_T,h x N_T,w tiles, each 1..64 (4x3 gives 64x64 tiles at 256x192)"
    )
    unmix_after: str = Field("layer4", description="encoder stage after which features are unmixed")
    pose_mum: PoseMumCfg | None = Field(None, description="Pose-MUM extra stochastic mixing; null for plain MUM")


class AugmentCfg(Cfg):
    hard_affine: bool = Field(True, description="apply the second (hard) affine to hard views and teacher targets")
    paths: tuple[tuple[OpCfg, ...], ...] = Field(
        ((),), description="hard-view paths; each is a list of ops applied in order; `[[]]` = affine only"
    )
    path_weights: tuple[float, ...] | None = Field(None, description="loss weight per path (default 1 each)")
    repeat: int = Field(
        1, ge=1, le=16, description="independent draws of every path (MultiAugs repeat mode), at most 16"
    )
    unsup_weight: float = Field(1.0, ge=0, description="weight of the unsupervised loss (reference: 1, no ramp)")
    mum: MumCfg | None = Field(None, description="MUM / Pose-MUM tile mixing of the hard views; null = off")
    reference_quirks: bool = Field(
        False, description="reproduce the reference code's augmentation bugs (docs/reference-parity.md)"
    )

    @model_validator(mode="after")
    def _weights(self) -> AugmentCfg:
        if self.path_weights is not None and len(self.path_weights) != len(self.paths):
            raise ValueError(f"path_weights has {len(self.path_weights)} entries for {len(self.paths)} paths")
        return self


# ---------------------------------------------------------------------------------------------------------------
# optimisation, loop, evaluation, distribution
# ---------------------------------------------------------------------------------------------------------------


class OptimCfg(Cfg):
    name: Literal["adam", "adamw", "sgd"] = Field("adam", description="optimizer")
    lr: float = Field(1e-3, gt=0, description="learning rate (never scaled with the world size, as the reference)")
    weight_decay: float = Field(0.0, ge=0, description="weight decay (the reference passes none to Adam)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    milestones: tuple[Duration, ...] = Field((), description="MultiStepLR milestones")
    gamma: float = Field(0.1, gt=0, description="MultiStepLR factor")
    warmup: Duration = Field(0, description="linear learning-rate warm-up (the reference has none)")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this; null = off")

    _d = field_validator("warmup")(_check_duration)

    @field_validator("milestones")
    @classmethod
    def _ms(cls, v: tuple) -> tuple:
        return tuple(_check_duration(x) for x in v)


class TrainCfg(Cfg):
    batch_size: int = Field(
        32, ge=1, description="labeled samples per device per step (at most the labeled split's size, checked at start)"
    )
    unlabeled_batch_size: int | None = Field(None, ge=1, description="unlabeled samples per device (default: equal)")
    duration: Duration = Field("30ep", description="training length")
    epoch_split: Literal["auto", "labeled", "unlabeled"] = Field(
        "auto", description="split whose size defines an epoch (auto: unlabeled when used, as the reference)"
    )
    grad_accum: int = Field(1, ge=1, le=1024, description="gradient accumulation steps per optimizer step")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="autocast precision for forwards")
    log_every: Duration = Field(20, description="period of metric logging")
    ckpt_every: Duration = Field("1ep", description="period of resumable checkpoints")
    keep_last: int = Field(3, ge=1, description="resumable checkpoints kept")
    eval_every: Duration = Field("1ep", description="period of evaluation; 0 = only at the end")
    progress: bool = Field(
        True, description="show progress on the console: a rich bar on a terminal, plain lines otherwise"
    )
    trackers: tuple[Literal["tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive"], ...] = Field(
        ("tensorboard",),
        description="experiment trackers fed through accelerate (log_with), next to metrics.jsonl and train.log; "
        "tensorboard (under RUN/tb/) is skipped when not installed, the others must be installed",
    )

    @field_validator("trackers")
    @classmethod
    def _installed(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        missing = [n for n in v if n != "tensorboard" and importlib.util.find_spec(n) is None]
        if missing:
            raise ValueError(f"trackers {missing} are not installed here; pip install {' '.join(missing)}")
        return v

    _d = field_validator("duration", "log_every", "ckpt_every", "eval_every")(_check_duration)


class EvalCfg(Cfg):
    batch_size: int = Field(64, ge=1, description="crops per device per evaluation batch")
    flip_test: bool = Field(False, description="average with the flipped prediction (reference semi tables: off)")
    shift_heatmap: bool = Field(
        True,
        description="flip test: true shifts the flipped heatmap one column right (reference default); false "
        "translates it 0.75 px right with bilinear sampling, as the reference's SHIFT_HEATMAP: false (§10.22)",
    )
    decode: Literal["shift", "dark"] = Field("shift", description="heatmap decoding")
    in_vis_thr: float = Field(0.2, ge=0, le=1, description="keypoint score threshold for rescoring")
    oks_nms_thr: float = Field(0.9, ge=0, le=1, description="OKS-NMS threshold (reference semi configs: 0.9)")
    backend: Literal["pycocotools", "faster"] = Field(
        "pycocotools", description="COCOeval implementation: pycocotools, or faster-coco-eval (extra sshpe[fast-eval])"
    )
    reference_quirks: bool = Field(
        False, description="reproduce the reference's evaluation quirks: PCKh Mean@0.1 read at threshold 0.11 (§1.9)"
    )
    keep_best: bool = Field(
        True,
        description="keep the evaluated network with the best validation score (AP; PCKh Mean for MPII) in RUN/best/ "
        "and export it as final/ when it beats the last step (the reference's model_best)",
    )
    all_nets: bool = Field(
        True,
        description="dual/triple teachers: score every network, the dual heatmap ensemble and the mean of the "
        "networks' scores at each evaluation (as MultiAugs reports them); teacher.eval_net selects and exports",
    )


class DistributedCfg(Cfg):
    engine: Literal["ddp", "deepspeed"] = Field("ddp", description="DDP via accelerate, or DeepSpeed ZeRO-1/2")
    zero_stage: Literal[0, 1, 2, 3] = Field(
        2, description="DeepSpeed ZeRO stage; 3 is refused (teachers, eval and export need whole parameters)"
    )
    sync_bn: Literal["auto", "on", "off"] = Field("auto", description="SyncBatchNorm: auto = on for multi-GPU CUDA")
    cpu: bool = Field(False, description="force CPU even when a GPU is present")

    @field_validator("sync_bn", mode="before")
    @classmethod
    def _yaml_bool(cls, v: Any) -> Any:
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v  # YAML reads a bare on/off as bool

    @model_validator(mode="after")
    def _engine(self) -> DistributedCfg:
        """What cannot work whatever the launcher (sshpe.distributed.check_engine repeats these at run time and
        adds the checks that need the device and world size, e.g. multi-process DeepSpeed on CPU)."""
        if self.engine == "deepspeed" and self.cpu:
            raise ValueError(
                "engine=deepspeed with cpu=true: Accelerator(cpu=True) silently drops DeepSpeed; use engine=ddp on "
                "CPU (multi-process CPU DeepSpeed is refused too: accelerate mis-reports ranks there)"
            )
        if self.sync_bn == "on" and self.cpu:
            raise ValueError("sync_bn=on with cpu=true: SyncBatchNorm cannot run on CPU/gloo; use auto or off")
        if self.engine == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
            raise ValueError(
                "engine=deepspeed but DeepSpeed is not installed here; pip install -e '.[deepspeed]' or use engine=ddp"
            )
        return self


class Recipe(Cfg):
    name: str = Field(
        description="run name; the run folder is runs/<name> unless --out is given, so it is one folder name: "
        "letters, digits and _ . + = @ -, not starting with '.' (at most 128 characters)"
    )
    seed: int = Field(0, description="global seed; ranks and workers derive their own from it")
    data: DataCfg
    model: ModelCfg = Field(default_factory=ModelCfg)
    teacher: TeacherCfg = Field(default_factory=NoTeacherCfg, description="teacher kind and its parameters")
    augment: AugmentCfg = Field(default_factory=AugmentCfg)
    optim: OptimCfg = Field(default_factory=OptimCfg)
    train: TrainCfg = Field(default_factory=TrainCfg)
    eval: EvalCfg = Field(default_factory=EvalCfg)
    distributed: DistributedCfg = Field(default_factory=DistributedCfg)

    @field_validator("name")
    @classmethod
    def _one_folder(cls, v: str) -> str:
        if not _RUN_NAME.match(v):
            raise ValueError(
                "a run name must be one folder name inside runs/ (letters, digits, _ . + = @ -; no '/', no leading "
                "'.'); pass --out to put the run folder elsewhere"
            )
        return v

    @model_validator(mode="after")
    def _cross_field(self) -> Recipe:
        semi = self.teacher.kind != "none"
        if semi and self.data.unlabeled_split is None:
            raise ValueError(f"teacher.kind={self.teacher.kind!r} needs data.unlabeled_split (got null)")
        mum = self.augment.mum
        if mum is not None:
            ub = self.train.unlabeled_batch_size or self.train.batch_size
            if ub % mum.group:
                raise ValueError(
                    f"augment.mum.group={mum.group} must divide the unlabeled batch size {ub} "
                    "(train.unlabeled_batch_size or train.batch_size)"
                )
            from sshpe.models.build import encoder_stages
            from sshpe.nets import check_mix_stages

            check_mix_stages(mum, self.model.arch, list(encoder_stages(self.model.arch)))
        if self.distributed.engine == "deepspeed" and self.distributed.zero_stage == 3:
            needs = f"the {self.teacher.kind} teacher, " if self.teacher.kind in ("ema", "eman", "triple") else ""
            raise ValueError(
                f"distributed.zero_stage=3 partitions parameters, but {needs}evaluation and the fp32 checkpoint "
                "export need whole parameters (an EMA/EMAN teacher cannot be held); use zero_stage 1 or 2"
            )
        return self

    @property
    def schema(self) -> KeypointSchema:
        """The model's keypoint schema (its channels)."""
        return resolve_schema(self.model.schema_name)

    def hash(self) -> str:
        """Short content hash of the resolved recipe (goes into exported metadata)."""
        blob = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------------------


def parse_duration(value: int | str, steps_per_epoch: int) -> int:
    """Convert a validated duration to optimizer steps (epochs rounded up)."""
    if isinstance(value, int):
        return value
    num, unit = _DURATION.match(value).groups()
    if unit.startswith("ep"):
        return int(math.ceil(float(num) * steps_per_epoch))
    if "." in num:
        raise RecipeError(f"{value!r}: steps must be whole numbers")
    return int(num)


def apply_overrides(raw: dict, overrides: list[str], origin: str) -> dict:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to the raw dict before validation."""
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"{origin}: --set {quoted(item)} must look like `section.field=value`")
        path, value = item.split("=", 1)
        keys = path.strip().split(".")
        if not all(keys):
            raise RecipeError(f"{origin}: --set {quoted(item)}: {quoted(path)} is not a field path like train.lr")
        node: Any = raw
        for i, key in enumerate(keys[:-1]):
            if isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            elif isinstance(node, dict):
                node = node.setdefault(key, {})
            else:
                raise RecipeError(f"{origin}: --set {quoted(item)}: {'.'.join(keys[: i + 1])} is not a section")
        last = keys[-1]
        parsed = parse_yaml(value, f"{origin}: --set {quoted(item)}") if value.strip() else None
        if isinstance(node, list) and last.isdigit() and int(last) < len(node):
            node[int(last)] = parsed
        elif isinstance(node, dict):
            node[last] = parsed
        else:
            raise RecipeError(f"{origin}: --set {quoted(item)}: {'.'.join(keys[:-1])} is not a section")
    return raw


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader refusing, while composing and before anything is built, documents nested deeper than
    MAX_YAML_DEPTH or whose aliases expand to more than MAX_YAML_VALUES values ("billion laughs")."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values under it with aliases expanded

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels (a recipe needs about 6)", mark
                )
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if id(node) not in self._sizes:
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = node.value if isinstance(node, yaml.SequenceNode) else []
            size = 1 + sum(self._sizes.get(id(c), 1) for c in children)
            if size > MAX_YAML_VALUES:
                raise yaml.composer.ComposerError(
                    None, None, f"aliases expand to more than {MAX_YAML_VALUES} values (a YAML bomb?); write the "
                    "values out", node.start_mark
                )  # fmt: skip
            self._sizes[id(node)] = size
        return node


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML text with `_BoundedLoader`; any problem is one RecipeError line starting with `where`."""
    loader = None
    try:
        loader = _BoundedLoader(text)  # its reader already refuses control characters (yaml.ReaderError)
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(p) for p in (e.context, e.problem) if p)
        raise RecipeError(f"{where}: not valid YAML{at}: {problem}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{where}: not valid YAML: {quoted(str(e), 200)}") from None
    except RecursionError:
        raise RecipeError(f"{where}: not valid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _unwrap(ann: Any) -> list[Any]:
    """Flatten Annotated/Union/Optional/tuple annotations into the member types they can hold."""
    args = getattr(ann, "__args__", None)
    if getattr(ann, "__metadata__", None) is not None:  # Annotated[X, ...]
        return _unwrap(ann.__origin__)
    if args is None:
        return [ann]
    return [t for a in args if a is not Ellipsis and a is not type(None) for t in _unwrap(a)]


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the last element of an error location (for did-you-mean)."""
    candidates: list[Any] = [Recipe]
    for part in loc[:-1]:
        models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if isinstance(part, int):
            continue  # list/tuple index: the member types are already the candidates
        tagged = [m for m in models if "kind" in m.model_fields and part in _unwrap(m.model_fields["kind"].annotation)]
        if tagged:
            candidates = tagged
            continue
        nxt: list[Any] = []
        for m in models:
            fields = {f.alias or n: f for n, f in m.model_fields.items()} | dict(m.model_fields)
            if part in fields:
                nxt += _unwrap(fields[part].annotation)
        candidates = nxt
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return models[0] if len(models) == 1 else None


def _format_error(err: dict, origin: str) -> str:
    shown = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p in _TAGS or p.startswith("function-"))))
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in shown).lstrip(".") or "<top>"
    where = where if len(where) <= 200 else quoted(where, 200)
    kind, msg, got, ctx = err["type"], err["msg"], err.get("input"), err.get("ctx", {})
    if kind == "extra_forbidden":
        owner = _model_at(err["loc"])
        names = sorted((f.alias or n) for n, f in owner.model_fields.items()) if owner else []
        close = difflib.get_close_matches(str(shown[-1])[:100], names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"{origin}: {where}: unknown field" + (f"; allowed: {names}" if names else "") + hint
    if kind in ("literal_error", "union_tag_invalid"):
        expected = re.findall(r"'([^']+)'", ctx.get("expected", "") or ctx.get("expected_tags", ""))
        got = got if kind == "literal_error" else ctx.get("tag")
        close = difflib.get_close_matches(str(got)[:100], expected, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        field = where + (".kind" if kind == "union_tag_invalid" else "")
        return f"{origin}: {field}: {quoted(got)} is not one of {expected}{hint}"
    if kind == "union_tag_not_found":
        return f"{origin}: {where}: needs a `kind` field"
    if kind == "missing":
        return f"{origin}: {where}: required field is missing"
    msg = msg.removeprefix("Value error, ")
    return f"{origin}: {msg}" if not shown else f"{origin}: {where}: {msg} (got {quoted(got)})"


_TAGS = {"joint_cutout", "joint_cut_occlusion", "cutout", "cutmix", "mixup", "randaugment"} | {
    "none", "single", "dual", "ema", "eman", "triple",
}  # fmt: skip


def validate_recipe(raw: Any, origin: str = "<recipe>") -> Recipe:
    """Validate a raw dict; raises RecipeError listing every problem."""
    if not isinstance(raw, dict):
        raise RecipeError(f"{origin}: a recipe is a YAML mapping at the top level, got {type(raw).__name__}")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        lines = list(dict.fromkeys(_format_error(err, origin) for err in e.errors(include_url=False)))
        if len(lines) > MAX_LISTED_PROBLEMS:
            lines = lines[:MAX_LISTED_PROBLEMS] + [
                f"{origin}: ... and {len(lines) - MAX_LISTED_PROBLEMS} more problems"
            ]
        raise RecipeError("\n".join(lines)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML, apply `--set` overrides to the raw mapping, then validate strictly.

    Relative `data.shards` paths are resolved against the current working directory (as typed on the CLI).
    """
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: {path.stat().st_size} bytes is too large for a recipe (at most 1 MiB)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RecipeError(
            f"{path}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); save the recipe as UTF-8"
        ) from None
    raw = parse_yaml(text, str(path)) or {}
    if overrides:
        raw = apply_overrides(raw, list(overrides), str(path))
    return validate_recipe(raw, str(path))


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML (written into every run folder)."""
    return yaml.safe_dump(recipe.model_dump(mode="json", by_alias=True), sort_keys=False)


# Fields a resumed run may change: none of them changes what the network is trained on or how (issue 14). The
# whole `eval` section only changes how the network is scored; `data.shards` may move with the data; `distributed`
# follows the machine (a checkpoint from another world size or engine is resumed weights-only).
RESUME_SAFE_FIELDS = (
    "name", "data.shards", "train.duration", "train.log_every", "train.ckpt_every", "train.eval_every",
    "train.keep_last", "train.progress", "train.trackers",
)  # fmt: skip
RESUME_SAFE_SECTIONS = ("eval.", "distributed.")  # another world size or engine resumes weights-only (checkpoint.py)


def flat_fields(tree: Any, sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """Leaves of a nested mapping (a recipe's `model_dump`) keyed by their path joined with `sep`; lists are leaves."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in flat_fields(sub, sep, f"{prefix}{key}{sep}").items()}
    return {prefix[: -len(sep)]: tree}


def recipe_changes(old: Recipe, new: Recipe) -> dict[str, tuple[Any, Any]]:
    """Leaf fields (dotted paths; lists are leaves) whose resolved values differ: {field: (old, new)}."""
    a = flat_fields(old.model_dump(mode="json", by_alias=True))
    b = flat_fields(new.model_dump(mode="json", by_alias=True))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume_recipe(stored: Recipe, recipe: Recipe, where: Path) -> list[str]:
    """Compare the recipe a run folder was trained with (`where`, its recipe.yaml) with the one resuming it.

    Returns:
        One note per allowed change (`RESUME_SAFE_FIELDS`, the `eval` section).

    Raises:
        RecipeError: any other field differs; lists every such field with both values and what to do.
    """
    changes = recipe_changes(stored, recipe)
    safe = lambda k: k in RESUME_SAFE_FIELDS or k.startswith(RESUME_SAFE_SECTIONS)  # noqa: E731
    refused = {k: v for k, v in changes.items() if not safe(k)}
    if refused:
        diff = "; ".join(f"{k}: {quoted(a, 40)} -> {quoted(b, 40)}" for k, (a, b) in list(refused.items())[:20])
        raise RecipeError(
            f"{where} was trained with another recipe ({diff}); resuming would mix two recipes in one run. Train "
            "into a new folder (--out runs/NEW), or undo the change. Only the duration, the log/checkpoint/eval "
            "periods, keep_last, progress, trackers, the eval and distributed sections and data.shards may change on "
            "resume"
        )
    return [f"resuming with {k}: {quoted(a, 40)} -> {quoted(b, 40)}" for k, (a, b) in changes.items()]
