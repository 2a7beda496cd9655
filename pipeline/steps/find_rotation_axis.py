"""``ewald find_rotation_axis``: the rotation-axis direction in the detector plane and its sense
(imported.expt + strong.refl → optimised.expt).

The axis is searched perpendicular to the beam, at azimuth θ from the panel's fast direction:

1. coarse scan of θ over a full turn every ``azimuth_step`` degrees, scored by how sharply the
   spots' reciprocal-lattice points form a lattice when rotated back about the trial axis (the
   peaks of a small 3D FFT of their density, :mod:`algorithms.indexing.axis_search`) — no
   indexing, a few milliseconds per azimuth; then the same score every degree around the best
   peaks;
2. the sense and the exact direction: the best azimuth θ and θ + 180° are indexed (a fast
   dials.index: 128³ FFT, 5 candidates ranked by the linear fit, 3 macro-cycles) with the
   rotation axis refined and the beam and detector fixed (the detector's in-plane rotation
   would otherwise share the axis azimuth with it); the sense with the lower RMSD_Z wins —
   only the Ewald sphere's curvature tells the senses apart, so with a flat sphere the wrong
   sense gives a near mirror image that indexes as well but predicts rotation angles worse
   (Clabbers et al. 2018, Acta Cryst. D74, 506–518; algorithms.md §10);
3. the winner is indexed again from its refined azimuth until the azimuth moves less than
   ``tolerance`` (at most ``MAX_REFINEMENT_ROUNDS`` times).

If the best peak's solution indexes too few spots, the next peaks of the coarse scan are tried.
Nothing depends on the probe or the detector: X-ray sweeps work the same way (their wrong sense
does not even form a lattice, so the coarse scan covers the full turn).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Experiment
from algorithms.indexing.axis_search import axis_sharpness, sharpness_d_min
from algorithms.indexing.max_cell import estimate_max_cell
from algorithms.refinement import RefinementOptions
from algorithms.reflection_table import ReflectionTable
from pipeline.errors import InputFileError, ParameterError
from pipeline.indexing_refinement import spot_geometry
from pipeline.params import param, scope
from pipeline.refinement_report import format_table
from pipeline.steps import StepResult
from pipeline.steps.index import IndexingSettings, SweepIndexing, index_sweep

NAME = "find_rotation_axis"
HELP = "Find the rotation-axis direction and sense by indexing (optimised.expt), like dials.find_rotation_axis."

logger = logging.getLogger(__name__)

FAST_N_POINTS = 128
FAST_MAX_REFINE = 5
FAST_MACRO_CYCLES = 3
FINE_STEP_DEG = 1.0
MAX_PEAKS = 3  # coarse-scan peaks tried when the best one does not index
MIN_FRACTION_INDEXED = 0.5  # a solution indexing less sends the search to the next peak
SENSE_FRACTION_RATIO = 0.8  # a sense must index at least this share of the other's spots to compete on RMSD_Z
MAX_REFINEMENT_ROUNDS = 3


@dataclass
class Output:
    experiments: str = param("optimised.expt", "The experiments with the best rotation axis.")
    log: str = param("find_rotation_axis.log", "The log file.")


@dataclass
class Params:
    azimuth_step: float = param(5.0, "Step (degrees) of the coarse scan of the axis azimuth over a full turn.")
    tolerance: float = param(0.1, "The refined azimuth is indexed again until it moves less than this (degrees).")
    max_cell: float | None = param(None, "Longest cell edge (Å) for the indexing; None = estimated from the spots.")
    n_points: int = param(FAST_N_POINTS, "FFT grid points of the fast indexing that decides the sense.")
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
    """The azimuth (degrees) of the axis' projection on the plane ⟂ to the beam."""
    u, v = _plane_basis(experiment)
    return math.degrees(math.atan2(float(np.dot(axis, v)), float(np.dot(axis, u)))) % 360.0


def _with_axis(experiment: Experiment, azimuth_deg: float) -> Experiment:
    trial = experiment.copy()
    # the datum is in the frame before the setting rotation S (identity for imported sweeps)
    trial.goniometer.rotation_axis = np.linalg.solve(trial.goniometer.setting_rotation, axis_at(experiment, azimuth_deg))
    return trial


def axis_settings(params: Params, max_cell: float | None = None) -> IndexingSettings:
    """Fast indexing with the rotation axis refined (beam and detector fixed) for the sense test:
    128³ FFT, the 5 first candidates ranked by the linear fit, 3 macro-cycles."""
    refinement = RefinementOptions(beam_fix=("all",), detector_fix=("all",), goniometer_fix=(),
                                   outlier_algorithm="tukey", reflections_per_degree=100.0)
    return IndexingSettings(refinement=refinement, max_cell=params.max_cell or max_cell, n_points=params.n_points,
                            max_refine=FAST_MAX_REFINE, n_macro_cycles=FAST_MACRO_CYCLES, refine_candidates=False)


def _row(stage: str, experiment: Experiment, azimuth_deg: float, outcome: SweepIndexing | None = None,
         score: float = float("nan")) -> dict:
    row = {"stage": stage, "azimuth_deg": float(azimuth_deg % 360.0), "axis": axis_at(experiment, azimuth_deg).tolist(),
           "lattice_score": float(score), "fraction_indexed": float("nan"), "rmsd_x_px": float("nan"),
           "rmsd_y_px": float("nan"), "rmsd_z_images": float("nan")}
    if outcome is not None:
        rmsds = outcome.rmsds
        row.update(fraction_indexed=outcome.fraction_indexed, rmsd_x_px=rmsds["x_px"], rmsd_y_px=rmsds["y_px"],
                   rmsd_z_images=rmsds["z_images"], refined_azimuth_deg=_refined_azimuth(experiment, outcome))
    elif stage != "coarse" and stage != "fine":
        row["fraction_indexed"] = 0.0
    return row


def _refined_azimuth(experiment: Experiment, outcome: SweepIndexing) -> float:
    return azimuth_of(experiment, outcome.experiment.goniometer.rotation_axis_lab)


def _try_index(experiment, strong, settings) -> SweepIndexing | None:
    try:
        return index_sweep(experiment, strong, settings)
    except DataError:
        return None


def _peaks(azimuths: np.ndarray, scores: np.ndarray) -> list[float]:
    """Azimuths of the local maxima of the circular coarse scan, strongest first."""
    higher_than_neighbours = (scores >= np.roll(scores, 1)) & (scores > np.roll(scores, -1))
    order = np.argsort(-scores, kind="stable")
    return [float(azimuths[i]) for i in order if higher_than_neighbours[i]]


def _angular_distance(a_deg: float, b_deg: float) -> float:
    return abs((a_deg - b_deg + 180.0) % 360.0 - 180.0)


def _better_sense(outcomes: dict[float, SweepIndexing]) -> float:
    """The azimuth whose solution has the lower RMSD_Z among those indexing nearly as many spots."""
    most = max(o.fraction_indexed for o in outcomes.values())
    competing = [a for a, o in outcomes.items() if o.fraction_indexed >= SENSE_FRACTION_RATIO * most]
    return min(competing, key=lambda a: outcomes[a].rmsds["z_images"])


def find_rotation_axis(experiment: Experiment, reflections: ReflectionTable, params: Params) -> tuple[Experiment, list[dict]]:
    """The experiment with the best rotation axis (direction and sense), and the table of the
    azimuths tried (stage, azimuth_deg, axis, lattice_score, fraction_indexed, rmsd_x_px,
    rmsd_y_px, rmsd_z_images; index stages also refined_azimuth_deg; the chosen row has chosen=True)."""
    if params.azimuth_step <= 0 or params.azimuth_step > 90 or params.tolerance <= 0:
        raise ParameterError("azimuth_step must be in (0, 90] degrees and tolerance positive")
    if experiment.goniometer is None or experiment.scan is None:
        raise InputFileError("find_rotation_axis needs a rotation sweep (scan and goniometer); give the imported.expt")
    if len(reflections) < 10:
        raise DataError(f"find_rotation_axis: only {len(reflections)} strong spots; at least 10 are needed")
    xyz = np.asarray(reflections["xyzobs.px.value"], float).reshape(-1, 3)
    rlp, phi_rad, entering = spot_geometry(experiment, xyz)
    max_cell = params.max_cell or estimate_max_cell(rlp, phi_rad, entering,
                                                    bboxes=reflections["bbox"] if "bbox" in reflections else None)
    # the scattering vectors do not depend on the axis: rotate them back about each trial axis
    s_lab = experiment.detector.pixel_to_s1(xyz[:, :2], experiment.beam.s0) - experiment.beam.s0
    d_min = sharpness_d_min(1.0 / np.linalg.norm(s_lab, axis=1), max_cell)
    table: list[dict] = []

    def scan(stage: str, azimuths: np.ndarray) -> np.ndarray:
        scores = axis_sharpness(s_lab, phi_rad, np.array([axis_at(experiment, a) for a in azimuths]), d_min)
        table.extend(_row(stage, experiment, a, score=s) for a, s in zip(azimuths, scores))
        return scores

    def index_at(stage: str, azimuth: float) -> SweepIndexing | None:
        outcome = _try_index(_with_axis(experiment, azimuth), reflections, settings)
        table.append(_row(stage, experiment, azimuth, outcome))
        return outcome

    settings = axis_settings(params, max_cell)
    coarse = np.arange(0.0, 360.0, params.azimuth_step)
    coarse_scores = scan("coarse", coarse)
    tried: list[float] = []
    best = None  # (fraction indexed, table row) of the best solution so far
    for peak in _peaks(coarse, coarse_scores):
        if len(tried) >= MAX_PEAKS:
            break
        if any(min(_angular_distance(peak, t), _angular_distance(peak + 180.0, t)) < 1.5 * params.azimuth_step
               for t in tried):
            continue  # this peak or its mirror (the other sense) has been indexed
        tried.append(peak)
        fine = peak + np.arange(-params.azimuth_step + FINE_STEP_DEG, params.azimuth_step, FINE_STEP_DEG)
        azimuth = float(fine[np.argmax(scan("fine", fine))])
        outcomes = {}
        for label, trial in (("sense +", azimuth), ("sense −", azimuth + 180.0)):
            outcome = index_at(label, trial)
            if outcome is not None:
                outcomes[trial] = outcome
        if not outcomes:
            continue
        chosen = _better_sense(outcomes)
        outcome, row = outcomes[chosen], table[-2] if chosen == azimuth else table[-1]
        for _ in range(MAX_REFINEMENT_ROUNDS):
            refined = _refined_azimuth(experiment, outcome)
            if _angular_distance(refined, row["azimuth_deg"]) < params.tolerance:
                break
            again = index_at("refined", refined)
            if again is None or again.fraction_indexed < SENSE_FRACTION_RATIO * outcome.fraction_indexed:
                break
            outcome, row = again, table[-1]
        if best is None or outcome.fraction_indexed > best[0]:
            best = (outcome.fraction_indexed, row)
        if outcome.fraction_indexed >= MIN_FRACTION_INDEXED:
            break
    if best is None:
        raise DataError("find_rotation_axis: no axis azimuth indexed the spots; check the distance, the beam "
                        "centre and max_cell")
    row = best[1]
    row["chosen"] = True
    return _with_axis(experiment, row["refined_azimuth_deg"]), table


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


def _number(value: float, fmt: str) -> str:
    return "-" if not np.isfinite(value) else format(value, fmt)


def candidates_text(table: list[dict]) -> str:
    """The azimuths tried: the 10 best of the coarse scan, then the fine scans and the indexing."""
    coarse = sorted((r for r in table if r["stage"] == "coarse"), key=lambda r: -r["lattice_score"])[:10]
    others = [r for r in table if r["stage"] != "coarse"]
    rows = [[r["stage"] + (" *" if r.get("chosen") else ""), f"{r['azimuth_deg']:.2f}",
             ", ".join(f"{v:.4f}" for v in r["axis"]), _number(r["lattice_score"], ".4f"),
             _number(100 * r["fraction_indexed"], ".1f"), _number(r["rmsd_x_px"], ".3f"),
             _number(r["rmsd_y_px"], ".3f"), _number(r["rmsd_z_images"], ".3f"),
             _number(r.get("refined_azimuth_deg", float("nan")), ".2f")] for r in coarse + others]
    return format_table(["Stage", "Azimuth\n(deg)", "Axis", "Lattice\nscore", "% indexed", "RMSD_X\n(px)",
                         "RMSD_Y\n(px)", "RMSD_Z\n(images)", "Refined\nazimuth"], rows)


def cli(params: Params, files: list[str]) -> None:
    """``ewald find_rotation_axis imported.expt strong.refl`` → optimised.expt."""
    from pipeline.formats.expt import read_experiments, write_experiments
    from pipeline.formats.refl import read_reflections
    from pipeline.inputs import experiments_and_reflections_from

    expt_path, refl_path = experiments_and_reflections_from(files, NAME)
    result = run(read_experiments(expt_path), read_reflections(refl_path), params)
    for sweep, summary in enumerate(result.summary["sweeps"]):
        logger.info("Rotation-axis candidates of sweep %d (best 10 of the coarse scan, the fine search and the "
                    "indexing; * = chosen):\n%s", sweep, candidates_text(summary["candidates"]))
        logger.info("Best rotation axis: (%s)", ", ".join(f"{v:.6f}" for v in summary["rotation_axis"]))
    logger.info("Saving optimised experiments to %s", params.output.experiments)
    write_experiments(result.experiments, params.output.experiments)
