"""Log tables of geometry refinement, laid out as DIALS prints them (dials.refine, dials.index,
dials.refine_bravais_settings), rendered from :class:`algorithms.refinement.RefinementResult`.

- :func:`format_table`: the ``tabulate(..., tablefmt="psql")`` layout DIALS uses (numbers
  decimal- or right-aligned, text left-aligned, multi-line headers, ``g``-formatted floats);
- :func:`residual_summary_table`: "Summary statistics for N observations matched to predictions";
- :func:`refinement_steps_table`: "Refinement steps" with the termination reason;
- :func:`rmsds_by_experiment_table`: "RMSDs by experiment" (px, px, images);
- :func:`crystal_model_text`: "Final refined crystal model" (cell with esds such as "99.04(4)",
  U, B, A, "A sampled at N scan points");
- :func:`format_value_with_esd`: cctbx's value(esd) notation;
- :func:`log_refinement`: all of the above for one refinement, to a logger.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from algorithms.geometry.models import Crystal
from algorithms.refinement import RefinementResult

__all__ = [
    "format_table", "residual_summary_table", "refinement_steps_table", "rmsds_by_experiment_table",
    "crystal_model_text", "format_value_with_esd", "log_refinement",
]

# tabulate adds this much room to every header
_HEADER_PADDING = 2

# ------------------------------------------------------------------------------ table layout


def _as_number(cell) -> float | int | None:
    if isinstance(cell, bool):
        return None
    if isinstance(cell, (int, np.integer)):
        return int(cell)
    if isinstance(cell, (float, np.floating)):
        return float(cell)
    try:
        text = str(cell).strip()
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    except ValueError:
        return None


def _decimal_align(texts: list[str]) -> list[str]:
    """Pad on the right so that the decimal points (or the ends of integers) line up."""
    fractions = [len(t) - t.index(".") if "." in t else 0 for t in texts]
    widest = max(fractions, default=0)
    return [t + " " * (widest - f) for t, f in zip(texts, fractions)]


def format_table(headers: Sequence[str], rows: Sequence[Sequence], numalign: str = "decimal",
                 right_aligned_columns: Sequence[int] = ()) -> str:
    """A psql-style table as DIALS prints it with tabulate.

    A column whose cells are all numbers (or numeric text) is numeric: floats are written with
    ``g`` (so "0.0700" shows as "0.07"), aligned on the decimal point (``numalign="decimal"``) or
    to the right (``"right"``); other columns are left-aligned unless listed in
    ``right_aligned_columns``. Headers may span lines ("RMSD_X\\n(mm)").
    """
    n_cols = len(headers)
    columns: list[list[str]] = []
    numeric: list[bool] = []
    for j in range(n_cols):
        cells = [row[j] for row in rows]
        numbers = [_as_number(c) for c in cells]
        is_numeric = bool(cells) and all(v is not None for v in numbers)
        if is_numeric:
            has_float = any(isinstance(v, float) for v in numbers)
            texts = [format(float(v), "g") if has_float else str(v) for v in numbers]
            if numalign == "decimal":
                texts = _decimal_align(texts)
        else:
            texts = [str(c).strip() for c in cells]
        columns.append(texts)
        numeric.append(is_numeric)
    header_lines = [str(h).split("\n") for h in headers]
    n_header_lines = max(len(h) for h in header_lines)
    header_lines = [h + [""] * (n_header_lines - len(h)) for h in header_lines]
    widths = [max([len(t) for t in columns[j]] + [max(len(h) for h in header_lines[j]) + _HEADER_PADDING])
              for j in range(n_cols)]
    right = [numeric[j] or j in right_aligned_columns for j in range(n_cols)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)) + " |"

    border = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    separator = "|" + "+".join("-" * (w + 2) for w in widths) + "|"
    out = [border]
    out += [line([header_lines[j][k] for j in range(n_cols)]) for k in range(n_header_lines)]
    out.append(separator)
    out += [line([columns[j][i] for j in range(n_cols)]) for i in range(len(rows))]
    out.append(border)
    return "\n".join(out)


def _significant(value: float, digits: int) -> str:
    return f"{value:.{digits}g}"


# --------------------------------------------------------------------------- refinement tables


def residual_summary_table(summary: dict) -> str:
    """"Summary statistics for N observations matched to predictions:" and its table."""
    labels = ["Xc - Xo (mm)", "Yc - Yo (mm)", "Phic - Phio (deg)", "X weights", "Y weights", "Phi weights"]
    rows = [[label] + [_significant(v, 4) for v in summary[label]] for label in labels]
    table = format_table(["", "Min", "Q1", "Med", "Q3", "Max"], rows, numalign="right")
    return f"Summary statistics for {summary['nref']} observations matched to predictions:\n{table}"


def refinement_steps_table(history: Sequence[dict], termination: str | None = None) -> str:
    """"Refinement steps:" (Step, Nref, RMSD_X (mm), RMSD_Y (mm), RMSD_Phi (deg)) of one macro-cycle,
    then the engine's termination reason ("RMSD no longer decreasing")."""
    rows = [[h["step"], h["nref"], _significant(h["rmsd_x_mm"], 5), _significant(h["rmsd_y_mm"], 5),
             _significant(h["rmsd_phi_deg"], 5)] for h in history]
    table = format_table(["Step", "Nref", "RMSD_X\n(mm)", "RMSD_Y\n(mm)", "RMSD_Phi\n(deg)"], rows)
    text = f"Refinement steps:\n{table}"
    if termination:
        text += "\n" + termination
    return text


def rmsds_by_experiment_table(rmsds: Sequence[dict], experiment_ids: Sequence[int] | None = None) -> str:
    """"RMSDs by experiment:" from the ``rmsds`` dicts of refinements (one per experiment)."""
    ids = range(len(rmsds)) if experiment_ids is None else experiment_ids
    rows = [[i, r["nref"], _significant(r["x_px"], 5), _significant(r["y_px"], 5), _significant(r["z_images"], 5)]
            for i, r in zip(ids, rmsds)]
    table = format_table(["Exp\nid", "Nref", "RMSD_X\n(px)", "RMSD_Y\n(px)", "RMSD_Z\n(images)"], rows)
    return f"RMSDs by experiment:\n{table}"


# ------------------------------------------------------------------------------ crystal model


def format_value_with_esd(value: float, esd: float | None, minimum: float = 1e-12) -> str:
    """cctbx's "value(esd)" notation: the esd in the last digits shown, with two digits when its
    leading digit is 1 ("77.758(19)", "99.04(4)"); plain ``repr`` if there is no esd."""
    if esd is None or not np.isfinite(esd) or esd <= minimum:
        return repr(float(value))
    precision = -int(round(math.log10(esd)))
    if precision > -1:
        scaled = esd * 10**precision
        if round(scaled, 1) < 2:
            scaled *= 10
            precision += 1
        return f"{value:.{precision}f}({int(round(scaled))})"
    precision += 1
    return f"{round(value, precision):.0f}({int(round(esd, precision))})"


def _matrix_text(label: str, matrix: np.ndarray) -> list[str]:
    rows = [", ".join(f"{v:7.4f}" for v in row) for row in np.asarray(matrix)]
    indent = " " * (4 + len(label) + 1)
    lines = [f"    {label} {{{{{rows[0]}}},"]
    lines.append(f"{indent} {{{rows[1]}}},")
    lines.append(f"{indent} {{{rows[2]}}}}}")
    return lines


def crystal_model_text(crystal: Crystal, cell_esds: Sequence[float] | None = None) -> str:
    """dxtbx's crystal print-out: unit cell (with esds if known), space group, U, B, A = UB and,
    for a scan-varying crystal, "A sampled at N scan points"."""
    cell = crystal.unit_cell.parameters
    esds = list(cell_esds) if cell_esds is not None else [None] * 6
    values = ", ".join(format_value_with_esd(v, e) for v, e in zip(cell, esds))
    lines = ["Crystal:", f"    Unit cell: ({values})", f"    Space group: {crystal.space_group.hm}"]
    lines += _matrix_text("U matrix: ", crystal.U)
    lines += _matrix_text("B matrix: ", crystal.B)
    lines += _matrix_text("A = UB:   ", crystal.A)
    if crystal.num_scan_points:
        lines.append(f"    A sampled at {crystal.num_scan_points} scan points")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ logging


def log_refinement(logger: logging.Logger, result: RefinementResult, experiment_id: int = 0,
                   final_crystal_model: bool = True) -> None:
    """Every table of one refinement, in DIALS' order: per macro-cycle the residual summary and
    the refinement steps, then the RMSDs by experiment and the final crystal model."""
    n_cycles = max((h["macrocycle"] for h in result.history), default=-1) + 1
    for cycle in range(n_cycles):
        if cycle == 1:
            logger.info("\nScan-varying refinement")
        if cycle < len(result.residual_summaries) and result.residual_summaries[cycle]:
            logger.info("\n%s", residual_summary_table(result.residual_summaries[cycle]))
        steps = [h for h in result.history if h["macrocycle"] == cycle]
        # the engine reports only the last macro-cycle's termination
        logger.info("\n%s", refinement_steps_table(steps, result.termination if cycle == n_cycles - 1 else None))
    logger.info("\n%s", rmsds_by_experiment_table([result.rmsds], [experiment_id]))
    if final_crystal_model:
        logger.info("\nFinal refined crystal model:\n%s", crystal_model_text(result.experiment.crystal, result.cell_esds))
