"""Row-block parallelism shared by the O(n²) kernels of ``equal.diversity`` and ``equal.select``.

The heavy kernels (Gram block, sort, top-k) work on independent row blocks. numpy's sort and BLAS release
the GIL, so a thread per core with single-threaded BLAS keeps every core busy on sort-heavy work, where one
thread with multi-threaded BLAS leaves all but one core idle during the sort.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from equal._threads import available_cores

T = TypeVar("T")

__all__ = ["available_cores", "blas_single_thread", "map_blocks"]


@contextlib.contextmanager
def blas_single_thread(active: bool = True) -> Iterator[None]:
    """Limit BLAS to one thread while worker threads each run their own BLAS calls.

    Uses ``threadpoolctl`` when it is installed; without it BLAS keeps its threads (oversubscribed, slower,
    still correct).
    """
    if not active:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def map_blocks(fn: Callable[[int, int], T], n: int, block_size: int, *, workers: int | None = None) -> list[T]:
    """Apply ``fn(start, stop)`` to consecutive row blocks of ``range(n)``, in order.

    With more than one worker the blocks run on a thread pool under single-threaded BLAS.
    """
    bounds: Sequence[tuple[int, int]] = [(s, min(s + block_size, n)) for s in range(0, n, block_size)]
    workers = available_cores() if workers is None else workers
    workers = max(1, min(workers, len(bounds)))
    if workers == 1:
        return [fn(a, b) for a, b in bounds]
    with blas_single_thread(), ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda ab: fn(*ab), bounds))
