"""``ewald refine``: indexed.expt + indexed.refl → refined.expt + refined.refl (dials.refine).

Defaults are dials.refine's: ``scan_varying=Auto`` (a static macro-cycle, then a scan-varying
crystal), MCD outlier rejection, all reflections (``reflections_per_degree=Auto``), LevMar,
beam tilt in the spindle plane free, detector free, goniometer fixed. ``tie_to_target`` unit-cell
restraints (e.g. from the walk-through's restraint.phil) act on the static cell.

The refinement parameter scope declared here (``refinement { parameterisation { ... }
reflections { ... } refinery { ... } }``) is shared with the other steps that refine
(refine_bravais_settings, calibrate_distance, index): each turns it into
:class:`algorithms.refinement.RefinementOptions` with :func:`refinement_options`, giving its
own DIALS defaults for the ``Auto`` values. Reference: Waterman et al. (2016) Acta Cryst. D72,
558–575.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Experiment
from algorithms.reflection_table import Flags, ReflectionTable
from algorithms.refinement import RefinementOptions, RefinementResult, observations_mm_from_px, refine
from pipeline.errors import ParameterError
from pipeline.params import param, scope
from pipeline.refinement_report import crystal_model_text, log_refinement, rmsds_by_experiment_table
from pipeline.steps import StepResult

NAME = "refine"
HELP = "Refine the geometry (static, then scan-varying crystal) against indexed spots, as dials.refine."

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------ shared parameter scope


@dataclass
class BeamParameterisation:
    fix: list[Literal["all", "in_spindle_plane", "out_spindle_plane", "wavelength"]] = param(
        ["in_spindle_plane", "wavelength"], "Beam parameters to fix; None frees the beam direction and wavelength.")


@dataclass
class TieToTarget:
    values: tuple[float, ...] | None = param(None, "Target unit cell a,b,c,alpha,beta,gamma (Å, degrees).")
    sigmas: tuple[float, ...] | None = param(None, "Restraint sigmas of the six cell parameters; 0 disables one.")
    id: list[int] | None = param(None, "Experiments (0-based) this restraint applies to; None = all.")


@dataclass
class UnitCellRestraints:
    tie_to_target: list[TieToTarget] = scope(
        TieToTarget, "Restrain the static unit cell to target values (may be given several times).", multiple=True)


@dataclass
class UnitCell:
    restraints: UnitCellRestraints = scope(UnitCellRestraints, "Unit-cell restraints.")


@dataclass
class CrystalParameterisation:
    fix: list[Literal["all", "cell", "orientation"]] = param([], "Crystal parameters to fix; None = refine all.")
    unit_cell: UnitCell = scope(UnitCell, "The unit-cell parameterisation.")


@dataclass
class DetectorParameterisation:
    fix: list[Literal["all", "position", "orientation", "distance"]] = param(
        [], "Detector parameters to fix: distance (Dist and the tilts Tau2, Tau3), orientation (Tau1-3), "
            "position (Dist, Shift1, Shift2) or all; None = refine all.")


@dataclass
class GoniometerParameterisation:
    fix: list[Literal["all", "in_beam_plane", "out_beam_plane"]] = param(
        ["all"], "Goniometer parameters to fix; None refines the rotation-axis direction.")


@dataclass
class AutoReduction:
    min_nref_per_parameter: int = param(5, "Fewest reflections per free parameter.")
    action: Literal["fail", "fix", "remove"] | None = param(
        None, "What to do with too few reflections for a parameter: fail, fix it, or remove reflections (acts "
              "as fix here); None = Auto (the step's default).")


@dataclass
class Parameterisation:
    beam: BeamParameterisation = scope(BeamParameterisation, "Beam parameterisation.")
    crystal: CrystalParameterisation = scope(CrystalParameterisation, "Crystal parameterisation.")
    detector: DetectorParameterisation = scope(DetectorParameterisation, "Detector parameterisation.")
    goniometer: GoniometerParameterisation = scope(GoniometerParameterisation, "Goniometer parameterisation.")
    scan_varying: bool | None = param(
        None, "Refine a scan-varying crystal after the static refinement; None = Auto (dials.refine: yes for "
              "scans; other steps: no).")
    interval_width_degrees: float = param(36.0, "Width of the smoother intervals of scan-varying parameters (deg).")
    auto_reduction: AutoReduction = scope(AutoReduction, "Fixing parameters that have too few reflections.")


@dataclass
class Outlier:
    algorithm: Literal["null", "auto", "mcd", "tukey"] = param(
        "auto", "Centroid outlier rejection; auto = mcd in refine, tukey in index and refine_bravais_settings.")


@dataclass
class Reflections:
    outlier: Outlier = scope(Outlier, "Centroid outlier rejection.")
    reflections_per_degree: float | None = param(
        None, "Reflections per degree of scan in the working set; None = Auto (all in refine, 100 in index and "
              "refine_bravais_settings).")
    close_to_spindle_cutoff: float = param(0.02, "Reflections with |(s1×s0)·axis| below this are not used.")


@dataclass
class Refinery:
    engine: Literal["LevMar", "GaussNewton"] = param("LevMar", "Least-squares engine.")
    max_iterations: int | None = param(None, "Iteration limit; None = Auto (100).")


@dataclass
class Refinement:
    parameterisation: Parameterisation = scope(Parameterisation, "Which models and parameters are refined.")
    reflections: Reflections = scope(Reflections, "Which reflections are used.")
    refinery: Refinery = scope(Refinery, "The minimiser.")


def restraint_targets(refinement: Refinement, experiment_id: int = 0) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
    """The tie_to_target (values, sigmas) that apply to one experiment; one sigma applies to all six."""
    targets = []
    for tie in refinement.parameterisation.crystal.unit_cell.restraints.tie_to_target:
        if tie.values is None and tie.sigmas is None:
            continue
        if tie.values is None or tie.sigmas is None or len(tie.values) != 6 or len(tie.sigmas) not in (1, 6):
            raise ParameterError("refinement.parameterisation.crystal.unit_cell.restraints.tie_to_target: give "
                                 "values=a,b,c,alpha,beta,gamma and sigmas= (six numbers, or one for all)")
        if tie.id is not None and experiment_id not in tie.id:
            continue
        sigmas = tuple(tie.sigmas) * 6 if len(tie.sigmas) == 1 else tuple(tie.sigmas)
        targets.append((tuple(tie.values), sigmas))
    return targets


def refinement_options(refinement: Refinement, *, outlier_auto: str, reflections_per_degree_auto: float | None,
                       scan_varying_auto: bool, auto_reduction_auto: str, experiment_id: int = 0,
                       **overrides) -> RefinementOptions:
    """RefinementOptions from the parameter scope, resolving each Auto with the calling step's default;
    ``overrides`` replace any option (e.g. ``scan_varying=False`` where a step must stay static)."""
    p = refinement.parameterisation
    outlier = refinement.reflections.outlier.algorithm
    options = RefinementOptions(
        beam_fix=tuple(p.beam.fix),
        crystal_fix=tuple(p.crystal.fix),
        detector_fix=tuple(p.detector.fix),
        goniometer_fix=tuple(p.goniometer.fix),
        outlier_algorithm=outlier_auto if outlier == "auto" else outlier,
        max_iterations=refinement.refinery.max_iterations or 100,
        reflections_per_degree=(refinement.reflections.reflections_per_degree
                                if refinement.reflections.reflections_per_degree is not None
                                else reflections_per_degree_auto),
        close_to_spindle_cutoff=refinement.reflections.close_to_spindle_cutoff,
        unit_cell_restraints=restraint_targets(refinement, experiment_id),
        scan_varying=scan_varying_auto if p.scan_varying is None else p.scan_varying,
        interval_width_degrees=p.interval_width_degrees,
        auto_reduction_action=p.auto_reduction.action or auto_reduction_auto,
        min_nref_per_parameter=p.auto_reduction.min_nref_per_parameter,
        engine=refinement.refinery.engine,
    )
    for name, value in overrides.items():
        setattr(options, name, value)
    return options


def with_mm_observations(experiment: Experiment, reflections: ReflectionTable) -> ReflectionTable:
    """The table with ``xyzobs.mm.value/variance`` (computed from the pixel centroids if absent)."""
    if "xyzobs.mm.value" in reflections and "xyzobs.mm.variance" in reflections:
        return reflections
    if "xyzobs.px.value" not in reflections or "xyzobs.px.variance" not in reflections:
        raise DataError("the reflections have no observed centroids (xyzobs.px.value/variance); "
                        "use the output of find_spots and index")
    table = reflections.copy()
    table["xyzobs.mm.value"], table["xyzobs.mm.variance"] = observations_mm_from_px(
        table["xyzobs.px.value"], table["xyzobs.px.variance"], experiment.detector, experiment.scan)
    return table


def reflections_of(reflections: ReflectionTable, experiment_id: int, n_experiments: int) -> np.ndarray:
    """Row mask of one experiment's reflections (all rows when there is one experiment and no id)."""
    if "id" not in reflections:
        if n_experiments > 1:
            raise DataError("the reflections have no id column to tell the experiments apart")
        return np.ones(len(reflections), bool)
    return np.asarray(reflections["id"]) == experiment_id


def store_refinement(table: ReflectionTable, rows: np.ndarray, result: RefinementResult) -> None:
    """Write one experiment's refinement into the rows of ``table``: xyzcal.mm/px where predicted,
    used_in_refinement and centroid_outlier flags (replacing earlier ones)."""
    n = len(table)
    for name in ("xyzcal.mm", "xyzcal.px"):
        if name not in table:
            table[name] = np.full((n, 3), np.nan)
    predicted = np.all(np.isfinite(result.xyzcal_mm), axis=1)
    xyzcal_mm, xyzcal_px = table["xyzcal.mm"].copy(), table["xyzcal.px"].copy()
    xyzcal_mm[rows[predicted]] = result.xyzcal_mm[predicted]
    xyzcal_px[rows[predicted]] = result.xyzcal_px[predicted]
    table["xyzcal.mm"], table["xyzcal.px"] = xyzcal_mm, xyzcal_px
    if "flags" not in table:
        table["flags"] = np.zeros(n, np.uint64)
    table.unset_flags(rows, Flags.used_in_refinement | Flags.centroid_outlier)
    table.set_flags(rows[result.used_in_refinement], Flags.used_in_refinement)
    table.set_flags(rows[result.centroid_outlier], Flags.centroid_outlier)


# ------------------------------------------------------------------------------------- the step


@dataclass
class Output:
    experiments: str = param("refined.expt", "Output experiments.")
    reflections: str = param("refined.refl", "Output reflections (with updated predictions and flags).")


@dataclass
class Params:
    refinement: Refinement = scope(Refinement, "Geometry refinement.")
    output: Output = scope(Output, "Output files.")


def options_for_refine(params: Params, experiment_id: int = 0) -> RefinementOptions:
    """dials.refine's resolution of the Auto values."""
    return refinement_options(params.refinement, outlier_auto="mcd", reflections_per_degree_auto=None,
                              scan_varying_auto=True, auto_reduction_auto="fail", experiment_id=experiment_id)


def run(experiments: list[Experiment], reflections: ReflectionTable, params: Params) -> StepResult:
    """Refine each experiment against its indexed reflections (experiments refine independently)."""
    if not experiments:
        raise DataError("no experiments to refine")
    table = reflections.copy()
    refined, results = [], []
    for i, experiment in enumerate(experiments):
        rows = np.nonzero(reflections_of(table, i, len(experiments)))[0]
        own = with_mm_observations(experiment, table.select(rows))
        if "xyzobs.mm.value" not in table:
            table["xyzobs.mm.value"] = np.full((len(table), 3), np.nan)
            table["xyzobs.mm.variance"] = np.full((len(table), 3), np.nan)
        value, variance = table["xyzobs.mm.value"].copy(), table["xyzobs.mm.variance"].copy()
        value[rows], variance[rows] = own["xyzobs.mm.value"], own["xyzobs.mm.variance"]
        table["xyzobs.mm.value"], table["xyzobs.mm.variance"] = value, variance
        options = options_for_refine(params, i)
        if options.scan_varying and experiment.scan.num_images < 2:
            options.scan_varying = False  # Auto: a single image has nothing to vary over
        result = refine(experiment, own, options)
        store_refinement(table, rows, result)
        refined.append(result.experiment)
        results.append(result)
    summary = {"results": results, "rmsds": [r.rmsds for r in results]}
    return StepResult(refined, table, summary)


def cli(params: Params, files: list[str]) -> None:
    """Read the indexed files, refine, log DIALS' tables and write refined.expt/refl atomically."""
    from pipeline.formats.expt import read_experiments, write_experiments
    from pipeline.formats.refl import read_reflections, write_reflections
    from pipeline.inputs import experiments_and_reflections_from

    experiments_path, reflections_path = experiments_and_reflections_from(files, NAME)
    experiments = read_experiments(experiments_path)
    reflections = read_reflections(reflections_path)
    result = run(experiments, reflections, params)
    for i, refinement in enumerate(result.summary["results"]):
        if len(experiments) > 1:
            logger.info("\nExperiment %d", i)
        n_outliers = int(refinement.centroid_outlier.sum())
        logger.info("%d reflections have been flagged as outliers", n_outliers)
        log_refinement(logger, refinement, i, final_crystal_model=False)
    if len(experiments) > 1:
        logger.info("\n%s", rmsds_by_experiment_table(result.summary["rmsds"]))
    for i, refinement in enumerate(result.summary["results"]):
        logger.info("\nFinal refined crystal model%s:\n%s", f" (experiment {i})" if len(experiments) > 1 else "",
                    crystal_model_text(refinement.experiment.crystal, refinement.cell_esds))
    write_experiments(result.experiments, Path(params.output.experiments))
    write_reflections(result.reflections, Path(params.output.reflections))
    logger.info("Saving refined experiments to %s", params.output.experiments)
    logger.info("Saving reflections with updated predictions to %s", params.output.reflections)
