"""One writer per run folder: rank 0 of `fit` holds an OS lock (`flock`) on `runs/<name>/.lock` for the whole run,
so a second `sshpe train` on the same folder is refused with the holder's pid instead of interleaving metrics and
deleting the first run's checkpoints."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sshpe.checkpoint import CheckpointError

LOCK = ".lock"


@contextmanager
def run_lock(run_dir: Path, accelerator) -> Iterator[None]:
    """Hold an exclusive OS lock (`flock`) on `run_dir/.lock` while the block runs; every rank must enter it.

    Rank 0 takes the lock and writes its pid into the file; the other ranks learn the outcome through a broadcast,
    so a refused run stops on every rank. The lock dies with the process, so a killed run never leaves it behind.

    Raises:
        CheckpointError: another process holds the lock (its pid is named).
    """
    fd, problem = None, None
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            fd = None
            problem = (
                f"{run_dir} is in use by another `sshpe train` (pid {holder}); wait for it to finish or stop it, "
                "or pass another --out"
            )
        else:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [problem]
        broadcast_object_list(box)
        problem = box[0]
    if problem is not None:
        raise CheckpointError(problem)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock
