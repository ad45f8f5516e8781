"""Atomic, durable writes of the files sshpe hands to people (temp sibling + fsync + rename + fsync of the folder:
never half-written, even after a power loss), with the mode a plain `open()` gives under the process umask.
`tempfile.mkstemp` and safetensors' writer create their files 0600, which teammates on shared storage cannot read;
every writer goes through here so that is fixed once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sshpe.durable import fsync_path


def current_umask() -> int:
    """The process umask, read from /proc where the OS has it (no change to process state), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path) -> None:
    """Give a file, or every file and folder under a folder, the mode `open()`/`mkdir()` would have given it
    (0666 / 0777 minus the umask); for files that third-party writers created 0600."""
    mask = current_umask()
    path = Path(path)
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for root, dirs, files in os.walk(path):
            for d in dirs:
                os.chmod(os.path.join(root, d), 0o777 & ~mask)
            for f in files:
                os.chmod(os.path.join(root, f), 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` for any writer to fill; on success it gets the umask's mode, is fsynced
    and renamed over `path` (then the folder is fsynced); on failure it is removed (an existing `path` is untouched
    either way).

    The temporary name ends in `.tmp-<pid>`, so writers that choose a format from the suffix (OpenCV) need bytes
    written through `atomic_write_bytes` instead.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        honour_umask(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write bytes to `path` atomically with the umask's mode."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write UTF-8 text to `path` atomically with the umask's mode."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
