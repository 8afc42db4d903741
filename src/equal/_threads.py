"""How many threads equal's own pools use: one answer for every package (torch, BLAS, worker pools).

These machines are often small and shared: every pool is sized from the cores this process may actually run
on (its CPU affinity, which containers and ``taskset`` narrow), and torch's pool never runs beside a BLAS pool
of the same size.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = ["available_cores", "torch_threads"]


def available_cores() -> int:
    """Number of CPU cores this process may run on (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """Run torch's CPU ops on ``n`` threads (default: the available cores), then restore the setting.

    numpy's BLAS pool is held at one thread meanwhile, so the two pools never oversubscribe the cores.
    """
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n or available_cores()))
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)
