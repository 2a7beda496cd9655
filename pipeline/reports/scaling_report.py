"""scaled.html and merge.html: the plots of dials.scale.html / dials.merge.html as inline SVG.

Rendered from the same data the logs print: the merging statistics (CC½, I/σ, completeness and
multiplicity against resolution, plotted on a 1/d² axis labelled in Å), and for scaling the report
dict built by ``pipeline.steps.scale`` with the keys

- ``models``: per crystal ``{"label", "image", "scale", "b_factor"}`` (model curves against image) and
  optionally ``"r_merge_image", "r_merge"`` (Rmerge of each image's observations);
- ``filtering`` (optional): ``{"delta_cc_half": [...], "cutoff": x (first cycle), "mode": ..., "cycles": [...],
  "removed_image_ranges": [[label, first, last], ...], "removed_datasets": [label, ...]}``;
- ``error_model`` (optional): ``{"a", "b", "normal_quantiles": [...], "deviations": [...]}`` (sorted).
"""
from __future__ import annotations

import numpy as np

from algorithms.merging import MergingStatistics, format_merging_statistics_table
from pipeline.reports.html import (Axes, Series, histogram_svg, page_html, plot_svg, plots_html, preformatted_html,
                                   resolution_tick_format, table_html)


def merging_statistics_plots(stats: MergingStatistics) -> str:
    """CC½ (and CC*), ⟨I/σ⟩, completeness and multiplicity against resolution."""
    x = np.array([0.5 * (b.d_max ** -2.0 + b.d_min ** -2.0) for b in stats.bins])
    get = lambda name: np.array([getattr(b, name) for b in stats.bins], float)
    axes = lambda title, y_label, y_range=(None, None): Axes(title, "Resolution (Å)", y_label, resolution_tick_format,
                                                             y_range=y_range)
    return plots_html([
        plot_svg([Series("CC½", x, get("cc_half")), Series("CC*", x, get("cc_star")),
                  Series("CC½ (σ-τ)", x, get("cc_half_sigma_tau"))], axes("CC½ vs resolution", "CC", (None, 1.0))),
        plot_svg([Series("<I/σ>", x, get("i_over_sigma"))], axes("<I/σ(I)> vs resolution", "<I/σ(I)>")),
        plot_svg([Series("completeness", x, get("completeness")), Series("anomalous", x, get("anom_completeness"))],
                 axes("Completeness vs resolution", "Completeness (%)", (0.0, 100.0))),
        plot_svg([Series("multiplicity", x, get("multiplicity")), Series("anomalous", x, get("anom_multiplicity"))],
                 axes("Multiplicity vs resolution", "Multiplicity", (0.0, None))),
    ])


def _model_plots(models: list[dict]) -> str:
    scale = [Series(m["label"], m["image"], m["scale"]) for m in models]
    decay = [Series(m["label"], m["image"], m["b_factor"]) for m in models if m.get("b_factor") is not None]
    svgs = [plot_svg(scale, Axes("Scale term vs image", "Image", "Scale C"))]
    if decay:
        svgs.append(plot_svg(decay, Axes("Relative B vs image", "Image", "B (Å²)")))
    r_merge = [Series(m["label"], m["r_merge_image"], m["r_merge"]) for m in models if m.get("r_merge") is not None]
    if r_merge:
        svgs.append(plot_svg(r_merge, Axes("Rmerge vs image", "Image", "Rmerge", y_range=(0.0, None))))
    return plots_html(svgs)


def _filtering_section(filtering: dict) -> str:
    values = np.asarray(filtering["delta_cc_half"], float) * 100
    cutoff = filtering["cutoff"] * 100
    histogram = histogram_svg(values, Axes(f"ΔCC½ of {filtering['mode']} groups (first cycle)", "ΔCC½ × 100", "Groups",
                                           vertical_lines=[(cutoff, "cutoff")]), n_bins=40)
    per_group = plot_svg([Series("ΔCC½", np.arange(len(values)), values, kind="points"),
                          Series("cutoff", [0, max(len(values) - 1, 1)], [cutoff, cutoff])],
                         Axes("ΔCC½ per group (first cycle)", "Group (crystal by crystal, image order)", "ΔCC½ × 100"))
    parts = [plots_html([histogram, per_group])]
    if filtering.get("cycles"):
        parts.append(table_html(["Cycle", "Reflections removed", "Cumulative % removed", "CC½", "Completeness (%)"],
                                [[c["cycle"], c["n_removed"], f"{c['cumulative_percent_removed']:.2f}",
                                  f"{c['cc_half']:.4f}", f"{c['completeness']:.1f}"] for c in filtering["cycles"]]))
    removed = filtering.get("removed_image_ranges", [])
    parts.append("<p>Removed image ranges:</p>" + (table_html(["Crystal", "First image", "Last image"], removed)
                                                   if removed else "<p>none</p>"))
    crystals = filtering.get("removed_datasets", [])
    parts.append("<p>Removed crystals (non-isomorphous or ΔCC½ outliers): "
                 + (", ".join(map(str, crystals)) if crystals else "none") + "</p>")
    return "".join(parts)


def _error_model_section(error_model: dict) -> str:
    x, y = np.asarray(error_model["normal_quantiles"], float), np.asarray(error_model["deviations"], float)
    lo, hi = (float(np.nanmin(x)), float(np.nanmax(x))) if len(x) else (-3.0, 3.0)
    plot = plot_svg([Series("normalised deviations", x, y, kind="points"), Series("ideal", [lo, hi], [lo, hi])],
                    Axes("Normal probability plot (error model)", "Expected normal quantile", "Normalised deviation δ"))
    return (f"<p>Error model: σ'² = a²(σ² + (bI)²), a = {error_model['a']:.5f}, b = {error_model['b']:.5f}</p>"
            + plots_html([plot]))


def scaling_report_html(stats: MergingStatistics, report: dict) -> str:
    """The scaled.html document."""
    sections = [("Merging statistics", merging_statistics_plots(stats)
                 + preformatted_html(format_merging_statistics_table(stats))),
                ("Scaling models", _model_plots(report["models"]))]
    if report.get("filtering"):
        sections.append(("ΔCC½ filtering", _filtering_section(report["filtering"])))
    if report.get("error_model"):
        sections.append(("Error model", _error_model_section(report["error_model"])))
    return page_html("ewald scale report", sections)


def merging_report_html(stats: MergingStatistics) -> str:
    """The merge.html document."""
    return page_html("ewald merge report", [("Merging statistics", merging_statistics_plots(stats)
                                              + preformatted_html(format_merging_statistics_table(stats)))])
