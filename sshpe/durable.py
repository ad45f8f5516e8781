"""Crash-safe file-system steps: fsync of files and folders, and swapping a finished folder into place (single
files: `sshpe.atomic`).

A write survives a kill or a power loss only if its data and the directory entries that name it reach the disk
before the rename that publishes it; these helpers are the two halves of that rule.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from pathlib import Path

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def fsync_path(path: Path) -> None:
    """Flush one file's or one directory's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (children first, then `root` itself)."""
    root = Path(root)
    for dirpath, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(Path(dirpath) / name)
        fsync_path(Path(dirpath))


def _libc_renameat2():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    fn = getattr(ctypes.CDLL(name, use_errno=True), "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
    return fn


def exchange_paths(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths (Linux `renameat2(RENAME_EXCHANGE)`).

    Returns:
        True if swapped; False if the platform or the file system cannot do it (the caller falls back).
    """
    try:
        fn = _libc_renameat2()
    except OSError:
        return False
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))
