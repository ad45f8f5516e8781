"""A shard folder written as one transaction (shards/README.md, "Writes").

Every split and the manifest are staged in a private folder beside the output and swapped into place at once
(`renameat2(RENAME_EXCHANGE)`; elsewhere two renames with recovery), so a failure or a kill at any instant leaves
either the previous folder exactly as it was or the complete new one. Splits of the previous manifest that a run
does not write are dropped (`sshpe shard`) or carried over by hard link (`keep_other_splits`), never kept silently.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from sshpe import geometry
from sshpe.data.readers.coco import Instance
from sshpe.data.shard_writer import (
    MANIFEST_NAME,
    check_compatible,
    check_name,
    manifest_dict,
    read_manifest,
    source_entry,
    write_manifest,
    write_split,
)  # fmt: skip
from sshpe.durable import exchange_paths, fsync_path, fsync_tree
from sshpe.errors import describe_os_error
from sshpe.schema import KeypointSchema

_STAGING, _PREVIOUS = "staging", "previous"
_OURS = re.compile(r"^(manifest\.json|[A-Za-z0-9_]+-[A-Za-z0-9_]+-\d{6}\.tar|\..+\.partial)$")  # incl. old temps


class ShardWriteError(ValueError):
    """Writing a shard folder failed (disk full, read-only, ...); nothing was committed."""


@dataclass(frozen=True)
class FolderResult:
    """What one transaction did.

    Attributes:
        splits: every split now in the folder -> its manifest entry (count, shards, skipped by reason).
        written: the splits this run wrote.
        kept: splits of the previous manifest carried over unchanged (`keep_other_splits`).
        removed: splits of the previous manifest that are gone (this run did not write them).
    """

    splits: dict[str, dict]
    written: tuple[str, ...]
    kept: tuple[str, ...]
    removed: tuple[str, ...]


def write_shard_folder(
    out_dir: Path,
    splits: dict[str, tuple[list[Instance], dict[str, int]]],
    *,
    dataset: str,
    schema: KeypointSchema,
    input_hw: tuple[int, int],
    sources: dict[str, Path],
    keep_other_splits: bool = False,
    shard_size: int = 1000,
    jpeg_quality: int = 95,
    workers: int = 0,
    skip_invalid: bool = False,
    progress: bool = True,
) -> FolderResult:
    """Write `splits` and the manifest into `out_dir` as one transaction.

    Args:
        out_dir: the shard folder; new, empty, or an earlier shard folder of the same dataset, input size and
            schema (a folder holding files that are not shards is refused).
        splits: split name -> (instances in storage order, invalid annotations already skipped by reason).
        dataset, schema, input_hw: as in the manifest.
        sources: name -> file the shards came from (stored with sha256).
        keep_other_splits: carry over the previous manifest's other splits and sources (hard links) instead of
            dropping them.
        shard_size, jpeg_quality, workers, skip_invalid, progress: as in `write_split`.

    Returns:
        What the folder holds now and what happened to the previous splits.
    """
    for name, what in [(dataset, "dataset name"), *((split, "split name") for split in splits)]:
        check_name(name, what)
    out = Path(out_dir).absolute()
    out = out.parent.resolve() / out.name  # staging must sit on the same file system as the real folder
    _recover(out)
    canvas = geometry.canvas_side(input_hw)
    old = _previous_manifest(out, strict=keep_other_splits)
    if old is not None:
        check_compatible(old, out / MANIFEST_NAME, dataset=dataset, input_hw=input_hw, canvas=canvas, schema=schema)
    staging = _sibling(out, _STAGING, os.getpid())
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        entries = {}
        for split, (instances, skipped) in splits.items():
            entry = write_split(instances, staging, dataset=dataset, split=split, canvas=canvas,
                                shard_size=shard_size, jpeg_quality=jpeg_quality, workers=workers,
                                skip_invalid=skip_invalid, progress=progress)  # fmt: skip
            entry["skipped"] = _add_counts(skipped, entry["skipped"])
            entries[split] = entry
        new_sources = {name: source_entry(name, path, out) for name, path in sources.items()}
        kept: dict[str, dict] = {}
        if keep_other_splits and old is not None:
            kept = {s: e for s, e in old["splits"].items() if s not in entries}
            _link_tars(out, staging, kept)
            new_sources = old["sources"] | new_sources
        manifest = manifest_dict(dataset=dataset, schema=schema, input_hw=input_hw, canvas=canvas,
                                 splits=kept | entries, sources=new_sources)  # fmt: skip
        write_manifest(staging, manifest)
        fsync_tree(staging)
        _commit(staging, out)
    except OSError as err:
        if err.filename is None or str(err.filename).startswith(str(staging)):  # name the folder, not the staging
            err = OSError(err.errno, err.strerror, str(out))
        raise ShardWriteError(
            f"sshpe shard: {describe_os_error(err)}; nothing was committed, {out} is as it was"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after the swap it holds the previous folder
    removed = tuple(s for s in (old or {}).get("splits", {}) if s not in manifest["splits"])
    return FolderResult(manifest["splits"], tuple(entries), tuple(kept), removed)


def _add_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in sorted(a.keys() | b.keys())}


def _sibling(out: Path, kind: str, pid: int) -> Path:
    return out.parent / f".{out.name}.{kind}-{pid}"


def _leftovers(out: Path, kind: str) -> list[tuple[int, Path]]:
    """(pid, path) of staging/previous folders that earlier runs left beside `out`."""
    if not out.parent.is_dir():
        return []
    prefix = f".{out.name}.{kind}-"
    found = []
    for p in out.parent.iterdir():
        if p.name.startswith(prefix) and p.name[len(prefix) :].isdigit():
            found.append((int(p.name[len(prefix) :]), p))
    return found


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers are from an earlier call in this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recover(out: Path) -> None:
    """Undo what a killed run left: restore a previous folder moved aside by the two-rename commit when the new one
    never arrived, and delete staging folders of runs that are no longer alive."""
    for pid, path in _leftovers(out, _PREVIOUS):
        if _alive(pid):
            continue
        if not out.exists():
            os.rename(path, out)
        else:
            shutil.rmtree(path, ignore_errors=True)
    for pid, path in _leftovers(out, _STAGING):
        if not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _previous_manifest(out: Path, *, strict: bool) -> dict | None:
    """The manifest of the folder about to be replaced; None when there is none (new or empty folder, or a shard
    folder whose manifest is missing or unreadable, which re-sharding repairs, unless `strict`).

    Raises:
        ValueError: `out` is a file, or holds files that are not shards (they would be lost).
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; pass a new or existing shard folder")
    foreign = sorted(p.name for p in out.iterdir() if not (_OURS.match(p.name) and p.is_file()))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(
            f"{out} holds files that are not shards ({shown}); `sshpe shard` replaces the whole folder, so move them "
            "away or write to a fresh folder"
        )
    if not (out / MANIFEST_NAME).is_file():
        return None
    try:
        return read_manifest(out)
    except ValueError:
        if strict:
            raise
        return None


def _link_tars(out: Path, staging: Path, kept: dict[str, dict]) -> None:
    """Hard-link (or copy, where links are not possible) the tars of carried-over splits into the staging folder."""
    for entry in kept.values():
        for shard in entry["shards"]:
            src, dst = out / shard["name"], staging / shard["name"]
            if not src.is_file():
                raise FileNotFoundError(f"shard {src} listed in {out / MANIFEST_NAME} is missing; re-shard that split")
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


def _commit(staging: Path, out: Path) -> None:
    """Put the complete, fsynced staging folder at `out` atomically; afterwards `staging` holds what `out` held."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(staging, out)  # rename(2) replaces an empty folder atomically
    elif not exchange_paths(staging, out):
        previous = _sibling(out, _PREVIOUS, os.getpid())
        os.rename(out, previous)  # a kill between these two renames is undone by `_recover` next time
        os.rename(staging, out)
        os.rename(previous, staging)
    fsync_path(out.parent)
