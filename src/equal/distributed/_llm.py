"""A round's extraction requests fanned out over a pool of LLM actors."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

from equal.distributed._session import import_ray, resources, worker_threads
from equal.errors import LLMError
from equal.llm.base import Completion, GenerationParams, Message, OnComplete

__all__ = ["RayLLM"]

logger = logging.getLogger(__name__)


class _LLMActor:
    """One backend per actor (a llama.cpp or transformers engine, or a client of one endpoint)."""

    def __init__(self, kind: str, options: dict[str, Any]) -> None:
        from equal.llm import get_llm

        self.llm = get_llm(kind, **options)

    def describe(self) -> tuple[str, dict[str, Any]]:
        return self.llm.model, dict(getattr(self.llm, "identity", {}) or {})

    def generate(self, request: Sequence[Message], params: GenerationParams) -> Completion:
        return self.llm.generate([request], params)[0]


class RayLLM:
    """The :class:`~equal.llm.LLM` interface over Ray actors, each holding its own backend.

    Requests go to whichever actor is free (at most ``in_flight`` queued per actor), so a long prompt does not
    hold up the others, and ``on_complete`` is called as each answer arrives, which lets
    :class:`~equal.llm.CachedLLM` commit it at once. :attr:`model` is the backend's own, so the request cache
    keys (and so resumes and answers) are those of a local run with the same backend.

    Parameters
    ----------
    kind : {"local", "openai"}
        The backend, as :func:`equal.llm.get_llm` takes it.
    actors : int, optional
        Engines in the pool; default one per ``cpus_per_actor`` CPUs of the cluster (``openai``: one per URL).
    cpus_per_actor : int, default=1
        Threads of each local engine (the actors reserve no logical CPU: see the note in the constructor).
    base_urls : sequence of str, optional
        ``openai`` only: a pool of OpenAI-compatible endpoints serving the same model, one actor each.
    in_flight : int, default=2
        Requests queued on one actor at a time (one generating, one ready to start).
    **options
        Passed to :func:`equal.llm.get_llm` in every actor.
    """

    def __init__(self, kind: str = "local", *, actors: int | None = None, cpus_per_actor: int = 1,
                 base_urls: Sequence[str] | None = None, in_flight: int = 2, **options: Any) -> None:
        ray = import_ray()
        if in_flight < 1:
            raise ValueError(f"in_flight={in_flight} must be >= 1")
        self.in_flight = in_flight
        urls = list(base_urls or [])
        if urls and kind != "openai":
            raise ValueError("base_urls is only valid with kind='openai'")
        if kind == "local" and options.get("threads") is None:
            options["threads"] = worker_threads(cpus_per_actor)
        count = len(urls) if urls else resources().actors(actors, cpus_per_actor=cpus_per_actor)
        # The loop alternates: a round's requests, then the embedding of its pairs. The two pools never compute
        # at once, so the LLM actors reserve no logical CPU: reserving them would leave the embedder's pool
        # waiting forever for CPUs that idle LLM actors hold. Their threads still follow cpus_per_actor, and
        # SPREAD puts them on different nodes.
        remote = ray.remote(num_cpus=0, max_concurrency=1, scheduling_strategy="SPREAD")(_LLMActor)
        self._actors = [remote.remote(kind, {**options, **({"base_url": urls[i]} if urls else {})})
                        for i in range(count)]
        described = ray.get([a.describe.remote() for a in self._actors])
        models = {m for m, _ in described}
        if len(models) != 1:
            raise ValueError(f"the endpoints serve different models: {sorted(models)}")
        self._model = models.pop()
        self._identity = {"kind": "ray", "actors": count, "backend": described[0][1]}

    @property
    def model(self) -> str:
        return self._model

    @property
    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    @property
    def actors(self) -> int:
        return len(self._actors)

    def generate(self, requests: Sequence[Sequence[Message]], params: GenerationParams, *,
                 on_complete: OnComplete | None = None) -> list[Completion]:
        """Answer every request, in input order; ``on_complete(i, completion)`` fires as each one arrives."""
        ray = import_ray()
        out: list[Completion | None] = [None] * len(requests)
        todo = deque(range(len(requests)))
        running: dict[Any, tuple[int, int]] = {}  # object ref -> (request index, actor index)

        def submit(actor: int) -> None:
            i = todo.popleft()
            running[self._actors[actor].generate.remote(list(requests[i]), params)] = (i, actor)

        for _ in range(self.in_flight):
            for actor in range(len(self._actors)):
                if todo:
                    submit(actor)
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            for ref in done:
                i, actor = running.pop(ref)
                try:
                    completion = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise LLMError(f"an LLM actor failed: {exc}") from exc
                out[i] = completion
                if on_complete is not None:
                    on_complete(i, completion)
                if todo:
                    submit(actor)
        return [c for c in out if c is not None]

    def close(self) -> None:
        """Stop the actors (their models are freed)."""
        ray = import_ray()
        for actor in self._actors:
            ray.kill(actor)
        self._actors = []
