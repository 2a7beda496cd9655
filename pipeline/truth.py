"""Comparing a merged MTZ with the simulator's true merged intensities.

Where the lattice has more symmetry than the space group (P4 on a tetragonal lattice, say), the
merged data may be indexed in any of the equivalent ways; every alternative indexing (gemmi's
twin laws of the true cell and space group) is tried and the best-correlating one reported.
"""
from __future__ import annotations

from pathlib import Path

import gemmi
import numpy as np

from algorithms.merging import map_to_asu
from pipeline.errors import InputFileError


def _read(path: str | Path, label: str) -> tuple[gemmi.Mtz, np.ndarray, np.ndarray]:
    try:
        mtz = gemmi.read_mtz_file(str(path))
    except (RuntimeError, OSError) as error:
        raise InputFileError(f"{path}: cannot read the MTZ file ({error})") from None
    if label not in mtz.column_labels():
        raise InputFileError(f"{path}: no {label} column (columns: {' '.join(mtz.column_labels())})")
    hkl = np.asarray(mtz.make_miller_array(), dtype=np.int32)
    values = np.asarray(mtz.column_with_label(label).array, dtype=float)
    return mtz, hkl, values


def _keys(hkl: np.ndarray) -> np.ndarray:
    h = hkl.astype(np.int64) + 512
    return (h[:, 0] << 20) | (h[:, 1] << 10) | h[:, 2]


def compare_with_truth(merged_mtz: str | Path, true_mtz: str | Path, d_min: float | None = None,
                       n_bins: int = 10, label: str = "IMEAN") -> dict:
    """CC between merged and true intensities (common reflections), overall and by resolution
    (bins of equal numbers of reflections), under the best alternative indexing."""
    merged, hkl_m, i_m = _read(merged_mtz, label)
    truth, hkl_t, i_t = _read(true_mtz, "IMEAN")
    sg = truth.spacegroup
    ops = [gemmi.Op("x,y,z")] + list(gemmi.find_twin_laws(truth.cell, sg, 3.0, False))
    truth_index = {int(k): i for i, k in enumerate(_keys(hkl_t))}
    best = None
    for op in ops:
        rotation = np.array(op.rot) // op.DEN
        moved = map_to_asu(hkl_m.astype(np.int64) @ rotation, sg).asu_index
        rows = np.array([truth_index.get(int(k), -1) for k in _keys(moved)])
        ok = (rows >= 0) & np.isfinite(i_m)
        if ok.sum() < 3:
            continue
        cc = float(np.corrcoef(i_m[ok], i_t[rows[ok]])[0, 1])
        if best is None or cc > best["cc"]:
            best = {"cc": cc, "op": op.triplet(), "merged": i_m[ok], "true": i_t[rows[ok]], "hkl": moved[ok]}
    if best is None:
        raise InputFileError(f"{merged_mtz}: no reflections in common with {true_mtz}")
    d = np.asarray(truth.cell.calculate_d_array(best["hkl"]))
    keep = np.ones(len(d), bool) if d_min is None else d >= d_min - 1e-6
    merged_i, true_i, d = best["merged"][keep], best["true"][keep], d[keep]
    order = np.argsort(-d)
    bins = []
    for chunk in np.array_split(order, min(n_bins, max(1, len(order) // 20))):
        bins.append({"d_max": float(d[chunk].max()), "d_min": float(d[chunk].min()), "n": int(len(chunk)),
                     "cc": float(np.corrcoef(merged_i[chunk], true_i[chunk])[0, 1]) if len(chunk) > 2 else float("nan")})
    return {"cc": float(np.corrcoef(merged_i, true_i)[0, 1]), "n_common": int(len(d)), "indexing": best["op"],
            "bins": bins, "n_true": int(len(i_t))}


def format_truth_comparison(comparison: dict) -> str:
    lines = [f"CC(merged, true) = {comparison['cc']:.4f} over {comparison['n_common']} common reflections "
             f"(indexing {comparison['indexing']})",
             f"{'d_max':>7} {'d_min':>7} {'n':>6} {'CC':>7}"]
    for b in comparison["bins"]:
        lines.append(f"{b['d_max']:7.2f} {b['d_min']:7.2f} {b['n']:6d} {b['cc']:7.4f}")
    return "\n".join(lines)
