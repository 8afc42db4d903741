"""Small dependency-free SVG charts for the HTML report: line, bar, stacked bar, heat map, scatter, histogram."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

__all__ = ["bar_chart", "heatmap", "histogram", "line_chart", "scatter", "stacked_bars"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _fmt(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:.3g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.3g}k"
    if abs(v) >= 1e3:
        return f"{v:.0f}"
    return f"{v:.3g}"


def line_chart(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = 560,
    height: int = 300,
    marks: Sequence[tuple[float, str]] = (),
) -> str:
    """Return an ``<svg>`` element plotting each named ``(x, y)`` series as a line with markers.

    ``marks`` are ``(x, label)`` pairs drawn as dashed vertical lines (the end of a first pass, say).
    """
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys, strict=True)
              if math.isfinite(x) and math.isfinite(y)]
    # the legend sits above the plot, one line per series, so it never hides a point
    left, right, top, bottom = 60, 20, 30 + 14 * len(series), 45
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>']
    if not points:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(out)
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in _ticks(x0, x1):
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{_fmt(t)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + ph / 2})">{html.escape(ylabel)}</text>')
    for mx, label in marks:
        if x0 <= mx <= x1:
            out.append(f'<line x1="{sx(mx):.1f}" x2="{sx(mx):.1f}" y1="{top}" y2="{top + ph}" stroke="#888" '
                       f'stroke-dasharray="4 3"/><text x="{sx(mx) + 4:.1f}" y="{top + 12}" fill="#555">'
                       f'{html.escape(label)}</text>')
    for i, (name, (xs, ys)) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]
        pts = [(sx(x), sy(y)) for x, y in zip(xs, ys, strict=True) if math.isfinite(x) and math.isfinite(y)]
        if pts:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
            out.extend(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="2.5" fill="{color}"/>' for px, py in pts)
        out.append(f'<rect x="{left}" y="{24 + 14 * i}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{left + 14}" y="{33 + 14 * i}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    ylabel: str,
    width: int = 560,
    height: int = 300,
) -> str:
    """Return an ``<svg>`` bar chart of ``values`` (one bar per label)."""
    left, right, top, bottom = 60, 20, 30, 45
    pw, ph = width - left - right, height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>']
    if not values:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(out)
    lo, hi = min(0.0, min(values)), max(0.0, max(values))
    if hi == lo:
        hi = lo + 1

    def sy(y: float) -> float:
        return top + (1 - (y - lo) / (hi - lo)) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for t in _ticks(lo, hi):
        out.append(f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    bw = pw / len(values)
    step = max(1, len(labels) // 20)
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        y_top, y_bot = sorted((sy(v), sy(0.0)))
        out.append(f'<rect x="{left + i * bw + 1:.1f}" y="{y_top:.1f}" width="{max(bw - 2, 1):.1f}" '
                   f'height="{max(y_bot - y_top, 0.5):.1f}" fill="{_COLORS[0]}"><title>{html.escape(label)}: '
                   f'{_fmt(v)}</title></rect>')
        if i % step == 0:
            out.append(f'<text x="{left + (i + 0.5) * bw:.1f}" y="{top + ph + 14}" '
                       f'text-anchor="middle">{html.escape(label)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + ph / 2})">{html.escape(ylabel)}</text></svg>')
    return "".join(out)


def _frame(width: int, height: int, title: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="sans-serif" font-size="11">',
            f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{html.escape(title)}</text>']


def _no_data(out: list[str], width: int, height: int, note: str = "no data") -> str:
    out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">{html.escape(note)}</text></svg>')
    return "".join(out)


def _heat_color(t: float) -> str:
    """White (0) to dark blue (1)."""
    t = min(max(t, 0.0), 1.0)
    r, g, b = (int(255 + (c - 255) * t) for c in (8, 48, 107))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(
    values: Sequence[Sequence[float]],
    *,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    xlabel: str,
    ylabel: str,
    cell: int = 18,
) -> str:
    """Return an ``<svg>`` heat map: ``values[i][j]`` is row ``i``, column ``j`` (white 0 to dark blue max).

    Each cell carries a ``<title>`` tooltip with its row, column and value; a cell's value is printed in it
    when the cells are large enough.
    """
    n_rows, n_cols = len(row_labels), len(col_labels)
    left, top, bottom, right = 70, 30, 45, 70
    width = max(440, left + right + n_cols * cell)
    height = top + bottom + n_rows * cell
    out = _frame(width, height, title)
    if not n_rows or not n_cols:
        return _no_data(out, width, max(height, 80))
    hi = max((v for row in values for v in row if math.isfinite(v)), default=0.0) or 1.0
    for i, row in enumerate(values):
        y = top + i * cell
        for j, v in enumerate(row):
            x = left + j * cell
            label = f"{html.escape(ylabel)} {html.escape(row_labels[i])}, {html.escape(xlabel)} " \
                    f"{html.escape(col_labels[j])}: {_fmt(v)}"
            out.append(f'<rect x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" '
                       f'fill="{_heat_color(v / hi)}" stroke="#eee"><title>{label}</title></rect>')
            if v and cell >= 16:
                color = "#fff" if v / hi > 0.55 else "#222"
                out.append(f'<text x="{x + cell / 2 - 0.5:.1f}" y="{y + cell / 2 + 3.5:.1f}" font-size="9" '
                           f'text-anchor="middle" fill="{color}">{_fmt(v)}</text>')
    rstep = max(1, n_rows // 40)
    for i in range(0, n_rows, rstep):
        out.append(f'<text x="{left - 4}" y="{top + i * cell + cell / 2 + 4:.1f}" text-anchor="end">'
                   f'{html.escape(row_labels[i])}</text>')
    cstep = max(1, n_cols // 30)
    for j in range(0, n_cols, cstep):
        out.append(f'<text x="{left + j * cell + cell / 2:.1f}" y="{top + n_rows * cell + 12}" '
                   f'text-anchor="middle">{html.escape(col_labels[j])}</text>')
    out.append(f'<text x="{left + n_cols * cell / 2:.1f}" y="{height - 8}" text-anchor="middle">'
               f'{html.escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{top + n_rows * cell / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + n_rows * cell / 2:.1f})">{html.escape(ylabel)}</text>')
    # legend: 0 .. max (whole steps when every value is a count)
    lx = left + n_cols * cell + 12
    counts = all(float(v).is_integer() for row in values for v in row if math.isfinite(v))
    steps = sorted({round(hi * k / 4) for k in range(5)}) if counts else [hi * k / 4 for k in range(5)]
    for k, v in enumerate(steps):
        out.append(f'<rect x="{lx}" y="{top + k * 14}" width="12" height="12" fill="{_heat_color(v / hi)}" '
                   f'stroke="#ccc"/><text x="{lx + 16}" y="{top + k * 14 + 10}">{_fmt(v)}</text>')
    out.append("</svg>")
    return "".join(out)


def scatter(
    layers: Sequence[dict[str, object]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = 560,
    height: int = 420,
) -> str:
    """Return an ``<svg>`` scatter plot of several point layers, drawn in order (later layers on top).

    Each layer is a dict with ``name`` (str), ``x`` and ``y`` (sequences of float), and optionally ``color``
    (str), ``r`` (a radius, or a sequence of radii), ``labels`` (one tooltip per point), ``shape``
    (``"circle"``, ``"star"`` or ``"square"``) and ``text`` (a sequence of labels drawn next to the points).
    """
    pts = [(float(x), float(y)) for layer in layers for x, y in zip(layer["x"], layer["y"], strict=True)  # type: ignore[call-overload]
           if math.isfinite(float(x)) and math.isfinite(float(y))]
    # the legend sits above the plot, one line per layer, so it never hides a point
    left, right, top, bottom = 50, 20, 30 + 14 * len(layers), 45
    out = _frame(width, height, title)
    if not pts:
        return _no_data(out, width, height)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - 1, y1 + 1
    px, py = (x1 - x0) * 0.06, (y1 - y0) * 0.06
    x0, x1, y0, y1 = x0 - px, x1 + px, y0 - py, y1 + py
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for i, layer in enumerate(layers):
        color = str(layer.get("color", _COLORS[i % len(_COLORS)]))
        xs, ys = list(layer["x"]), list(layer["y"])  # type: ignore[call-overload]
        radii = layer.get("r", 3.0)
        rs = list(radii) if isinstance(radii, Sequence) else [float(radii)] * len(xs)  # type: ignore[arg-type]
        labels = list(layer.get("labels", [""] * len(xs)))  # type: ignore[call-overload]
        texts = list(layer.get("text", []))  # type: ignore[call-overload]
        shape = layer.get("shape", "circle")
        opacity = float(layer.get("opacity", 0.8))  # type: ignore[arg-type]
        for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
            if not (math.isfinite(float(x)) and math.isfinite(float(y))):
                continue
            cx, cy, r = sx(float(x)), sy(float(y)), float(rs[k])
            tip = f"<title>{html.escape(str(labels[k]))}</title>" if labels[k] else ""
            if shape == "star":
                pts_s = " ".join(
                    f"{cx + (r if j % 2 == 0 else r / 2.5) * math.sin(j * math.pi / 5):.1f},"
                    f"{cy - (r if j % 2 == 0 else r / 2.5) * math.cos(j * math.pi / 5):.1f}" for j in range(10))
                out.append(f'<polygon points="{pts_s}" fill="{color}" stroke="#000" stroke-width="0.8">{tip}'
                           "</polygon>")
            elif shape == "square":
                out.append(f'<rect x="{cx - r:.1f}" y="{cy - r:.1f}" width="{2 * r:.1f}" height="{2 * r:.1f}" '
                           f'fill="{color}" fill-opacity="{opacity}">{tip}</rect>')
            else:
                out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="{r:.1f}" fill="{color}" '
                           f'fill-opacity="{opacity}" stroke="#333" stroke-width="0.4">{tip}</circle>')
            if k < len(texts) and texts[k]:
                out.append(f'<text x="{cx + r + 2:.1f}" y="{cy + 4:.1f}" font-size="10">'
                           f'{html.escape(str(texts[k]))}</text>')
        out.append(f'<rect x="{left}" y="{24 + 14 * i}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{left + 14}" y="{33 + 14 * i}">{html.escape(str(layer["name"]))}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + ph / 2})">{html.escape(ylabel)}</text></svg>')
    return "".join(out)


def histogram(
    series: dict[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    bins: int = 20,
    width: int = 560,
    height: int = 300,
) -> str:
    """Return an ``<svg>`` histogram: one outlined step curve per named series, on shared bins.

    The bins are equal-width over the range of all values together, so the series are comparable.
    """
    values = [float(v) for vs in series.values() for v in vs if math.isfinite(float(v))]
    out = _frame(width, height, title)
    if not values:
        return _no_data(out, width, height)
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    counts: dict[str, list[int]] = {}
    for name, vs in series.items():
        c = [0] * bins
        for v in vs:
            if math.isfinite(float(v)):
                c[min(int((float(v) - lo) / (hi - lo) * bins), bins - 1)] += 1
        counts[name] = c
    left, right, top, bottom = 60, 20, 30, 45
    pw, ph = width - left - right, height - top - bottom
    cmax = max((max(c) for c in counts.values()), default=1) or 1

    def sx(x: float) -> float:
        return left + (x - lo) / (hi - lo) * pw

    def sy(y: float) -> float:
        return top + (1 - y / cmax) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for t in _ticks(0, cmax):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in _ticks(lo, hi):
        out.append(f'<text x="{sx(t):.1f}" y="{top + ph + 14}" text-anchor="middle">{_fmt(t)}</text>')
    for i, (name, c) in enumerate(counts.items()):
        color = _COLORS[i % len(_COLORS)]
        path = [f"M{sx(lo):.1f},{sy(0):.1f}"]
        for k, n in enumerate(c):
            path.append(f"L{sx(edges[k]):.1f},{sy(n):.1f}L{sx(edges[k + 1]):.1f},{sy(n):.1f}")
        path.append(f"L{sx(hi):.1f},{sy(0):.1f}")
        out.append(f'<path d="{"".join(path)}" fill="{color}" fill-opacity="0.15" stroke="{color}" '
                   f'stroke-width="1.5"><title>{html.escape(name)}: {sum(c)} values</title></path>')
        out.append(f'<text x="{left + pw - 22}" y="{top + 17 + 14 * i}" text-anchor="end">{html.escape(name)} '
                   f'(n={sum(c)})</text><rect x="{left + pw - 18}" y="{top + 8 + 14 * i}" width="10" height="10" '
                   f'fill="{color}"/>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + ph / 2})">count</text></svg>')
    return "".join(out)


def stacked_bars(
    labels: Sequence[str],
    stacks: dict[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = 560,
    height: int = 300,
) -> str:
    """Return an ``<svg>`` stacked bar chart: one bar per label, one coloured segment per named stack."""
    out = _frame(width, height, title)
    n = len(labels)
    totals = [sum(float(s[i]) for s in stacks.values()) for i in range(n)]
    if not n or not any(totals):
        return _no_data(out, width, height, "nothing dropped" if n else "no data")
    left, right, top, bottom = 60, 150, 30, 45
    pw, ph = width - left - right, height - top - bottom
    hi = max(totals)

    def sy(y: float) -> float:
        return top + (1 - y / hi) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for t in _ticks(0, hi):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    bw = pw / n
    colors = {name: _COLORS[k % len(_COLORS)] if k < len(_COLORS) else f"hsl({(k * 47) % 360},55%,50%)"
              for k, name in enumerate(stacks)}
    for i in range(n):
        base = 0.0
        for name, s in stacks.items():
            v = float(s[i])
            if v:
                out.append(f'<rect x="{left + i * bw + 1:.1f}" y="{sy(base + v):.1f}" width="{max(bw - 2, 1):.1f}" '
                           f'height="{sy(base) - sy(base + v):.1f}" fill="{colors[name]}"><title>'
                           f'{html.escape(xlabel)} {html.escape(labels[i])}: {html.escape(name)} {_fmt(v)}'
                           "</title></rect>")
            base += v
    step = max(1, n // 20)
    for i in range(0, n, step):
        out.append(f'<text x="{left + (i + 0.5) * bw:.1f}" y="{top + ph + 14}" text-anchor="middle">'
                   f'{html.escape(labels[i])}</text>')
    for k, name in enumerate(stacks):
        out.append(f'<rect x="{left + pw + 10}" y="{top + 14 * k}" width="10" height="10" fill="{colors[name]}"/>'
                   f'<text x="{left + pw + 24}" y="{top + 9 + 14 * k}">{html.escape(name)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + ph / 2})">{html.escape(ylabel)}</text></svg>')
    return "".join(out)
