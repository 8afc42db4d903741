"""Joining or starting a Ray cluster, and sizing actors from what it has."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from equal.errors import ConfigError

__all__ = ["ActorRequest", "RayResources", "import_ray", "ray_session", "resources"]

logger = logging.getLogger(__name__)

LOCAL = "local"


def import_ray() -> Any:
    """``import ray``, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is in the project's `all` extra
        raise ConfigError("--ray needs the 'ray' package: pip install 'equal[distributed]'") from exc
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = LOCAL, *, num_cpus: int | None = None) -> Iterator[Any]:
    """Be connected to Ray for the duration of the block; yields the ``ray`` module.

    Parameters
    ----------
    address : str or None, default="local"
        ``"local"`` (or None) starts a private single-machine cluster with ``num_cpus`` CPUs (default: the cores
        this process may use); ``"auto"`` joins the cluster started on this machine with ``ray start``; anything
        else is a cluster address (``HOST:PORT`` or ``ray://HOST:PORT``). A session that is already connected
        (a caller's ``ray.init``) is used as it is and left running.
    num_cpus : int, optional
        CPUs of a local cluster.
    """
    from equal._threads import available_cores

    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    quiet: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address in (None, "", LOCAL):
            ray.init(num_cpus=num_cpus or available_cores(), **quiet)
        else:
            ray.init(address=address, **quiet)
    except ConnectionError as exc:
        raise ConfigError(f"--ray {address}: no Ray cluster answers there ({exc})") from exc
    _quiet_ray_data()
    try:
        yield ray
    finally:
        ray.shutdown()


def _quiet_ray_data() -> None:
    # Ray Data draws its own progress bars and logs every operator; equal's progress bar is the one shown.
    with contextlib.suppress(ImportError, AttributeError):
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


@dataclass(frozen=True)
class RayResources:
    """What the connected cluster offers: CPUs and GPUs in all."""

    cpus: int
    gpus: int

    def actors(self, wanted: int | None, *, cpus_per_actor: int = 1, gpu: bool = False) -> int:
        """How many actors to start: ``wanted``, else one per GPU (``gpu``) or per ``cpus_per_actor`` CPUs."""
        if wanted is not None:
            if wanted < 1:
                raise ConfigError(f"ray_actors={wanted}: must be >= 1")
            return wanted
        if gpu and self.gpus:
            return self.gpus
        return max(1, self.cpus // max(1, cpus_per_actor))

    def request(self, wanted: int | None = None, *, cpus_per_actor: int = 1,
                gpu: bool | None = None) -> ActorRequest:
        """The pool of a model-holding stage (embedding, cluster assignment): how many actors, what each asks.

        GPU actors when the cluster has GPUs (``gpu=None``), or when ``gpu=True`` (refused without one):
        by default one actor per GPU holding a whole GPU; more actors than GPUs share them (``num_gpus`` =
        GPUs / actors, so every actor can be placed). Otherwise CPU actors, one per ``cpus_per_actor`` CPUs.

        Parameters
        ----------
        wanted : int, optional
            Actors asked for (``ray_actors``); default as described.
        cpus_per_actor : int, default=1
            CPUs each actor holds (and the threads it runs).
        gpu : bool, optional
            Force GPU (True) or CPU (False) actors; default: GPUs when the cluster has them.
        """
        if cpus_per_actor < 1:
            raise ConfigError(f"cpus_per_actor={cpus_per_actor}: must be >= 1")
        if gpu and not self.gpus:
            raise ConfigError("GPU actors were asked for but the Ray cluster has no GPU")
        use_gpu = bool(self.gpus) if gpu is None else gpu
        count = self.actors(wanted, cpus_per_actor=cpus_per_actor, gpu=use_gpu)
        num_gpus = min(1.0, self.gpus / count) if use_gpu else 0.0
        return ActorRequest(actors=count, num_cpus=cpus_per_actor, num_gpus=num_gpus)


@dataclass(frozen=True)
class ActorRequest:
    """What one pool asks of Ray: ``actors`` actors of ``num_cpus`` CPUs and ``num_gpus`` GPUs each."""

    actors: int
    num_cpus: int
    num_gpus: float

    @property
    def gpu(self) -> bool:
        """Whether the actors hold (a share of) a GPU."""
        return self.num_gpus > 0


def resources() -> RayResources:
    """The connected cluster's CPUs and GPUs (``ray.cluster_resources``)."""
    ray = import_ray()
    total = ray.cluster_resources()
    return RayResources(cpus=int(total.get("CPU", 1)), gpus=int(total.get("GPU", 0)))


def worker_threads(cpus: float) -> int:
    """Threads for a pool inside an actor that holds ``cpus`` CPUs (Ray also sets OMP_NUM_THREADS to it)."""
    env = os.environ.get("OMP_NUM_THREADS")
    return max(1, int(env) if env and env.isdigit() else int(cpus))
