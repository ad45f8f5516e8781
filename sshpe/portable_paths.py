"""Paths that survive moving folders: stored absolute and relative to a base folder, found again absolute first,
then relative. Used by run folders (`paths.json`, written when training starts) and shard manifests (`sources`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sshpe.atomic import atomic_write_text
from sshpe.data.locations import shard_location

RUN_PATHS = "paths.json"
RUN_PATHS_FORMAT = "sshpe-run-paths/1"


def portable(path: Path, base: Path) -> dict[str, str]:
    """`{"path": absolute, "relative": relative to base}` for a file or folder (symlinks resolved)."""
    target = Path(path).resolve()
    return {"path": str(target), "relative": os.path.relpath(target, Path(base).resolve())}


def candidates(entry: dict, base: Path) -> list[Path]:
    """Where a stored entry may be now: its absolute path, then its relative path under `base` (when stored)."""
    found = [Path(entry["path"])]
    if entry.get("relative"):
        found.append((Path(base) / entry["relative"]).resolve())
    return found


def first_existing(paths: list[Path], what: str, hint: str) -> Path:
    """The first of `paths` that exists; else an error naming every path tried and `hint` (what to do)."""
    for p in paths:
        if p.exists():
            return p
    tried = " nor ".join(str(p) for p in dict.fromkeys(paths))
    raise FileNotFoundError(f"{what} not found at {tried}; {hint}")


def write_run_paths(run_dir: Path, shards: str | Path, val_annotations: Path) -> Path:
    """Store where a run's data lives (shard folder, val ground truth), absolute and relative to the run folder, in
    `run_dir/paths.json`, so `sshpe eval RUN` works from any working directory and after moving runs/ and the data
    together. Remote shards (a URL or `pipe:` command, `sshpe.data.locations`) are stored as given, never rewritten."""
    doc = {
        "format": RUN_PATHS_FORMAT,
        "shards": {"path": str(shards)} if shard_location(shards).is_remote else portable(shards, run_dir),
        "val_annotations": portable(val_annotations, run_dir),
    }
    return atomic_write_text(Path(run_dir) / RUN_PATHS, json.dumps(doc, indent=1) + "\n")


def read_run_paths(run_dir: Path) -> dict[str, dict] | None:
    """The entries of `run_dir/paths.json` ({"shards": entry, "val_annotations": entry}); None for run folders
    written before sshpe stored them."""
    path = Path(run_dir) / RUN_PATHS
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); delete it and pass --set data.shards=SHARD_DIR") from None
    if not isinstance(doc, dict) or doc.get("format") != RUN_PATHS_FORMAT:
        raise ValueError(f"{path} is not an {RUN_PATHS_FORMAT} file; delete it and pass --set data.shards=SHARD_DIR")
    for key in ("shards", "val_annotations"):
        if not isinstance(doc.get(key), dict) or not isinstance(doc[key].get("path"), str):
            raise ValueError(f"{path}: {key} is missing or has no 'path'; delete it and pass --set data.shards=...")
    return doc
