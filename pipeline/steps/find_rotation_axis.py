"""``ewald find_rotation_axis``: the rotation-axis direction in the detector plane and its sense,
found by indexing (imported.expt + strong.refl → optimised.expt).

The axis is searched perpendicular to the beam, at azimuth θ from the panel's fast direction:

1. coarse scan of θ over a full turn (both senses) every ``azimuth_step`` degrees; each θ is
   scored by a fast indexing (3D FFT on a modest grid, candidates ranked by the linear lattice
   fit, one short static refinement with every model fixed but the crystal): the fraction of
   spots indexed first, the RMSDs to break ties;
2. golden-section refinement of θ within one step of the best, minimising the RMSDs of the
   fast indexing (RMSD_XY in px + RMSD_Z in images, plus the unindexed fraction), to
   ``tolerance`` degrees;
3. the sense: index with +axis and −axis (DIALS' defaults, geometry fixed) and keep the lower
   RMSD_Z — only the Ewald sphere's curvature tells the senses apart, so the wrong sense gives
   a near mirror image that indexes as well but predicts rotation angles worse (Clabbers et
   al. 2018, Acta Cryst. D74, 506–518; algorithms.md §10).

Nothing depends on the probe or the detector: X-ray sweeps work the same way.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Experiment
from algorithms.refinement import RefinementOptions
from algorithms.reflection_table import ReflectionTable
from pipeline.errors import InputFileError, ParameterError
from pipeline.params import param, scope
from pipeline.refinement_report import format_table
from pipeline.steps import StepResult
from pipeline.steps.index import IndexingSettings, SweepIndexing, index_sweep

NAME = "find_rotation_axis"
HELP = "Find the rotation-axis direction and sense by indexing (optimised.expt), like dials.find_rotation_axis."

logger = logging.getLogger(__name__)

GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0
FAST_N_POINTS = 128
FAST_MAX_REFINE = 5
FAST_MAX_ITERATIONS = 5


@dataclass
class Output:
    experiments: str = param("optimised.expt", "The experiments with the best rotation axis.")
    log: str = param("find_rotation_axis.log", "The log file.")


@dataclass
class Params:
    azimuth_step: float = param(5.0, "Step (degrees) of the coarse scan of the axis azimuth over a full turn.")
    tolerance: float = param(0.1, "Precision (degrees) of the fine search of the azimuth.")
    max_cell: float | None = param(None, "Longest cell edge (Å) for the indexing; None = estimated from the spots.")
    n_points: int = param(FAST_N_POINTS, "FFT grid points of the fast indexing used in the scans.")
    output: Output = scope(Output, "Output files.")


def _plane_basis(experiment: Experiment) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors u (the panel's fast direction made ⟂ to the beam) and v = beam × u."""
    beam = experiment.beam.direction / np.linalg.norm(experiment.beam.direction)
    fast = experiment.detector.fast_axis
    u = fast - np.dot(fast, beam) * beam
    u /= np.linalg.norm(u)
    return u, np.cross(beam, u)


def axis_at(experiment: Experiment, azimuth_deg: float) -> np.ndarray:
    """The lab axis ⟂ to the beam at the given azimuth from the fast direction."""
    u, v = _plane_basis(experiment)
    theta = math.radians(azimuth_deg)
    return math.cos(theta) * u + math.sin(theta) * v


def azimuth_of(experiment: Experiment, axis: np.ndarray) -> float:
    u, v = _plane_basis(experiment)
    return math.degrees(math.atan2(float(np.dot(axis, v)), float(np.dot(axis, u)))) % 360.0


def _with_axis(experiment: Experiment, azimuth_deg: float) -> Experiment:
    trial = experiment.copy()
    # the datum is in the frame before the setting rotation S (identity for imported sweeps)
    trial.goniometer.rotation_axis = np.linalg.solve(trial.goniometer.setting_rotation, axis_at(experiment, azimuth_deg))
    return trial


def fast_settings(params: Params) -> IndexingSettings:
    """Fast indexing for the scans: modest FFT grid, linear candidate ranking, one short static
    refinement of the crystal only (beam, detector and axis held where the scan puts them)."""
    refinement = RefinementOptions(beam_fix=("all",), detector_fix=("all",), goniometer_fix=("all",),
                                   outlier_algorithm="tukey", reflections_per_degree=100.0,
                                   max_iterations=FAST_MAX_ITERATIONS, auto_reduction_action="fix")
    return IndexingSettings(refinement=refinement, max_cell=params.max_cell, n_points=params.n_points,
                            n_macro_cycles=1, max_refine=FAST_MAX_REFINE, refine_candidates=False)


def sense_settings(params: Params) -> IndexingSettings:
    """dials.index's defaults with the geometry fixed, for the sense test."""
    refinement = RefinementOptions(detector_fix=("distance",), goniometer_fix=("all",), outlier_algorithm="tukey",
                                   reflections_per_degree=100.0)
    return IndexingSettings(refinement=refinement, max_cell=params.max_cell)


def _row(stage: str, experiment: Experiment, azimuth_deg: float, outcome: SweepIndexing | None) -> dict:
    row = {"stage": stage, "azimuth_deg": float(azimuth_deg % 360.0),
           "axis": axis_at(experiment, azimuth_deg).tolist(), "fraction_indexed": 0.0,
           "rmsd_x_px": float("nan"), "rmsd_y_px": float("nan"), "rmsd_z_images": float("nan")}
    if outcome is not None:
        rmsds = outcome.rmsds
        row.update(fraction_indexed=outcome.fraction_indexed, rmsd_x_px=rmsds["x_px"], rmsd_y_px=rmsds["y_px"],
                   rmsd_z_images=rmsds["z_images"])
    return row


def _try_index(experiment, strong, settings) -> SweepIndexing | None:
    try:
        return index_sweep(experiment, strong, settings)
    except DataError:
        return None


def _coarse_key(row: dict) -> tuple:
    rmsd = row["rmsd_x_px"] + row["rmsd_y_px"] + row["rmsd_z_images"]
    return (-round(row["fraction_indexed"], 2), rmsd if np.isfinite(rmsd) else np.inf)


def _fine_objective(row: dict) -> float:
    if row["fraction_indexed"] == 0.0:
        return np.inf
    return math.hypot(row["rmsd_x_px"], row["rmsd_y_px"]) + row["rmsd_z_images"] + (1.0 - row["fraction_indexed"])


def find_rotation_axis(experiment: Experiment, reflections: ReflectionTable, params: Params) -> tuple[Experiment, list[dict]]:
    """The experiment with the best rotation axis (direction and sense), and the table of the
    azimuths tried (stage, azimuth_deg, axis, fraction_indexed, rmsd_x_px, rmsd_y_px, rmsd_z_images)."""
    if params.azimuth_step <= 0 or params.azimuth_step > 90 or params.tolerance <= 0:
        raise ParameterError("azimuth_step must be in (0, 90] degrees and tolerance positive")
    if experiment.goniometer is None or experiment.scan is None:
        raise InputFileError("find_rotation_axis needs a rotation sweep (scan and goniometer); give the imported.expt")
    fast = fast_settings(params)
    table: list[dict] = []

    def evaluate(stage: str, azimuth: float) -> dict:
        row = _row(stage, experiment, azimuth, _try_index(_with_axis(experiment, azimuth), reflections, fast))
        table.append(row)
        return row

    coarse = [evaluate("coarse", a) for a in np.arange(0.0, 360.0, params.azimuth_step)]
    best = min(coarse, key=_coarse_key)
    if best["fraction_indexed"] == 0.0:
        raise DataError("find_rotation_axis: no axis azimuth indexed the spots; check the distance, the beam "
                        "centre and max_cell")

    # golden-section search on [θ − step, θ + step]
    lo, hi = best["azimuth_deg"] - params.azimuth_step, best["azimuth_deg"] + params.azimuth_step
    x1, x2 = hi - GOLDEN * (hi - lo), lo + GOLDEN * (hi - lo)
    f1, f2 = _fine_objective(evaluate("fine", x1)), _fine_objective(evaluate("fine", x2))
    while hi - lo > params.tolerance:
        if f1 <= f2:
            hi, x2, f2 = x2, x1, f1
            x1 = hi - GOLDEN * (hi - lo)
            f1 = _fine_objective(evaluate("fine", x1))
        else:
            lo, x1, f1 = x1, x2, f2
            x2 = lo + GOLDEN * (hi - lo)
            f2 = _fine_objective(evaluate("fine", x2))
    azimuth = 0.5 * (lo + hi)

    sense = sense_settings(params)
    outcomes = {}
    for label, trial_azimuth in (("sense +", azimuth), ("sense −", azimuth + 180.0)):
        outcome = _try_index(_with_axis(experiment, trial_azimuth), reflections, sense)
        table.append(_row(label, experiment, trial_azimuth, outcome))
        if outcome is not None:
            outcomes[trial_azimuth] = outcome
    if not outcomes:
        raise DataError("find_rotation_axis: neither sense of the best axis indexed with dials.index's defaults")
    chosen = min(outcomes, key=lambda a: outcomes[a].rmsds["z_images"])
    for row in table[-2:]:
        row["chosen"] = abs(row["azimuth_deg"] - chosen % 360.0) < 1e-9
    return _with_axis(experiment, chosen), table


def run(experiments: list[Experiment], reflections: ReflectionTable | None, params: Params) -> StepResult:
    """Find the rotation axis of every sweep (its strong spots have ``id`` = sweep index)."""
    if not experiments:
        raise InputFileError("no experiments; give the imported.expt")
    if reflections is None or len(reflections) == 0:
        raise InputFileError("no strong spots; give the strong.refl of find_spots")
    ids = np.asarray(reflections["id"]) if "id" in reflections else np.zeros(len(reflections), int)
    optimised, tables = [], []
    for sweep, experiment in enumerate(experiments):
        rows = ids == sweep if len(experiments) > 1 else np.ones(len(reflections), bool)
        best, table = find_rotation_axis(experiment, reflections.select(rows), params)
        optimised.append(best)
        tables.append(table)
    return StepResult(experiments=optimised, reflections=None,
                      summary={"sweeps": [{"candidates": t, "rotation_axis": e.goniometer.rotation_axis.tolist()}
                                          for t, e in zip(tables, optimised)]})


def candidates_text(table: list[dict]) -> str:
    """The azimuths tried, best coarse ones and the fine and sense stages."""
    coarse = sorted((r for r in table if r["stage"] == "coarse"), key=_coarse_key)[:10]
    others = [r for r in table if r["stage"] != "coarse"]
    rows = [[r["stage"] + (" *" if r.get("chosen") else ""), f"{r['azimuth_deg']:.2f}",
             ", ".join(f"{v:.4f}" for v in r["axis"]), f"{100 * r['fraction_indexed']:.1f}",
             f"{r['rmsd_x_px']:.3f}", f"{r['rmsd_y_px']:.3f}", f"{r['rmsd_z_images']:.3f}"] for r in coarse + others]
    return format_table(["Stage", "Azimuth\n(deg)", "Axis", "% indexed", "RMSD_X\n(px)", "RMSD_Y\n(px)",
                         "RMSD_Z\n(images)"], rows)


def cli(params: Params, files: list[str]) -> None:
    """``ewald find_rotation_axis imported.expt strong.refl`` → optimised.expt."""
    from pipeline.formats.expt import read_experiments, write_experiments
    from pipeline.formats.refl import read_reflections
    from pipeline.inputs import experiments_and_reflections_from

    expt_path, refl_path = experiments_and_reflections_from(files, NAME)
    result = run(read_experiments(expt_path), read_reflections(refl_path), params)
    for sweep, summary in enumerate(result.summary["sweeps"]):
        logger.info("Rotation-axis candidates of sweep %d (best 10 of the coarse scan, the fine search and the "
                    "sense test; * = chosen):\n%s", sweep, candidates_text(summary["candidates"]))
        logger.info("Best rotation axis: (%s)", ", ".join(f"{v:.6f}" for v in summary["rotation_axis"]))
    logger.info("Saving optimised experiments to %s", params.output.experiments)
    write_experiments(result.experiments, params.output.experiments)
