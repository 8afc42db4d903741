"""Shared fixtures: offline model loading, seeded data, temporary caches."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

# Nothing may reach a model hub from the tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# as the CLI does: library tqdm bars ("Loading weights") would break the one-line-error checks
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# OpenMP threads that spin while waiting lose badly on a shared 2-core machine (a 135M model's
# forward+backward: 3.9 s spinning vs 3.1 s passive with one other busy process; 1.7 vs 1.6 s idle).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _pin_xdist_worker() -> None:
    """Give each pytest-xdist worker a core of its own (``make test`` runs one worker per core).

    Every thread pool in equal (torch, BLAS, faiss, llama.cpp) is sized from the process's CPU affinity, and so
    are the subprocesses a test starts: pinned, two workers never run two pools on one core.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return
    per = max(1, len(cores) // count)
    index = int(worker[2:]) % count
    os.sched_setaffinity(0, cores[index * per:(index + 1) * per] or cores[-per:])


_pin_xdist_worker()


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip_gpu = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _cache_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The per-session folder of equal's on-disk caches.

    Under pytest-xdist each worker has its own, except the dequantised models: those are written atomically
    under a lock (``LocalLLM``), so the workers share one folder and the bundled GGUF is converted once.
    """
    root = tmp_path_factory.getbasetemp() / "equal-cache"
    if os.environ.get("PYTEST_XDIST_WORKER") and not (root / "models").exists():
        shared = tmp_path_factory.getbasetemp().parent / "equal-models"
        shared.mkdir(exist_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        (root / "models").symlink_to(shared, target_is_directory=True)
    return root


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point equal's on-disk caches at the per-session folder (:func:`_cache_folder`)."""
    monkeypatch.setenv("EQUAL_CACHE_DIR", str(_cache_folder(tmp_path_factory)))


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The folder ``_isolated_cache`` points EQUAL_CACHE_DIR at, set for a module's own fixtures too."""
    root = _cache_folder(tmp_path_factory)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EQUAL_CACHE_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).

    A 135M model runs in tiny ops; on a busy 2-core machine two OpenMP threads wait on each other, and its
    forward passes and batched generation run several times slower than with one.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
