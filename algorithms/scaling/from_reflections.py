"""Scaling input from integrated reflection tables and their experiments (DIALS columns and flags).

Per experiment: rows integrated by summation or profile fitting are used; profile values count only
where the ``integrated_prf`` flag is set; intensities are corrected with ``lp``, ``qe`` and
``partiality`` (:func:`prepare_intensities`); z is taken relative to the scan (DIALS' xyzobs.px z
runs over the array range, image_range[0] − 1 … image_range[1]); crystal-frame beam directions for
the absorption surface come from ``s1`` and the observed φ. The common cell is the mean of the
experiments' cells (DIALS' "best unit cell"), used for d of merged data; each experiment's own cell
goes to the consensus-cell check.
"""
from __future__ import annotations

import gemmi
import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Experiment
from algorithms.reflection_table import Flags, ReflectionTable
from algorithms.scaling.absorption import crystal_frame_directions
from algorithms.scaling.data import CorrectedIntensities, DatasetScan, ScalingData, prepare_intensities


def _column(table: ReflectionTable, name: str, rows: np.ndarray, default: float | None) -> np.ndarray | None:
    if name in table:
        return np.asarray(table[name])[rows]
    return None if default is None else np.full(len(rows), default)


def mean_unit_cell(cells: list[gemmi.UnitCell]) -> gemmi.UnitCell:
    return gemmi.UnitCell(*np.mean([c.parameters for c in cells], axis=0))


def scaling_data_from_reflections(experiments: list[Experiment], tables: list[ReflectionTable],
                                  space_group: gemmi.SpaceGroup | None = None) -> tuple[ScalingData, list[np.ndarray]]:
    """ScalingData of all experiments (``tables[k]`` holds the rows of ``experiments[k]``) and, per
    table, the row numbers used, to write the results back."""
    if len(experiments) != len(tables) or not experiments:
        raise DataError("scaling: give one integrated reflection table per experiment")
    space_group = space_group or experiments[0].crystal.space_group
    parts, rows_used, scans, cells = [], [], [], []
    for k, (experiment, table) in enumerate(zip(experiments, tables)):
        if experiment.scan is None or experiment.crystal is None:
            raise DataError(f"scaling: experiment {k} has no scan or crystal; scaling needs integrated rotation data")
        flags = np.asarray(table["flags"]).astype(np.int64)
        rows = np.nonzero(flags & int(Flags.integrated))[0]
        prf_valid = (flags[rows] & int(Flags.integrated_prf)) != 0
        corrected = prepare_intensities(
            _column(table, "intensity.sum.value", rows, np.nan), _column(table, "intensity.sum.variance", rows, np.nan),
            _column(table, "intensity.prf.value", rows, None), _column(table, "intensity.prf.variance", rows, None),
            _column(table, "lp", rows, 1.0), _column(table, "qe", rows, None), _column(table, "partiality", rows, 1.0),
            prf_valid=prf_valid)
        scan = experiment.scan
        z = np.asarray(table["xyzobs.px.value"])[rows, 2] - (scan.image_range[0] - 1)
        hkl = np.asarray(table["miller_index"])[rows].astype(np.int64)
        if "d" in table:
            d = np.asarray(table["d"])[rows]
        else:
            d = 1.0 / np.linalg.norm(hkl @ np.asarray(experiment.crystal.A).T, axis=1)
        s0c = s1c = None
        if "s1" in table and "xyzobs.mm.value" in table and experiment.goniometer is not None:
            s0c, s1c = crystal_frame_directions(np.asarray(table["s1"])[rows], np.asarray(table["xyzobs.mm.value"])[rows, 2],
                                                experiment.goniometer.rotation_axis_lab, experiment.beam.direction)
        parts.append(dict(dataset=np.full(len(rows), k), hkl=hkl, corrected=corrected, z=z, d=d,
                          partiality=_column(table, "partiality", rows, 1.0), s0c=s0c, s1c=s1c))
        rows_used.append(rows)
        scans.append(DatasetScan(scan.oscillation[0], scan.oscillation[1], scan.image_range))
        cells.append(experiment.crystal.unit_cell)
    cat = lambda key: np.concatenate([p[key] for p in parts])
    intensities = CorrectedIntensities(*[np.concatenate([getattr(p["corrected"], name) for p in parts])
                                         for name in ("intensity_sum", "variance_sum", "intensity_prf", "variance_prf")])
    with_directions = all(p["s0c"] is not None for p in parts)
    data = ScalingData(dataset=cat("dataset"), miller_index=cat("hkl"), intensities=intensities, z_obs=cat("z"),
                       d=cat("d"), partiality=cat("partiality"), scans=scans, space_group=space_group,
                       unit_cell=mean_unit_cell(cells), s0c=cat("s0c") if with_directions else None,
                       s1c=cat("s1c") if with_directions else None, dataset_cells=cells)
    return data, rows_used
