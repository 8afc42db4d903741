"""Cost ledger: what a run asked of its LLM, what it paid for, and an estimate of FLOPs and money."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from equal.llm.base import Completion

__all__ = ["Ledger"]


def _n_params_of(llm: object) -> int | None:
    """``n_params`` of a backend, looking through wrappers such as :class:`~equal.llm.CachedLLM`."""
    seen = 0
    while llm is not None and seen < 8:
        n = getattr(type(llm), "n_params", None)
        if n is not None:
            value = llm.n_params  # type: ignore[attr-defined]
            return int(value) if value else None
        llm = getattr(llm, "llm", None)
        seen += 1
    return None


@dataclass
class Ledger:
    """Running totals of LLM usage; saved by the pipeline as ``ledger.json``.

    Attributes
    ----------
    requests : int
        Completions added, cached or not.
    cached : int
        Of those, answered from the request cache (cost nothing this time).
    failed : int
        Of those, failed (``text is None``): after the backend's retries, so each is a request that got no
        answer. A resumed run keeps counting, so this includes failures of earlier invocations whose
        requests were answered later.
    failures : dict of str to int
        ``failed`` by reason (``Completion.extra["reason"]``: ``http_500``, ``timeout``, ``empty_content``,
        ``deadline``, ...; ``"error"`` when a backend gives none).
    tokens_in, tokens_out : int
        Prompt and generated tokens of the requests actually sent (cached ones are not counted again).
    seconds : float
        Sum of ``Completion.seconds`` of the requests actually sent.
    tokens_estimated : int
        Requests actually sent whose token counts were computed locally because the server sent no
        ``usage`` (see :class:`~equal.llm.OpenAILLM`'s ``tokenizer``); 0 means every count is the server's.
    n_params : int, optional
        Model parameters, when known (local models); enables :attr:`est_flops`.
    price_in_per_1m, price_out_per_1m : float, optional
        Price per million prompt / generated tokens; enables :attr:`est_cost`.

    Notes
    -----
    ``est_flops = 2 · n_params · (tokens_in + tokens_out)``, the usual forward-pass estimate (one multiply
    and one add per parameter per token), ignoring attention's context-length term.
    ``est_cost = (tokens_in · price_in_per_1m + tokens_out · price_out_per_1m) / 10^6`` (:meth:`price`); the
    prices are ``[llm] price_in`` / ``price_out`` of ``equal extract``.
    """

    requests: int = 0
    cached: int = 0
    failed: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    seconds: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    tokens_estimated: int = 0
    n_params: int | None = None
    price_in_per_1m: float | None = None
    price_out_per_1m: float | None = None

    def __post_init__(self) -> None:
        for name in ("requests", "cached", "failed", "tokens_in", "tokens_out", "seconds", "tokens_estimated"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}={value!r} must be a number >= 0.")
        for name in ("n_params", "price_in_per_1m", "price_out_per_1m"):
            value = getattr(self, name)
            bad = isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0
            if value is not None and bad:
                raise ValueError(f"{name}={value!r} must be a number >= 0 or None.")
        if not isinstance(self.failures, Mapping) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for k, v in self.failures.items()):
            raise ValueError(f"failures={self.failures!r} must map reasons to counts >= 0.")
        self.failures = dict(self.failures)  # a private copy: from_dict may be given another ledger's

    @classmethod
    def for_llm(
        cls, llm: object, *, price_in_per_1m: float | None = None, price_out_per_1m: float | None = None
    ) -> Ledger:
        """An empty ledger that knows the model's size (when the backend reports ``n_params``) and prices."""
        return cls(n_params=_n_params_of(llm), price_in_per_1m=price_in_per_1m,
                   price_out_per_1m=price_out_per_1m)

    def add(self, completions: Iterable[Completion]) -> None:
        """Count a batch of completions."""
        for c in completions:
            self.requests += 1
            if not c.ok:
                self.failed += 1
                reason = str(c.extra.get("reason") or "error")
                self.failures[reason] = self.failures.get(reason, 0) + 1
            if c.cached:
                self.cached += 1
                continue
            if c.extra.get("tokens_estimated"):
                self.tokens_estimated += 1
            self.tokens_in += int(c.tokens_in)
            self.tokens_out += int(c.tokens_out)
            self.seconds += float(c.seconds)

    @property
    def sent(self) -> int:
        """Requests that reached the backend (``requests - cached``)."""
        return self.requests - self.cached

    @property
    def est_flops(self) -> float | None:
        if self.n_params is None:
            return None
        return 2.0 * self.n_params * (self.tokens_in + self.tokens_out)

    @property
    def est_cost(self) -> float | None:
        return self.price(self.tokens_in, self.tokens_out)

    def price(self, tokens_in: float, tokens_out: float) -> float | None:
        """Money of ``tokens_in`` prompt and ``tokens_out`` generated tokens at this ledger's prices.

        None when no price is known; a missing one of the two prices counts as 0.
        """
        if self.price_in_per_1m is None and self.price_out_per_1m is None:
            return None
        return (tokens_in * (self.price_in_per_1m or 0.0) + tokens_out * (self.price_out_per_1m or 0.0)) / 1e6

    def per_pair(self, pairs: int) -> dict[str, float | None]:
        """``cost_per_pair`` and ``flops_per_pair``: :attr:`est_cost` and :attr:`est_flops` over ``pairs`` kept
        pairs (None when unknown or no pair was kept)."""
        cost, flops = self.est_cost, self.est_flops
        return {"cost_per_pair": None if cost is None or pairs <= 0 else cost / pairs,
                "flops_per_pair": None if flops is None or pairs <= 0 else flops / pairs}

    def to_dict(self) -> dict[str, Any]:
        """Fields plus the derived ``sent``, ``est_flops`` and ``est_cost`` (JSON-ready)."""
        d: dict[str, Any] = dataclasses.asdict(self)
        d["failures"] = dict(sorted(self.failures.items()))
        d.update(sent=self.sent, est_flops=self.est_flops, est_cost=self.est_cost)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Ledger:
        """Inverse of :meth:`to_dict`; derived and unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
