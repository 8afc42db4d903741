"""``CKPT/report.html``: the loss curve and a summary of one training run (one self-contained page)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from equal.report.svg import line_chart

__all__ = ["render_train_report"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:900px;color:#222}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.5em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
pre{background:#f6f6f6;padding:8px;font-size:.85em;overflow:auto}
"""


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def render_train_report(record: dict[str, Any], out: str | Path) -> str:
    """Return the HTML page for a ``train.json`` record (loss per step, summary, configuration)."""
    curve = record.get("loss_curve") or []
    steps = [float(s) for s, _ in curve]
    losses = [float(v) for _, v in curve]
    seconds = float(record.get("seconds") or 0.0)
    tokens = int(record.get("tokens_seen") or 0)
    data = record.get("data") or {}
    summary = [
        ("steps", record.get("steps")),
        ("final loss", f"{record['final_loss']:.4f}" if record.get("final_loss") is not None else ""),
        ("tokens seen", f"{tokens:,}"),
        ("seconds", f"{seconds:.1f}"),
        ("tokens / s", f"{tokens / seconds:,.0f}" if seconds > 0 else ""),
        ("training FLOPs", f"{float(record.get('train_flops') or 0):.3g}"),
        ("device", record.get("device", "")),
        ("base model", record.get("base_model_dir", "")),
        ("data", data.get("path")),
        ("records / skipped / truncated",
         f"{data.get('records')} / {data.get('skipped')} / {data.get('truncated')}"),
        ("data sha256", data.get("sha256")),
    ]
    chart = line_chart({"training loss": (steps, losses)}, title="Training loss (assistant tokens)",
                       xlabel="optimizer step", ylabel="cross-entropy (nats/token)")
    return "\n".join([
        f"<!doctype html><meta charset='utf-8'><title>equal train {html.escape(Path(out).name)}</title>"
        f"<style>{_CSS}</style><h1>equal train: {html.escape(str(out))}</h1>",
        "<h2>Loss</h2>" + chart,
        "<h2>Summary</h2>" + _table(summary),
        "<h2>Configuration</h2><pre>" + html.escape(json.dumps(record.get("config", {}), indent=2)) + "</pre>",
    ])
