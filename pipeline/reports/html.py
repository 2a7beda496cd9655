"""Self-contained HTML reports: inline SVG plots and tables, no scripts, no network resources.

Every plot is a plain ``<svg>`` element (line, point and bar series on linear axes with "nice"
ticks, axis labels and a legend), so a report is one file that opens offline in any browser and
can be archived with the data. Values that are NaN or infinite are left out of a series.
"""
from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
_STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.6em}
.plots{display:flex;flex-wrap:wrap;gap:12px}
table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f0f0f0}
pre{font-size:0.8em;background:#f8f8f8;padding:0.6em;overflow-x:auto}
svg text{font-family:sans-serif}"""


@dataclass
class Series:
    """One data series: ``kind`` is "line", "points" or "bars" (``width`` = bar widths in x units)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    kind: str = "line"
    colour: str | None = None
    width: Sequence[float] | None = None


@dataclass
class Axes:
    title: str
    x_label: str
    y_label: str
    x_tick_format: Callable[[float], str] | None = None
    y_range: tuple[float | None, float | None] = (None, None)
    x_range: tuple[float | None, float | None] = (None, None)
    vertical_lines: list[tuple[float, str]] = field(default_factory=list)  # (x, label)


def nice_ticks(low: float, high: float, target: int = 6) -> np.ndarray:
    """Round tick values (1, 2, 2.5, 5 × 10^k steps) covering [low, high]."""
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return np.array([low]) if math.isfinite(low) else np.array([0.0])
    raw = (high - low) / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return np.arange(first, high + step * 1e-6, step)


def _format_tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def _finite(series: Series) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    x, y = np.asarray(series.x, float), np.asarray(series.y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    width = None if series.width is None else np.asarray(series.width, float)[keep]
    return x[keep], y[keep], width


def _range(values: list[np.ndarray], fixed: tuple[float | None, float | None], pad_zero: bool) -> tuple[float, float]:
    data = np.concatenate(values) if values else np.zeros(0)
    low = fixed[0] if fixed[0] is not None else (float(data.min()) if len(data) else 0.0)
    high = fixed[1] if fixed[1] is not None else (float(data.max()) if len(data) else 1.0)
    if pad_zero and fixed[0] is None:
        low = min(low, 0.0)
    if high <= low:
        span = abs(low) * 0.1 or 1.0
        low, high = low - span, high + span
    return low, high


def plot_svg(series: Sequence[Series], axes: Axes, width: int = 560, height: int = 330) -> str:
    """An SVG plot of the series on shared linear axes."""
    left, right, top, bottom = 64, 16, 30, 48
    legend_height = 16 * ((len(series) + 2) // 3) if len(series) > 1 else 0
    height += legend_height
    plot_w, plot_h = width - left - right, height - top - bottom - legend_height
    finite = [_finite(s) for s in series]
    xs = [x for x, _, _ in finite] + [x - w / 2 for (x, _, w), s in zip(finite, series) if w is not None] \
        + [x + w / 2 for (x, _, w), s in zip(finite, series) if w is not None]
    x_lo, x_hi = _range(xs, axes.x_range, pad_zero=False)
    y_lo, y_hi = _range([y for _, y, _ in finite], axes.y_range, pad_zero=any(s.kind == "bars" for s in series))
    sx = lambda v: left + (v - x_lo) / (x_hi - x_lo) * plot_w
    sy = lambda v: top + plot_h - (v - y_lo) / (y_hi - y_lo) * plot_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" role="img">',
           f'<title>{html.escape(axes.title)}</title>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">'
           f'{html.escape(axes.title)}</text>',
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>']
    x_format = axes.x_tick_format or _format_tick
    for tick in nice_ticks(x_lo, x_hi):
        px = sx(tick)
        out.append(f'<line x1="{px:.1f}" y1="{top + plot_h}" x2="{px:.1f}" y2="{top + plot_h + 5}" stroke="#444"/>'
                   f'<text x="{px:.1f}" y="{top + plot_h + 18}" text-anchor="middle" font-size="11">'
                   f'{html.escape(x_format(tick))}</text>')
    for tick in nice_ticks(y_lo, y_hi):
        py = sy(tick)
        out.append(f'<line x1="{left - 5}" y1="{py:.1f}" x2="{left + plot_w}" y2="{py:.1f}" stroke="#e4e4e4"/>'
                   f'<text x="{left - 8}" y="{py + 4:.1f}" text-anchor="end" font-size="11">{_format_tick(tick)}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 38}" text-anchor="middle" font-size="12">'
               f'{html.escape(axes.x_label)}</text>')
    out.append(f'<text transform="translate(14,{top + plot_h / 2}) rotate(-90)" text-anchor="middle" font-size="12">'
               f'{html.escape(axes.y_label)}</text>')
    out.append(f'<clipPath id="c{id(axes)}"><rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/></clipPath>')
    out.append(f'<g clip-path="url(#c{id(axes)})">')
    for index, (s, (x, y, w)) in enumerate(zip(series, finite)):
        colour = s.colour or PALETTE[index % len(PALETTE)]
        if s.kind == "bars":
            w = w if w is not None else np.full(len(x), (x_hi - x_lo) / max(len(x), 1))
            base = sy(max(y_lo, 0.0))
            for xi, yi, wi in zip(x, y, w):
                x0, x1, y1 = sx(xi - wi / 2), sx(xi + wi / 2), sy(yi)
                out.append(f'<rect x="{x0:.1f}" y="{min(y1, base):.1f}" width="{max(x1 - x0 - 0.5, 0.5):.1f}" '
                           f'height="{abs(base - y1):.1f}" fill="{colour}" fill-opacity="0.75"/>')
        elif s.kind == "points":
            out += [f'<circle cx="{sx(xi):.1f}" cy="{sy(yi):.1f}" r="2" fill="{colour}"/>' for xi, yi in zip(x, y)]
        elif len(x):
            points = " ".join(f"{sx(xi):.1f},{sy(yi):.1f}" for xi, yi in zip(x, y))
            out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.8"/>')
    for x_line, label in axes.vertical_lines:
        px = sx(x_line)
        out.append(f'<line x1="{px:.1f}" y1="{top}" x2="{px:.1f}" y2="{top + plot_h}" stroke="#000" '
                   f'stroke-dasharray="4,3"/><text x="{px + 3:.1f}" y="{top + 12}" font-size="10">{html.escape(label)}</text>')
    out.append("</g>")
    if len(series) > 1:
        for index, s in enumerate(series):
            colour = s.colour or PALETTE[index % len(PALETTE)]
            lx = left + (index % 3) * (plot_w / 3)
            ly = top + plot_h + bottom + 16 * (index // 3) + 2
            out.append(f'<rect x="{lx:.1f}" y="{ly - 9}" width="10" height="10" fill="{colour}"/>'
                       f'<text x="{lx + 14:.1f}" y="{ly}" font-size="11">{html.escape(s.label)}</text>')
    out.append("</svg>")
    return "".join(out)


def histogram_svg(values: Sequence[float], axes: Axes, n_bins: int = 30, colour: str | None = None) -> str:
    """A histogram of the finite ``values`` as bars."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return plot_svg([], axes)
    counts, edges = np.histogram(v, bins=n_bins)
    centres, widths = 0.5 * (edges[:-1] + edges[1:]), np.diff(edges)
    return plot_svg([Series("count", centres, counts, kind="bars", colour=colour, width=widths)], axes)


def table_html(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def preformatted_html(text: str) -> str:
    return f"<pre>{html.escape(text)}</pre>"


def plots_html(svgs: Sequence[str]) -> str:
    return '<div class="plots">' + "".join(svgs) + "</div>"


def page_html(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A complete HTML document: a title and (heading, HTML body) sections."""
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<h2>{html.escape(heading)}</h2>{body}" for heading, body in sections]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def resolution_tick_format(inverse_d_squared: float) -> str:
    """Tick label in Å for an axis in 1/d²."""
    return "∞" if inverse_d_squared <= 0 else f"{1 / math.sqrt(inverse_d_squared):.2f}"
