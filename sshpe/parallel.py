"""Ordered parallel map over a spawn process pool that fails loudly (used by `sshpe shard` and `sshpe synth`).

Results come back in input order with a bounded number of chunks in flight (memory stays flat however slow the
consumer), an exception raised by the mapped function reaches the caller unchanged, and a worker that dies
(SIGKILL, the out-of-memory killer) ends the map with `WorkerDied` instead of a hang.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from itertools import islice
from multiprocessing import get_context
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class WorkerDied(RuntimeError):
    """A pool worker process died; the message names the job and what to try."""


def _apply(fn: Callable[[T], R], chunk: list[T]) -> list[R]:
    return [fn(item) for item in chunk]


def _results(
    pool: ProcessPoolExecutor, fn: Callable[[T], R], items: Iterable[T], chunksize: int, window: int, what: str
) -> Iterator[R]:
    source = iter(items)
    pending: deque[Future] = deque()

    def submit() -> None:
        chunk = list(islice(source, chunksize))
        if chunk:
            pending.append(pool.submit(_apply, fn, chunk))

    for _ in range(window):
        submit()
    while pending:
        try:
            done = pending.popleft().result()
        except BrokenProcessPool:
            raise WorkerDied(
                f"{what}: a worker process died (killed by a signal or the out-of-memory killer), so the run stopped "
                "and nothing was committed; run it again, with fewer --workers if memory is short"
            ) from None
        submit()
        yield from done


@contextmanager
def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int,
    what: str,
    chunksize: int = 1,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
) -> Iterator[Iterator[R]]:
    """`map(fn, items)` in `workers` spawned processes (0: in this process), as a context manager.

    Leaving the block, normally or by an exception, cancels what is queued and joins the workers.

    Args:
        fn: a picklable top-level function.
        items: inputs; consumed lazily, at most `2 * workers` chunks ahead of the consumer.
        workers: worker processes; 0 maps in this process (same results).
        what: names the job in the `WorkerDied` message (e.g. "sshpe shard labeled").
        chunksize: items per task sent to a worker.
        initializer, initargs: run once in every worker process (not when `workers` is 0).

    Yields:
        An iterator of `fn(item)` in input order.
    """
    if workers <= 0:
        yield map(fn, items)
        return
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=initializer, initargs=initargs)
    try:
        yield _results(pool, fn, items, max(1, chunksize), 2 * workers, what)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
