"""Spread independent work over every CPU core, in order, with results that do not depend on it.

- `process_map`: corpus synthesis and feature extraction, many small jobs. One worker process per
  core beats torch's intra-op threads on such small ops on the 2-core machines privfl targets.
  Workers start from a forkserver (never inheriting the parent's torch/BLAS threads the way fork
  would) and run torch single-threaded, so two workers on two cores do not oversubscribe them.
- `thread_map`: per-sample DP gradients, torch kernels that release the GIL (a fused LSTM over a
  sequence, an autograd backward), on one single-threaded worker thread per core.
- `torch_threads`: a block with a given torch intra-op thread count.
- `PerThread`: one copy of an object per worker thread (a model each thread may load weights into).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Generic, TypeVar

from privfl.errors import DataError

T = TypeVar("T")
R = TypeVar("R")

MIN_POOL_ITEMS = 32
"""Below this many items, work runs in-process: starting workers would cost more than it saves."""


def default_workers() -> int:
    """Worker processes to use: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _single_threaded() -> None:
    """Pool-worker initializer: one torch thread per worker, where torch was preloaded."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with n torch intra-op threads (None: leave as is), then restore the count.

    Small per-utterance or batch-1 kernels do not parallelise; extra OpenMP threads only spin.
    """
    import torch

    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


_thread_pool: ThreadPoolExecutor | None = None


def thread_map(fn: Callable[[int], R], n: int, progress: Callable[[int, int], None] | None = None) -> list[R]:
    """[fn(0), ..., fn(n - 1)] on one worker thread per core, in order.

    For work made of torch kernels that release the GIL (a fused LSTM over a whole sequence, an
    autograd backward): the threads run torch single-threaded, so every item's arithmetic, and
    hence the result, is the same as in a plain loop whichever thread takes it. `progress(done, n)`
    is called in the calling thread as results arrive, in order. `fn` must not call thread_map
    itself (the workers would wait on work queued behind them).
    """
    global _thread_pool
    if default_workers() <= 1 or n <= 1:
        with torch_threads(1):
            return _collect(map(fn, range(n)), n, progress)
    if _thread_pool is None:
        import torch

        _thread_pool = ThreadPoolExecutor(
            max_workers=default_workers(),
            thread_name_prefix="privfl",
            initializer=torch.set_num_threads,
            initargs=(1,),
        )
    return _collect(_thread_pool.map(fn, range(n)), n, progress)


def _collect(results: Iterable[R], n: int, progress: Callable[[int, int], None] | None) -> list[R]:
    """The results in order, reporting progress(done, n) as each arrives."""
    out: list[R] = []
    for result in results:
        out.append(result)
        if progress is not None:
            progress(len(out), n)
    return out


class PerThread(Generic[T]):
    """One object per thread, built by `make()` on the thread's first `get()`.

    For `thread_map` work that changes an object as it goes (a model whose weights each item sets):
    every worker thread gets its own copy, so no two items ever share one.
    """

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._local = threading.local()

    def get(self) -> T:
        obj = getattr(self._local, "obj", None)
        if obj is None:
            obj = self._local.obj = self._make()
        return obj


def process_map(
    fn: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    preload: Iterable[str] = (),
    chunksize: int = 8,
    what: str = "work",
) -> list[R]:
    """[fn(item) for item in items], across `workers` processes (default: every core).

    `fn` must be a module-level function (workers import it by name); `preload` names modules the
    forkserver imports once so each worker starts warm. `progress(done, total)` is called in the
    parent after each item. Results come back in input order and do not depend on `workers`.
    """
    total = len(items)
    workers = default_workers() if workers is None else int(workers)
    if workers <= 1 or total < MIN_POOL_ITEMS:
        out: list[R] = []
        for item in items:
            out.append(fn(item))
            if progress is not None:
                progress(len(out), total)
        return out
    context = get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    pool = ProcessPoolExecutor(
        max_workers=min(workers, total), mp_context=context, initializer=_single_threaded
    )
    out = []
    try:
        for result in pool.map(fn, items, chunksize=chunksize):
            out.append(result)
            if progress is not None:
                progress(len(out), total)
    except BrokenProcessPool as exc:
        raise DataError(
            f"a worker process for {what} died ({exc}); when calling privfl from a script, put the call "
            "under `if __name__ == '__main__':` (workers start by importing the main module), or pass "
            "workers=1"
        ) from exc
    finally:
        pool.shutdown(cancel_futures=True)  # on an interrupt, drop queued jobs instead of finishing them
    return out
