"""Inline-SVG report helper: ticks, coordinates of plotted points, self-contained pages."""
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from pipeline.reports.html import (Axes, Series, histogram_svg, nice_ticks, page_html, plot_svg, resolution_tick_format,
                                   table_html)

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("low, high, expected", [(0, 1, [0, 0.2, 0.4, 0.6, 0.8, 1.0]), (0.93, 1.0, None),
                                                 (-3.2, 7.9, [-2, 0, 2, 4, 6]), (0, 72, [0, 20, 40, 60])])
def test_nice_ticks_are_round_and_inside_the_range(low, high, expected):
    ticks = nice_ticks(low, high)
    assert ticks.min() >= low - 1e-9 and ticks.max() <= high + 1e-9 and 3 <= len(ticks) <= 12
    step = np.diff(ticks)
    np.testing.assert_allclose(step, step[0])
    mantissa = step[0] / 10 ** np.floor(np.log10(step[0]))
    assert any(np.isclose(mantissa, m) for m in (1, 2, 2.5, 5))
    if expected is not None:
        np.testing.assert_allclose(ticks, expected, atol=1e-12)


def test_line_plot_places_points_linearly_and_is_valid_svg():
    svg = plot_svg([Series("a", [0, 1, 2], [0, 5, 10]), Series("b", [0, 2], [10, np.nan])],
                   Axes("Title", "x label", "y label", y_range=(0, 10), x_range=(0, 2)))
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert {"Title", "x label", "y label", "a", "b"} <= set(texts)
    lines = list(root.iter(f"{SVG}polyline"))
    assert len(lines) == 2  # the NaN point is dropped, leaving one point in "b"
    points = np.array([p.split(",") for p in lines[0].get("points").split()], float)
    frame = next(root.iter(f"{SVG}rect"))
    x0, y0, w, h = (float(frame.get(k)) for k in ("x", "y", "width", "height"))
    np.testing.assert_allclose(points[:, 0], [x0, x0 + w / 2, x0 + w], atol=0.06)
    np.testing.assert_allclose(points[:, 1], [y0 + h, y0 + h / 2, y0], atol=0.06)


def test_histogram_counts_and_page_is_self_contained():
    values = np.concatenate([np.zeros(7), np.ones(3)])
    svg = histogram_svg(values, Axes("H", "value", "count"), n_bins=2)
    bars = [r for r in ET.fromstring(svg).iter(f"{SVG}rect") if r.get("fill-opacity")]
    heights = sorted(float(b.get("height")) for b in bars)
    assert len(bars) == 2 and heights[1] / heights[0] == pytest.approx(7 / 3, rel=1e-3)
    page = page_html("Report <1>", [("Plots", svg), ("Table", table_html(["a", "b"], [[1, "x&y"]]))])
    assert page.startswith("<!DOCTYPE html>") and "Report &lt;1&gt;" in page and "x&amp;y" in page
    assert "<script" not in page and not re.search(r"(src|href)=", page)
    assert resolution_tick_format(1 / 9) == "3.00" and resolution_tick_format(0) == "∞"
