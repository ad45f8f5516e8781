"""Run folders and checkpoints: atomic writes, completeness markers, keep-last-K, auto-resume (exact or weights-only).

Layout of a run folder::

    runs/<name>/recipe.yaml            the resolved recipe
    runs/<name>/metrics.jsonl          one JSON object per logged step / evaluation
    runs/<name>/checkpoints/step-000200/
        accelerate save_state files    exact resume on the same topology (DDP: model.safetensors + optimizer.bin;
                                       DeepSpeed: pytorch_model/ ZeRO shards), RNG states
        student.safetensors            consolidated fp32 `PoseNets` container (all networks, BN buffers), metadata
        teacher.safetensors            the EMA/EMAN/SSPCM teacher container, same format (when the recipe has one)
        trainer_state.json             step, world size, engine, ZeRO stage, precision, recipe hash
        COMPLETE                       written last
    runs/<name>/final/                 model.safetensors (exported eval network) + eval results

Two layers (ECOSYSTEM_NOTES 1.6): `save_state` resumes bit-exactly on the same world size and engine; the
safetensors pair resumes "weights-only" (fresh optimizer, step count kept) on any world size or engine.

A checkpoint is written under `step-XXXXXX.tmp`, fsynced (files, then the folder), given its COMPLETE marker
(fsynced too) and renamed; old ones are renamed to `step-XXXXXX.old` before deletion. Neither name matches
`step-XXXXXX`, so a run killed (or a machine losing power) at any instant never leaves a folder that auto-resume
would pick. Auto-resume still checks that every file of the checkpoint it picks loads (`verify_checkpoint`) and
falls back to the previous complete one, with a warning naming the bad file, when one does not. One process
writes a run folder at a time (`sshpe.run_lock`). Test hook: with the environment variable
`SSHPE_TEST_KILL_IN_CHECKPOINT=<step>`, rank 0 SIGKILLs itself while writing that step's checkpoint, after the
accelerate state and student.safetensors and before the marker (tests/test_kill_resume.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sshpe.atomic import honour_umask
from sshpe.durable import fsync_path, fsync_tree
from sshpe.errors import is_disk_full, quoted
from sshpe.export import FORMAT as MODEL_FORMAT
from sshpe.export import WeightsFileError, fp32_state, model_metadata, read_safetensors

COMPLETE = "COMPLETE"
STUDENT = "student.safetensors"
TEACHER = "teacher.safetensors"
TRAINER_STATE = "trainer_state.json"
FORMAT = "sshpe-checkpoint/1"
TOPOLOGY_KEYS = ("world_size", "engine", "zero_stage")
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save files (optimizer.bin, random_states_*.pkl, DeepSpeed *.pt)


class CheckpointError(ValueError):
    """A run folder / checkpoint problem a user can fix; the message says how."""


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def complete_checkpoints(ckpt_root: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first; torn, temp or half-deleted folders are ignored."""
    if not ckpt_root.is_dir():
        return []
    found = []
    for d in ckpt_root.iterdir():
        m = _STEP_DIR.match(d.name)
        if m and d.is_dir() and (d / COMPLETE).is_file():
            found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    found = complete_checkpoints(ckpt_root)
    return found[-1][1] if found else None


def _weights_metadata(recipe, network: str, num_nets: int, step: int) -> dict[str, str]:
    return model_metadata(recipe, network) | {
        "format": FORMAT, "container": "PoseNets", "num_nets": str(num_nets), "step": str(step),
    }  # fmt: skip


def save_checkpoint(
    accelerator, ckpt_root: Path, step: int, student, teacher: torch.nn.Module | None, recipe, keep_last: int
) -> Path:
    """Save both checkpoint layers for `step` (every rank must call this; rank 0 writes files, finalises, prunes).

    Args:
        student: the prepared (DDP/DeepSpeed-wrapped) student container; its state is consolidated to fp32.
        teacher: the plain teacher container or None. BN buffers must already be synchronised across ranks.

    Raises:
        CheckpointError: the disk filled up while writing (the half-written checkpoint is removed; the earlier
            ones are untouched).
    """
    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / (step_dir_name(step) + ".tmp")
    if accelerator.is_main_process:
        for stale in [*ckpt_root.glob("step-*.tmp"), *ckpt_root.glob("step-*.old")]:
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        _write_checkpoint(accelerator, tmp, step, student, teacher, recipe)
    except Exception as err:
        if accelerator.is_main_process and _disk_full(err, ckpt_root):
            shutil.rmtree(tmp, ignore_errors=True)
            free = shutil.disk_usage(ckpt_root).free / 2**20
            raise CheckpointError(
                f"checkpoint {final} could not be written: the disk is full ({free:.0f} MiB free now); the earlier "
                f"checkpoints in {ckpt_root} are intact. Free some space (or lower train.keep_last) and run "
                "`sshpe train` again to resume"
            ) from None
        raise
    if accelerator.is_main_process:
        (tmp / COMPLETE).write_text("ok\n")
        fsync_path(tmp / COMPLETE)
        fsync_path(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_path(ckpt_root)
        older = [c for c in complete_checkpoints(ckpt_root) if c[0] <= step]  # never count torn newer ones
        for s, old in older[:-keep_last]:
            doomed = old.with_name(step_dir_name(s) + ".old")
            os.replace(old, doomed)  # stop matching first, then delete (a kill mid-rmtree leaves no torn step-*)
            shutil.rmtree(doomed, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _write_checkpoint(accelerator, tmp: Path, step: int, student, teacher, recipe) -> None:
    """Every file of a checkpoint but the COMPLETE marker, written into `tmp` and fsynced."""
    from sshpe.distributed import engine_info

    accelerator.save_state(str(tmp), safe_serialization=True)
    state = accelerator.get_state_dict(student)  # collective under DeepSpeed; full fp32 for ZeRO-1/2
    accelerator.wait_for_everyone()  # every rank's files (RNG states, ZeRO shards) are in `tmp`
    if not accelerator.is_main_process:
        return
    num_nets = len(accelerator.unwrap_model(student).nets)
    save_file(fp32_state(state), str(tmp / STUDENT), metadata=_weights_metadata(recipe, "student", num_nets, step))
    if os.environ.get("SSHPE_TEST_KILL_IN_CHECKPOINT") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)  # test hook (module docstring): die with a torn temp folder
    if teacher is not None:
        meta = _weights_metadata(recipe, "teacher", len(teacher.nets), step)
        save_file(fp32_state(teacher.state_dict()), str(tmp / TEACHER), metadata=meta)
    info = {"step": step, **engine_info(accelerator), "mixed_precision": recipe.train.mixed_precision,
            "grad_accum": recipe.train.grad_accum, "recipe_hash": recipe.hash()}  # fmt: skip
    (tmp / TRAINER_STATE).write_text(json.dumps(info, indent=1))
    _share_model_file(tmp)
    honour_umask(tmp)  # accelerate's and our safetensors files are created 0600
    fsync_tree(tmp)


ACCELERATE_MODEL = "model.safetensors"  # accelerate's save_state copy of the prepared (DDP) model


def _share_model_file(folder: Path) -> None:
    """Store the weights once: under DDP, accelerate's model.safetensors holds exactly the tensors of
    student.safetensors (same names, dtypes and shapes; only our metadata differs), so it becomes a hard link to
    student.safetensors (accelerate's `load_state` reads the tensors and ignores metadata). DeepSpeed checkpoints
    (ZeRO shards instead of model.safetensors), other layouts and file systems without hard links keep both."""
    theirs, ours = folder / ACCELERATE_MODEL, folder / STUDENT
    if not theirs.is_file() or _tensor_layout(theirs) != _tensor_layout(ours):
        return
    linked = folder / f".{ACCELERATE_MODEL}.link"
    try:
        os.link(ours, linked)
    except OSError:
        return
    os.replace(linked, theirs)


def _tensor_layout(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{name: (dtype, shape)} from a safetensors header (no tensor data read)."""
    with safe_open(str(path), framework="pt") as f:
        return {k: (str(f.get_slice(k).get_dtype()), tuple(f.get_slice(k).get_shape())) for k in f.keys()}


def _disk_full(err: BaseException, where: Path) -> bool:
    """True when a failed write was the disk filling up: an ENOSPC/EDQUOT error, or the errors torch and
    safetensors raise instead ("file write failed", "No space left") while the disk has almost no space left."""
    if is_disk_full(err):
        return True
    text = str(err)
    wrote = any(s in text for s in ("No space left", "file write failed", "write failed", "inline_container"))
    return wrote and shutil.disk_usage(where).free < 256 * 2**20


def read_trainer_state(path: Path) -> dict:
    """trainer_state.json of a checkpoint folder (or of the folder holding a weights file); {} when absent.

    Raises:
        CheckpointError: the file is not a JSON object with an integer `step` (e.g. truncated); names the file.
    """
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    f = folder / TRAINER_STATE
    if not f.is_file():
        return {}
    try:
        state = json.loads(f.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{f} is not valid JSON ({err}); the checkpoint is damaged, use another one") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or isinstance(state["step"], bool):
        raise CheckpointError(f"{f} has no integer 'step'; the checkpoint is damaged, use another one")
    return state


def verify_checkpoint(path: Path) -> None:
    """Check that a checkpoint folder is complete and every file in it loads; the one place that decides whether
    a checkpoint can be resumed, exported or evaluated (extend it when the layout changes).

    Checks: the COMPLETE marker; trainer_state.json parses with an integer step; every `*.safetensors` file reads
    completely; every torch zip file (optimizer.bin, random_states_*.pkl, DeepSpeed `*.pt`) has intact members
    (CRC-checked, nothing is unpickled); every other file is non-empty.

    Raises:
        CheckpointError: naming the checkpoint, the first bad file and what to do.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder (step-XXXXXX/ under a run's checkpoints/)")
    if not (path / COMPLETE).is_file():
        raise CheckpointError(
            f"{path} is not a complete checkpoint (no {COMPLETE} marker: its write was interrupted); pick another one"
        )
    read_trainer_state(path)
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        problem = _file_problem(f)
        if problem is not None:
            raise CheckpointError(f"checkpoint {path}: {f.name} {problem}; use an earlier checkpoint")


def _file_problem(f: Path) -> str | None:
    if f.stat().st_size == 0 and f.name != COMPLETE:
        return "is empty"
    if f.suffix == ".safetensors":
        try:
            read_safetensors(f)
        except WeightsFileError:
            return "is truncated or corrupt (safetensors does not load)"
        return None
    with f.open("rb") as fh:
        magic = fh.read(4)
    if magic == _ZIP_MAGIC:
        try:
            with zipfile.ZipFile(f) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            return f"is truncated or corrupt ({err})"
        if bad is not None:
            return f"is corrupt (member {bad} fails its CRC)"
    return None


def loadable_checkpoint(ckpt_root: Path) -> tuple[Path | None, list[str]]:
    """The newest complete checkpoint whose files all load, and one warning per newer one skipped.

    Returns:
        (path or None when the run has no loadable checkpoint, warnings naming each skipped checkpoint's bad file).
    """
    warnings = []
    for _step, path in reversed(complete_checkpoints(ckpt_root)):
        try:
            verify_checkpoint(path)
        except CheckpointError as err:
            warnings.append(f"warning: skipping {err}")
            continue
        return path, warnings
    return None, warnings


def load_checkpoint(accelerator, path: Path, teacher: torch.nn.Module | None) -> int:
    """Exact resume: restore model/optimizer/RNG (and the teacher) from a complete checkpoint written on the same
    topology; returns the step to continue from."""
    if not (path / COMPLETE).is_file():  # `plan_resume` verified every file already
        raise CheckpointError(f"{path} is not a complete checkpoint (no {COMPLETE} marker); pick another one")
    try:
        accelerator.load_state(str(path))
        if teacher is not None:
            state, _ = _read_weights(path / TEACHER)
            teacher.load_state_dict(state)
    except RuntimeError as err:  # shapes or keys that do not fit (the recipe's model changed)
        raise CheckpointError(
            f"{path} does not fit this recipe's model ({str(err).strip().splitlines()[0][:160]}); resume with the "
            "recipe that wrote it, or pass another --out"
        ) from None
    return int(read_trainer_state(path)["step"])


@dataclass(frozen=True)
class ResumePlan:
    """How `fit` starts: from `path` exactly (accelerate load_state after prepare) or weights-only (safetensors
    before prepare, fresh optimizer). `message` is the log text that says which and why (with a warning line per
    newer checkpoint that was skipped because it does not load)."""

    path: Path
    exact: bool
    message: str


def plan_resume(ckpt_root: Path, resume: bool | Path, init_from: Path | None, current: dict) -> ResumePlan | None:
    """Decide where training starts.

    Args:
        ckpt_root: the run's checkpoints folder.
        resume: True = the newest complete checkpoint of the run whose files load (newer ones that do not load are
            skipped with a warning), a Path = that checkpoint (it must load), False = fresh (refused when the run
            already has checkpoints).
        init_from: weights-only start (checkpoint folder or a student .safetensors) used when the run has no
            checkpoint of its own; the step count continues when a trainer_state.json lies next to it.
        current: `sshpe.distributed.engine_info` of this run; a checkpoint from another world size / engine /
            ZeRO stage is resumed weights-only (ZeRO shards cannot be re-partitioned, ECOSYSTEM_NOTES 1.6).

    Raises:
        CheckpointError: the run has checkpoints but none loads, or the checkpoint asked for does not load.
    """
    warnings: list[str] = []
    if resume is False:
        if latest_checkpoint(ckpt_root) is not None:
            raise CheckpointError(f"{ckpt_root.parent} already has checkpoints; pass --resume or choose another --out")
        path = None
    elif isinstance(resume, (str, Path)):
        path = Path(resume)
        verify_checkpoint(path)
    else:
        path, warnings = loadable_checkpoint(ckpt_root)
        if path is None and warnings:
            raise CheckpointError(
                "no checkpoint of this run loads:\n" + "\n".join(warnings) + f"\nmove {ckpt_root} away to start fresh"
            )
    if path is None:
        if init_from is None:
            return None
        init_from = Path(init_from)
        if init_from.is_dir():
            verify_checkpoint(init_from)
        return ResumePlan(init_from, False, f"initialised weights from {init_from} (weights only, fresh optimizer)")
    saved = read_trainer_state(path)
    differs = {k: (saved[k], current[k]) for k in TOPOLOGY_KEYS if k in saved and saved[k] != current[k]}
    if not differs:
        return ResumePlan(path, True, "\n".join([*warnings, f"resumed from {path} at step {saved.get('step')}"]))
    what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in differs.items())
    return ResumePlan(
        path, False,
        "\n".join([*warnings, f"resuming weights only from {path / STUDENT} at step {saved.get('step')} ({what}: "
                   "exact resume needs the same world size and engine); the optimizer state starts fresh and the "
                   "data order differs"]),
    )  # fmt: skip


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and metadata of a checkpoint's safetensors file; a torn file is a CheckpointError naming it."""
    try:
        return read_safetensors(path)
    except WeightsFileError as err:
        raise CheckpointError(str(err)) from None


def load_weights(path: Path, nets: torch.nn.Module, notes: list[str] | None = None) -> int:
    """Weights-only start: load weights into a fresh student container (before `prepare`).

    Args:
        path: a checkpoint folder (its student.safetensors), a .safetensors container written by `save_checkpoint`,
            or a single-network model file (`sshpe export`, `sshpe import-weights`), which seeds every network of
            the container. A final layer whose keypoint count differs from the recipe's (say COCO-17 weights for
            a union24 or a custom head) keeps its fresh initialisation.
        nets: the freshly built `PoseNets` student container.
        notes: receives one line per adaptation made (head re-initialised, one network copied to several).

    Returns:
        The step to continue from: trainer_state.json's step next to a checkpoint's weights, else 0.
    """
    path = Path(path)
    file = path / STUDENT if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"{file}: no weights; --init-from takes a checkpoint folder (step-XXXXXX/), its {STUDENT}, or a model "
            "file from `sshpe export` / `sshpe import-weights`"
        )
    state, meta = _read_weights(file)
    notes = [] if notes is None else notes
    if meta.get("format") == MODEL_FORMAT:
        n = len(nets.nets)
        state = {f"nets.{i}.{k}": v for i in range(n) for k, v in state.items()}
        if n > 1:
            notes.append(f"{file} holds one network; all {n} networks of the container start from it")
    elif meta.get("format") != FORMAT:
        raise ValueError(
            f"{file}: not an sshpe checkpoint container or model file (metadata format {quoted(meta.get('format'))}, "
            f"expected {FORMAT!r} or {MODEL_FORMAT!r}); convert official weights with `sshpe import-weights`"
        )
    state, dropped = _fit_head(state, nets.state_dict(), meta, file, notes)
    try:
        missing, unexpected = nets.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches raise even when strict=False
        raise ValueError(
            f"{file} does not fit this recipe's model (arch {quoted(meta.get('arch'))}): "
            f"{str(err).strip().splitlines()[-1][:160]}; use a recipe with the same model and teacher kind"
        ) from None
    missing = [k for k in missing if k not in dropped]
    if missing or unexpected:
        raise ValueError(
            f"{file} does not fit this recipe's model (arch {meta.get('arch')}, {meta.get('num_nets', 1)} network(s)): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}; use a recipe with the same model and teacher kind"
        )
    return int(read_trainer_state(path).get("step", 0)) if meta.get("format") == FORMAT else 0


def _fit_head(state: dict, own: dict, meta: dict, file: Path, notes: list[str]) -> tuple[dict, set[str]]:
    """Drop the final-layer tensors whose keypoint count differs from the model's (they keep their fresh init);
    any other shape difference is left for `load_state_dict` to report. Returns the state and the dropped keys."""
    k_file = int(meta.get("num_joints", -1))
    differ = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    head = [k for k in differ if state[k].shape[0] == k_file and state[k].shape[1:] == own[k].shape[1:]]
    if not head or len(head) != len(differ):
        return state, set()
    k_model = own[head[0]].shape[0]
    notes.append(
        f"{file}: {k_file} keypoints, the recipe's head has {k_model}: the final layer ({len(head)} tensors) is "
        "re-initialised, every other weight is loaded"
    )
    return {k: v for k, v in state.items() if k not in head}, set(head)


def load_teacher_weights(path: Path, teacher: torch.nn.Module | None) -> bool:
    """Weights-only start of a teacher from teacher.safetensors beside `path`; False (teacher kept as the copy of
    the loaded student) when there is none."""
    path = Path(path)
    file = (path if path.is_dir() else path.parent) / TEACHER
    if teacher is None or not file.is_file():
        return False
    try:
        teacher.load_state_dict(_read_weights(file)[0])
    except RuntimeError as err:
        raise ValueError(
            f"{file} does not fit this recipe's teacher ({str(err).strip().splitlines()[-1][:160]})"
        ) from None
    return True
