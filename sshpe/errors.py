"""What a user sees when something they can fix goes wrong: bounded quoting of values in messages and one-line
descriptions of operating-system errors (full disk, read-only or missing output folders)."""

from __future__ import annotations

import errno
import os

QUOTE_LIMIT = 80

# errno -> what the user can do about it (the message names the path and the error)
_OS_FIXES = {
    errno.ENOSPC: "the disk is full: free some space or write to another disk",
    errno.EDQUOT: "the disk quota is exhausted: free some space or write to another disk",
    errno.EROFS: "the file system is read-only: choose a writable output folder",
    errno.EACCES: "permission denied: choose a folder you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a folder you can write to, or fix its permissions",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "the path is a folder where a file was expected: check the path",
    errno.EEXIST: "the path already exists: remove it or choose another one",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter one",
    errno.EMFILE: "too many open files: raise `ulimit -n` or use fewer workers",
    errno.EIO: "an input/output error occurred: check the disk",
}


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """`repr(value)` cut to at most `limit` characters, so a message never embeds a huge value.

    A cut repr ends with `...` and says how long the whole repr was. Containers are formatted lazily enough
    that even an enormous list costs only what `repr` costs (callers bound the input size first).
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: max(limit - 3, 1)]}... ({len(text)} chars)"


def describe_os_error(err: OSError, action: str = "") -> str:
    """One line naming the path, the error and the fix, e.g. for ENOSPC or a read-only output folder.

    Args:
        err: the error (its `filename`, when set, is the path named).
        action: what was being done, e.g. "writing checkpoint runs/x/checkpoints/step-000200"; named instead of a
            path when the error carries none (a failed `write()` on a full disk does not).
    """
    code = err.errno if isinstance(err.errno, int) else None
    name = errno.errorcode.get(code, "OSError") if code is not None else type(err).__name__
    reason = err.strerror or str(err)
    if err.filename is not None:
        subject = os.fspath(err.filename) + (f" -> {os.fspath(err.filename2)}" if err.filename2 is not None else "")
    else:
        subject = action or "a file operation"
    fix = _OS_FIXES.get(code, "check the path and the disk")
    return f"{subject}: {reason} [{name}]; {fix}"


def is_disk_full(err: BaseException) -> bool:
    """True when `err` (or an error it wraps) says the disk or quota is full."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False
