"""Choice of compute backend: numpy on the CPU, torch on a CUDA device when one is present."""

from __future__ import annotations

__all__ = ["resolve_device"]


def resolve_device(device: str) -> str:
    """Return ``"numpy"`` or a torch CUDA device string for ``device``.

    ``"auto"`` takes ``"cuda"`` when torch sees a GPU and numpy otherwise; ``"cpu"`` is numpy;
    ``"cuda"`` / ``"cuda:N"`` require torch with CUDA.
    """
    if not isinstance(device, str):
        raise ValueError(f"device={device!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'.")
    if device == "auto":
        try:
            import torch
        except ImportError:
            return "numpy"
        return "cuda" if torch.cuda.is_available() else "numpy"
    if device == "cpu":
        return "numpy"
    if device == "cuda" or device.startswith("cuda:"):
        try:
            import torch
        except ImportError as exc:
            raise ImportError(f"device={device!r} needs torch: pip install 'equal[torch]'.") from exc
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was requested but torch sees no CUDA device; use 'auto' or 'cpu'.")
        return device
    raise ValueError(f"device={device!r} must be 'auto', 'cpu', 'cuda' or 'cuda:N'.")
