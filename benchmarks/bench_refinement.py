"""Benchmark of the geometry refinement engine on the reference job's shape.

Cases (MyD88-like electron geometry, C2 cell, 72 images of 0.9149°, ~600 indexed spots):
- static refinement of one crystal from a perturbed start (orientation 0.5°, cell 1 %, beam
  centre 1 px; detector.fix=distance, MCD outliers) — the per-crystal unit of dials.index
  macro-cycles and dials.refine;
- the same followed by the scan-varying macro-cycle;
- the restrained distance calibration (start at 2193 mm, tie_to_target σ 0.01);
- all 18 crystals of the reference job, static, one after the other.
Reference in the same run: scipy.optimize.least_squares (MINPACK Levenberg–Marquardt,
finite-difference Jacobian) minimising the same weighted residuals after the same outlier
rejection, for the static one-crystal case.

Run: .venv/bin/python benchmarks/bench_refinement.py  → benchmarks/results/refinement.json
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import gemmi
import numpy as np
from scipy.optimize import least_squares

from algorithms.geometry.models import Crystal
from algorithms.refinement import RefinementOptions, refine
from algorithms.refinement.refiner import _Macrocycle, _observations
from algorithms.refinement.reflection_manager import usable_rows
from algorithms.refinement.simulation import ED_CELL, ed_experiment, orientation_error_deg, perturbed, simulate_reflections
from simulated_data import timed_repeats

REPEATS = 5
RESULTS = Path(__file__).resolve().parent / "results" / "refinement.json"



def _scipy_reference(start, table, options):
    """Same residuals and outlier set, minimised by scipy with a numerical Jacobian."""
    data = _observations(start, table)
    rows = np.nonzero(usable_rows(start, table, options.close_to_spindle_cutoff))[0]
    cycle = _Macrocycle(start, data, rows, options, scan_varying=False)
    cycle.reject_outliers()

    def residuals(x):
        return cycle.evaluate(x, with_jacobian=False)[0].weighted_residuals

    solution = least_squares(residuals, cycle.model.free_values(), method="lm", x_scale="jac")
    final = cycle.evaluate(solution.x, with_jacobian=False)[0]
    return solution, final


def main() -> dict:
    truth = ed_experiment(0)
    table, _ = simulate_reflections(truth, 600, sigma_px=0.3, sigma_images=0.3)
    start = perturbed(truth)
    options = RefinementOptions(detector_fix=("distance",))
    report: dict = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "data": {"reflections": len(table), "images": truth.scan.num_images, "cell": ED_CELL, "noise_px_images": 0.3},
    }

    static, timing = timed_repeats(lambda: refine(start, table, options), REPEATS)
    report["static_one_crystal"] = {
        **timing,
        "parameters": len(static.parameter_names),
        "steps": len(static.history) - 1,
        "nref": static.rmsds["nref"],
        "rmsd_px_px_images": [static.rmsds["x_px"], static.rmsds["y_px"], static.rmsds["z_images"]],
        "orientation_error_deg": orientation_error_deg(static.experiment.crystal.U, truth.crystal.U),
    }

    (solution, final), timing = timed_repeats(lambda: _scipy_reference(start, table, options), REPEATS)
    report["scipy_least_squares_reference"] = {
        **timing,
        "function_evaluations": int(solution.nfev),
        "rmsd_x_mm": float(final.rmsds[0]),
        "ewald_rmsd_x_mm": static.rmsds["x_mm"],
    }
    report["speedup_vs_scipy"] = report["scipy_least_squares_reference"]["median_s"] / report["static_one_crystal"]["median_s"]

    sv_options = RefinementOptions(detector_fix=("distance",), scan_varying=True)
    varying, timing = timed_repeats(lambda: refine(start, table, sv_options), REPEATS)
    report["static_then_scan_varying_one_crystal"] = {
        **timing, "parameters": len(varying.parameter_names),
        "rmsd_px_px_images": [varying.rmsds["x_px"], varying.rmsds["y_px"], varying.rmsds["z_images"]],
    }

    calib_start = truth.copy()
    calib_start.detector.set_distance_mm(2193.0)
    cell = np.array(ED_CELL)
    cell[:3] *= 2193.0 / 1762.0
    calib_start.crystal = Crystal.from_cell_and_U(gemmi.UnitCell(*cell), truth.crystal.U, truth.crystal.space_group)
    calib_options = RefinementOptions(detector_fix=("orientation",), unit_cell_restraints=[(ED_CELL, (0.01,) * 6)])
    calibrated, timing = timed_repeats(lambda: refine(calib_start, table, calib_options), REPEATS)
    report["restrained_distance_calibration"] = {**timing, "distance_mm": calibrated.experiment.detector.distance_mm,
                                                 "true_distance_mm": 1762.0}

    crystals = []
    for seed in range(18):
        t = ed_experiment(seed)
        tab, _ = simulate_reflections(t, 600, seed=seed + 50)
        crystals.append((perturbed(t, seed=seed), tab))
    _, timing = timed_repeats(lambda: [refine(s, tab, options) for s, tab in crystals], repeats=2)
    report["eighteen_crystals_static_sequential"] = {**timing, "per_crystal_s": timing["median_s"] / 18}

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, default=float))
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2, default=float))
