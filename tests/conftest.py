"""Shared fixtures: offline model loading, seeded data, temporary caches."""

from __future__ import annotations

import os

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


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point equal's on-disk caches at a per-session temporary folder."""
    monkeypatch.setenv("EQUAL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "equal-cache"))
