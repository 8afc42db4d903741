"""The committed state of an ``equal extract`` run: a frozen :class:`RunState`, stored as ``state.json``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from equal.errors import DataError
from equal.llm import Ledger

__all__ = ["STATE_FORMAT", "RunState"]

STATE_FORMAT = 1
"""Version of ``state.json``; a state of another version is refused."""


@dataclass(frozen=True)
class RunState:
    """Everything a run needs to continue exactly where its last committed round ended.

    Attributes
    ----------
    round : int
        Rounds committed.
    cursors : tuple of int
        Documents handed out per cluster (bandit strategies).
    cursor_global : int
        Documents handed out from the corpus order (``random`` and ``all``).
    documents_read, pairs : int
        Documents sent to the extractor and pairs kept, so far.
    tokens_used : int
        Tokens (in + out) of every extraction completion the committed rounds used, cached ones included:
        what ``run.budget_tokens`` is measured against, so a resumed run stops where an uninterrupted one
        does. The ledger counts only what was paid for.
    cost_used : float
        Money of those same completions at ``[llm] price_in`` / ``price_out`` (0 without prices): what
        ``run.budget_usd`` is measured against, on the same terms as ``tokens_used``.
    policy : dict or None
        :meth:`equal.bandit.Policy.state_dict` after the last round.
    ledger : equal.llm.Ledger
        Requests (failed ones included), cache hits, paid tokens and seconds.
    drops : dict of str to int
        Pairs dropped, by extractor reason or filter name.
    finished : bool
        The budget (or the corpus) is spent.
    qa_bytes, rounds_bytes : int
        Lengths of ``qa.jsonl`` and ``rounds.jsonl`` at the commit; anything beyond is cut on resume.
    """

    round: int = 0
    cursors: tuple[int, ...] = ()
    cursor_global: int = 0
    documents_read: int = 0
    pairs: int = 0
    tokens_used: int = 0
    cost_used: float = 0.0
    policy: dict[str, Any] | None = None
    ledger: Ledger = field(default_factory=Ledger)
    drops: dict[str, int] = field(default_factory=dict)
    finished: bool = False
    qa_bytes: int = 0
    rounds_bytes: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cursors", tuple(int(c) for c in self.cursors))
        # a private copy: the loop's live ledger keeps changing after a state is taken
        object.__setattr__(self, "ledger", Ledger.from_dict(self.ledger.to_dict()))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": STATE_FORMAT}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "ledger":
                value = value.to_dict()
            elif f.name == "cursors":
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str | None = None) -> RunState:
        """Inverse of :meth:`to_dict`; DataError (naming ``path`` and the field) on anything else."""
        if not isinstance(data, Mapping) or data.get("format") != STATE_FORMAT:
            got = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise DataError(f"not an equal run state of format {STATE_FORMAT} (format={got!r})", path=path,
                            field="format")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in data.items() if k in names}
        try:
            kw["ledger"] = Ledger.from_dict(kw.get("ledger", {}))
            return cls(**kw)
        except (TypeError, ValueError) as exc:
            raise DataError(f"invalid run state: {exc}", path=path) from exc
