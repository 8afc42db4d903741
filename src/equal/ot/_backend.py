"""The few array operations the solvers need, for numpy and for torch (any device).

The solvers are written once against :class:`Ops`; :func:`get_ops` picks the implementation from the
type of the cost matrix, so a torch input is computed in torch on its own device and never copied to
the host inside the loop. torch is imported only when a torch tensor is passed in.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

Array = Any
"""An ``np.ndarray`` or a ``torch.Tensor``; the solvers never mix the two."""


def is_torch(x: object) -> bool:
    """Whether ``x`` is a torch tensor, decided without importing torch."""
    return type(x).__module__.startswith("torch") and hasattr(x, "device")


class Ops:
    """numpy implementation; :class:`TorchOps` overrides what differs."""

    name = "numpy"
    float32: Any = np.float32
    float64: Any = np.float64

    def __init__(self, device: Any = None) -> None:
        self.device = device

    def asarray(self, x: Any, dtype: Any) -> Array:
        return np.ascontiguousarray(x, dtype=dtype)

    def to_numpy(self, x: Array) -> np.ndarray:
        return np.asarray(x)

    def astype(self, x: Array, dtype: Any) -> Array:
        return x.astype(dtype, copy=False)

    def copy(self, x: Array) -> Array:
        return x.copy()

    def full(self, shape: tuple[int, ...], value: float, dtype: Any) -> Array:
        return np.full(shape, value, dtype=dtype)

    def exp_(self, x: Array) -> Array:
        return np.exp(x, out=x)

    def log(self, x: Array) -> Array:
        return np.log(x)

    def sqrt_(self, x: Array) -> Array:
        return np.sqrt(x, out=x)

    def take(self, x: Array, idx: np.ndarray) -> Array:
        """Rows ``idx`` of ``x`` along its first axis (a copy)."""
        return x[idx]

    def index(self, idx: np.ndarray) -> Any:
        """``idx`` in the form this backend indexes with."""
        return idx

    def clamp_min(self, x: Array, value: float) -> Array:
        return np.maximum(x, value)

    def clamp_min_(self, x: Array, value: float) -> Array:
        return np.maximum(x, value, out=x)

    def clamp_max(self, x: Array, value: float) -> Array:
        return np.minimum(x, value)

    def amin(self, x: Array, axis: int) -> Array:
        return x.min(axis=axis)

    def amax(self, x: Array, axis: int) -> Array:
        return x.max(axis=axis)

    def where(self, cond: Array, x: Array | float, y: Array | float) -> Array:
        return np.where(cond, x, y)

    def isfinite_all(self, x: Array) -> bool:
        return bool(np.isfinite(x).all())

    def matvec(self, P: Array, w: Array) -> Array:
        """``P @ w`` for a stack: P (B, n, m), w (B, m) -> (B, n)."""
        if P.shape[0] == 1:  # plain gemv: numpy's stacked matmul is slower for one large matrix
            return (P[0] @ w[0])[None]
        return np.matmul(P, w[:, :, None])[:, :, 0]

    def rmatvec(self, P: Array, u: Array) -> Array:
        """``Pᵀ @ u`` for a stack: P (B, n, m), u (B, n) -> (B, m)."""
        if P.shape[0] == 1:
            return (u[0] @ P[0])[None]
        return np.matmul(u[:, None, :], P)[:, 0, :]

    def item(self, x: Array) -> float:
        return float(x)

    def extreme(self, u: Array, v: Array) -> float:
        """``max(max u, max v, 1/min u, 1/min v)``: how far two positive scalings are from 1."""
        return float(max(u.max(), v.max(), 1.0 / u.min(), 1.0 / v.min()))


class TorchOps(Ops):
    """torch implementation on the device of the input tensors."""

    name = "torch"

    def __init__(self, device: Any = None) -> None:
        import torch

        self.torch = torch
        self.float32 = torch.float32
        self.float64 = torch.float64
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def asarray(self, x: Any, dtype: Any) -> Array:
        if isinstance(x, np.ndarray):
            x = self.torch.from_numpy(np.ascontiguousarray(x))
        return self.torch.as_tensor(x, dtype=dtype, device=self.device).contiguous()

    def to_numpy(self, x: Array) -> np.ndarray:
        return x.detach().cpu().numpy()

    def astype(self, x: Array, dtype: Any) -> Array:
        return x.to(dtype)

    def copy(self, x: Array) -> Array:
        return x.clone()

    def full(self, shape: tuple[int, ...], value: float, dtype: Any) -> Array:
        return self.torch.full(shape, value, dtype=dtype, device=self.device)

    def exp_(self, x: Array) -> Array:
        return x.exp_()

    def log(self, x: Array) -> Array:
        return self.torch.log(x)

    def sqrt_(self, x: Array) -> Array:
        return x.sqrt_()

    def take(self, x: Array, idx: np.ndarray) -> Array:
        return x[self.torch.as_tensor(idx, device=x.device)]

    def index(self, idx: np.ndarray) -> Any:
        return self.torch.as_tensor(idx, device=self.device)

    def clamp_min(self, x: Array, value: float) -> Array:
        return self.torch.clamp(x, min=value)

    def clamp_min_(self, x: Array, value: float) -> Array:
        return x.clamp_(min=value)

    def clamp_max(self, x: Array, value: float) -> Array:
        return self.torch.clamp(x, max=value)

    def amin(self, x: Array, axis: int) -> Array:
        return self.torch.amin(x, dim=axis)

    def amax(self, x: Array, axis: int) -> Array:
        return self.torch.amax(x, dim=axis)

    def where(self, cond: Array, x: Array | float, y: Array | float) -> Array:
        return self.torch.where(cond, x, y)

    def isfinite_all(self, x: Array) -> bool:
        return bool(self.torch.isfinite(x).all())

    def matvec(self, P: Array, w: Array) -> Array:
        if P.shape[0] == 1:
            return self.torch.mv(P[0], w[0])[None]
        return self.torch.bmm(P, w[:, :, None])[:, :, 0]

    def rmatvec(self, P: Array, u: Array) -> Array:
        if P.shape[0] == 1:
            return self.torch.mv(P[0].T, u[0])[None]
        return self.torch.bmm(u[:, None, :], P)[:, 0, :]

    def item(self, x: Array) -> float:
        return float(x.item())

    def extreme(self, u: Array, v: Array) -> float:
        t = self.torch
        return float(t.stack([u.max(), v.max(), 1.0 / u.min(), 1.0 / v.min()]).max().item())


SINGLE_THREAD_MAX_FLOPS = 1e9
"""Matrix products up to this many multiply-adds run on one BLAS thread (about 50 ms on one core)."""

_controller: Any = None


def blas_limit(ops: Ops, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """Context that runs numpy's BLAS on one thread (when ``enabled`` and threadpoolctl is installed).

    The solvers' loops are matrix-vector products, memory-bound, so a second BLAS thread gains little
    (the element-wise passes are single-threaded anyway), while OpenBLAS threads that spin-wait for a
    core thrash badly when the machine is busy (an LLM server beside the bandit loop, other jobs):
    measured on a loaded 2-core machine, a 1000×1000 product took 14 ms with two threads against
    0.05 ms with one, turning a 0.5 s IPOT solve into 20 s, and a 50×768×100 cost matrix took 42 ms
    instead of 0.2 ms. Needs threadpoolctl (installed with scikit-learn); without it, or for torch,
    nothing is changed.
    """
    global _controller
    if ops.name != "numpy" or not enabled:
        return contextlib.nullcontext()
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _controller = False
        else:
            _controller = ThreadpoolController()  # scanning the loaded libraries once costs a few ms
    if _controller is False:
        return contextlib.nullcontext()
    return _controller.limit(limits=1, user_api="blas")


def get_ops(x: object) -> Ops:
    """The operations matching ``x``: torch on ``x.device`` for a tensor, numpy otherwise."""
    if is_torch(x):
        return TorchOps(x.device)  # type: ignore[attr-defined]
    return Ops()


def torch_ops(device: Any) -> Ops:
    """torch operations on ``device`` (``"cpu"``, ``"cuda"``, ...); the ImportError names the extra."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:  # pragma: no cover - torch is installed in the dev environment
        raise ImportError("device= needs torch; install it with `pip install equal[torch]`.") from exc
    return TorchOps(device)
