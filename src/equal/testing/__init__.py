"""Testing utilities for code that talks to LLM endpoints (in the spirit of ``numpy.testing``).

- :class:`FaultProxy`: a reverse proxy on 127.0.0.1 in front of a real OpenAI-compatible server that counts
  requests (per request-body hash, so "paid twice" is measurable) and injects faults from a schedule.
- :class:`Fault`: the faults it can inject (HTTP statuses, hangs, trickles, malformed or truncated bodies,
  resets, empty answers, missing ``usage``, server death).

Standard library only; nothing here is imported by the rest of :mod:`equal`.
"""

from __future__ import annotations

from equal.testing.proxy import FAULT_KINDS, Fault, FaultProxy, body_hash

__all__ = ["FAULT_KINDS", "Fault", "FaultProxy", "body_hash"]
