"""The cost table of a run's report: rows of (label, value) from ``RUN/ledger.json``.

Kept apart from the HTML renderer so that the report (and any other view: the CLI, a dataset card) shows
the same figures with the same wording. Unknown figures (no price configured, no model size for a served
model) are shown as "n/a" with the setting that would give them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["cost_rows", "format_flops", "format_money"]


def format_money(value: float | None) -> str:
    """``$0.0123``: four significant figures, in the currency of ``[llm] price_in`` / ``price_out``."""
    if value is None:
        return "n/a"
    return f"${value:.4g}" if value < 1000 else f"${value:,.2f}"


def format_flops(value: float | None) -> str:
    """``1.23e+12 FLOPs``."""
    return "n/a" if value is None else f"{value:.3g} FLOPs"


def _int(d: Mapping[str, Any], key: str) -> int:
    value = d.get(key)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def cost_rows(ledger: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The report's cost table from a ``ledger.json`` dict (:meth:`equal.llm.Ledger.to_dict` plus the loop's keys).

    Parameters
    ----------
    ledger : mapping
        ``requests``, ``sent``, ``cached``, ``failed``, ``tokens_in``, ``tokens_out``, ``seconds``,
        ``price_in_per_1m``, ``price_out_per_1m``, ``est_cost``, ``est_flops``, ``n_params``; and from the
        run, ``pairs``, ``cost_per_pair``, ``flops_per_pair``, ``model``. Missing keys count as unknown.

    Returns
    -------
    list of (str, str)
        Label and formatted value, in display order.
    """
    requests, cached = _int(ledger, "requests"), _int(ledger, "cached")
    sent = _int(ledger, "sent") if "sent" in ledger else requests - cached
    p_in, p_out = ledger.get("price_in_per_1m"), ledger.get("price_out_per_1m")
    no_price = "n/a (set [llm] price_in / price_out)"
    rows: list[tuple[str, str]] = []
    if ledger.get("model"):
        rows.append(("Model", str(ledger["model"])))
    rows += [
        ("LLM requests", f"{requests:,} ({sent:,} sent, {cached:,} from the cache, {_int(ledger, 'failed'):,} failed)"),
        ("Tokens in / out", f"{_int(ledger, 'tokens_in'):,} / {_int(ledger, 'tokens_out'):,}"
                            + (" (some counted locally)" if _int(ledger, "tokens_estimated") else "")),
        ("LLM seconds", f"{float(ledger.get('seconds') or 0.0):,.1f}"),
        ("Price per 1M tokens in / out", no_price if p_in is None and p_out is None
         else f"{format_money(p_in or 0.0)} / {format_money(p_out or 0.0)}"),
        ("Estimated cost", no_price if ledger.get("est_cost") is None else format_money(ledger["est_cost"])),
        ("Pairs kept", f"{_int(ledger, 'pairs'):,}" if "pairs" in ledger else "n/a"),
        ("Cost per kept pair", format_money(ledger.get("cost_per_pair"))),
        ("Estimated FLOPs", format_flops(ledger.get("est_flops")) if ledger.get("est_flops") is not None
         else "n/a (model size unknown)"),
        ("FLOPs per kept pair", format_flops(ledger.get("flops_per_pair"))),
    ]
    return rows
