"""Text tables of merging statistics in the layout DIALS prints (dials.scale / dials.merge logs)."""
from __future__ import annotations

from algorithms.merging.statistics import BinStatistics, MergingStatistics

_BIN_HEADER = (" d_max  d_min   #obs  #uniq   mult.  %comp       <I>  <I/sI>    r_mrg   r_meas    r_pim"
               "   r_anom   cc1/2   cc_ano")

_SUMMARY_ROWS = [  # (label, attribute, format, one value per column (else overall only))
    ("High resolution limit", "d_min", " %7.2f", True),
    ("Low resolution limit", "d_max", " %7.2f", True),
    ("Completeness", "completeness", "%7.1f", True),
    ("Multiplicity", "multiplicity", "%7.1f", True),
    ("I/sigma", "i_over_sigma", "%7.1f", True),
    ("Rmerge(I)", "r_merge", "%7.3f", True),
    ("Rmerge(I+/-)", "r_merge_anom", "%7.3f", True),
    ("Rmeas(I)", "r_meas", "%7.3f", True),
    ("Rmeas(I+/-)", "r_meas_anom", "%7.3f", True),
    ("Rpim(I)", "r_pim", "%7.3f", True),
    ("Rpim(I+/-)", "r_pim_anom", "%7.3f", True),
    ("CC half", "cc_half", "%7.3f", True),
    ("Anomalous completeness", "anom_completeness", "%7.1f", True),
    ("Anomalous multiplicity", "anom_multiplicity", "%7.1f", True),
    ("Anomalous correlation", "anom_cc", "%7.3f", True),
    ("Anomalous slope", "anomalous_slope", "%7.3f", False),
    ("dF/F", "anomalous_signal", "%7.3f", False),
    ("dI/s(dI)", "delta_i_over_sigma", "%7.3f", False),
    ("Total observations", "n_obs", "%7d", True),
    ("Total unique", "n_unique", "%7d", True),
]


_BIN_TITLE = " " * 12 + "----------Merging statistics by resolution bin----------"
_SUMMARY_TITLE = " " * 12 + "-------------Summary of merging statistics--------------"


def format_bin_row(b: BinStatistics) -> str:
    cc_mark = "*" if b.cc_half_significant else " "
    ano_mark = "*" if b.anom_cc_significant else ""
    return ("%6.2f %6.2f %6d %6d   %5.2f %6.2f  %8.1f  %6.1f  %7.3f  %7.3f  %7.3f  %7.3f  %6.3f%s  %6.3f%s" % (
        b.d_max, b.d_min, b.n_obs, b.n_unique, b.multiplicity, b.completeness, b.mean_intensity, b.i_over_sigma,
        b.r_merge, b.r_meas, b.r_pim, b.r_anom, b.cc_half, cc_mark, b.anom_cc, ano_mark)).rstrip()


def format_merging_statistics_table(stats: MergingStatistics) -> str:
    """'Merging statistics by resolution bin' followed by 'Summary of merging statistics'."""
    lines = [_BIN_TITLE, "", _BIN_HEADER]
    lines += [format_bin_row(b) for b in stats.bins]
    lines.append(format_bin_row(stats.overall))
    lines += ["", "", _SUMMARY_TITLE, ""]
    lines.append("".ljust(44) + " Overall    Low     High")
    columns = (stats.overall, stats.bins[0], stats.bins[-1])
    for label, attribute, fmt, three in _SUMMARY_ROWS:
        if three:
            values = [getattr(c, attribute) for c in columns]
            formats = [fmt] + [fmt.strip()] * 2
        else:
            values, formats = [getattr(stats, attribute)], [fmt]
        lines.append(label.ljust(44) + " ".join(f % v for f, v in zip(formats, values)))
    return "\n".join(lines) + "\n"
