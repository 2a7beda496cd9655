"""``ewald calibrate_distance``: the detector distance from a known unit cell, over many data sets.

With a flat Ewald sphere the cell scales with the detector distance (algorithms.md §10), so a
known cell fixes the distance. For each indexed data set (P1, as indexing without a space group
gives it), as the MyD88 walk-through did by hand (T2 recipe, §11.2):

1. find the Bravais setting of the known cell's space group (Le Page; the setting whose cell,
   scaled to the known volume, is closest to the known cell), re-index into it, symmetrise;
   a crystal whose lattice does not match the known cell is reported and left out;
2. start from the distance implied by the cell volume (D·(V_known/V)^⅓, which only shortens the
   path; the optimum is the same) and refine with ``tie_to_target`` to the known cell,
   ``scan_varying=False detector.fix=orientation`` (dials.refine defaults otherwise);
3. report every refined distance, their median and spread; the median is the calibrated
   distance (calibrated_distance.json).

:func:`calibrate_distance` does this for a list of (experiment, reflections) pairs and is what
the ``process`` step calls per data set.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gemmi
import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Crystal, Experiment
from algorithms.reflection_table import ReflectionTable
from algorithms.refinement import refine
from algorithms.symmetry import ChangeOfBasis, bravais_settings, bravais_type_of_space_group, setting_for_space_group, symmetrize_crystal
from pipeline.errors import InputFileError, ParameterError
from pipeline.formats.expt import write_bytes_atomically
from pipeline.params import param, scope
from pipeline.refinement_report import format_table, format_value_with_esd
from pipeline.steps import StepResult
from pipeline.steps.refine import (
    DetectorParameterisation,
    Parameterisation,
    Refinement,
    reflections_of,
    refinement_options,
    with_mm_observations,
)
from pipeline.steps.reindex import reindex_reflections

NAME = "calibrate_distance"
HELP = "Refine the detector distance of many indexed data sets against a known unit cell; report the median."

logger = logging.getLogger(__name__)

# A lattice matches the known cell if, scaled to the known volume, every edge is within 5 % and
# every angle within 3° (the distance error scales the cell, it does not distort it).
LENGTH_TOLERANCE = 0.05
ANGLE_TOLERANCE_DEG = 3.0


@dataclass
class CalibrationDetector(DetectorParameterisation):
    fix: list[Literal["all", "position", "orientation", "distance"]] = param(
        ["orientation"], "Detector parameters to fix; orientation (the tilts also change the effective distance).")


@dataclass
class CalibrationParameterisation(Parameterisation):
    detector: DetectorParameterisation = scope(CalibrationDetector, "Detector parameterisation.")
    scan_varying: bool | None = param(
        False, "Restraints act on the static cell only, so the calibration refines a static crystal (T2 recipe).")


@dataclass
class CalibrationRefinement(Refinement):
    parameterisation: Parameterisation = scope(CalibrationParameterisation, "Which models and parameters are refined.")


@dataclass
class Output:
    json: str = param("calibrated_distance.json", "The calibrated distance and every data set's result.")


@dataclass
class Params:
    unit_cell: tuple[float, float, float, float, float, float] | None = param(
        None, "The known unit cell a,b,c,alpha,beta,gamma (Å, degrees), e.g. 99.06,31.01,54.30,90,107.7,90.")
    sigmas: tuple[float, ...] = param((0.01,), "Restraint sigmas of the six cell parameters (or one for all).")
    space_group: str | None = param(
        None, "Space group of the known cell, e.g. C2; None = the highest-symmetry Bravais lattice that fits it.")
    lepage_max_delta: float = param(5.0, "Largest Le Page obliquity (degrees) of a lattice two-fold.")
    refinement: CalibrationRefinement = scope(CalibrationRefinement, "Geometry refinement of each data set.")
    output: Output = scope(Output, "Output files.")


# ---------------------------------------------------------------------------------- settings


def _cell_misfit(cell: gemmi.UnitCell, known: gemmi.UnitCell) -> tuple[float, float]:
    """(largest relative edge difference after scaling to the known volume, largest angle difference)."""
    scale = (known.volume / cell.volume) ** (1.0 / 3.0)
    p, q = np.array(cell.parameters), np.array(known.parameters)
    return float(np.max(np.abs(p[:3] * scale - q[:3]) / q[:3])), float(np.max(np.abs(p[3:] - q[3:])))


def _matches(cell: gemmi.UnitCell, known: gemmi.UnitCell) -> bool:
    length, angle = _cell_misfit(cell, known)
    return length <= LENGTH_TOLERANCE and angle <= ANGLE_TOLERANCE_DEG


def known_setting(crystal: Crystal, known: gemmi.UnitCell, space_group: gemmi.SpaceGroup | None,
                  max_delta_deg: float):
    """(cb_op, space group) taking the crystal into the known cell's setting, or a reason why not."""
    cell = crystal.unit_cell
    if crystal.space_group.number != 1:
        if space_group is not None and bravais_type_of_space_group(crystal.space_group) != bravais_type_of_space_group(space_group):
            return None, f"crystal is in {crystal.space_group.hm}, not in the lattice of {space_group.hm}; give its P1 indexing"
        group = space_group or crystal.space_group
        if not _matches(cell, known):
            return None, _mismatch_reason(cell, known)
        return (ChangeOfBasis.identity(), group), ""
    if space_group is not None:
        # a target cell at the crystal's scale chooses among equivalent settings
        n_lattice_points = len(space_group.operations().cen_ops)
        scale = (cell.volume * n_lattice_points / known.volume) ** (1.0 / 3.0)
        target = gemmi.UnitCell(*(np.array(known.parameters[:3]) * scale), *known.parameters[3:])
        setting = setting_for_space_group(cell, space_group, max_delta_deg, target_cell=target)
        if setting is None:
            return None, f"the lattice has no {bravais_type_of_space_group(space_group)} setting within {max_delta_deg}°"
        if not _matches(setting.unit_cell, known):
            return None, _mismatch_reason(setting.unit_cell, known)
        return (setting.cb_op, space_group), ""
    fitting = [s for s in bravais_settings(cell, max_delta_deg, best_monoclinic_beta=False) if _matches(s.unit_cell, known)]
    if not fitting:
        return None, "no Bravais setting of the lattice matches the known cell"
    best = max(fitting, key=lambda s: (len(s.rotations), -s.max_delta_deg))
    return (best.cb_op, best.space_group), ""


def _mismatch_reason(cell: gemmi.UnitCell, known: gemmi.UnitCell) -> str:
    length, angle = _cell_misfit(cell, known)
    text = " ".join(f"{v:.2f}" for v in cell.parameters)
    return (f"cell {text} does not match the known cell (edges differ by up to {100 * length:.1f} % after "
            f"scaling, angles by up to {angle:.1f}°)")


# ----------------------------------------------------------------------------------- one data set


def calibrate_one(experiment: Experiment, reflections: ReflectionTable, known: gemmi.UnitCell, sigmas: tuple[float, ...],
                  space_group: gemmi.SpaceGroup | None, refinement: Refinement | None = None,
                  max_delta_deg: float = 5.0) -> dict:
    """Refine one data set's distance against the known cell; a dict with status "ok" or "excluded"."""
    refinement = refinement or CalibrationRefinement()
    record = {"initial_distance_mm": float(experiment.detector.distance_mm)}
    if experiment.crystal is None:
        return {**record, "status": "excluded", "reason": "no crystal: index the data set first"}
    found, reason = known_setting(experiment.crystal, known, space_group, max_delta_deg)
    if found is None:
        return {**record, "status": "excluded", "reason": reason}
    cb_op, group = found
    table, _ = reindex_reflections(reflections, cb_op)
    start = experiment.copy()
    crystal = symmetrize_crystal(cb_op.apply_to_crystal(experiment.crystal), group)
    scale = (known.volume / crystal.unit_cell.volume) ** (1.0 / 3.0)
    start.crystal = Crystal(A=crystal.A / scale, space_group=group)
    start.detector.set_distance_mm(experiment.detector.distance_mm * scale)
    options = refinement_options(refinement, outlier_auto="mcd", reflections_per_degree_auto=None,
                                 scan_varying_auto=False, auto_reduction_auto="fail")
    options.unit_cell_restraints = [(tuple(known.parameters), sigmas)] + options.unit_cell_restraints
    try:
        result = refine(start, with_mm_observations(start, table), options)
    except DataError as error:
        return {**record, "status": "excluded", "reason": f"refinement failed: {error}"}
    refined = result.experiment
    return {
        **record,
        "status": "ok",
        "reason": "",
        "distance_mm": float(refined.detector.distance_mm),
        "starting_distance_mm": float(start.detector.distance_mm),
        "cb_op": cb_op.as_string(),
        "space_group": group.hm,
        "unit_cell": list(refined.crystal.unit_cell.parameters),
        "unit_cell_esds": list(result.cell_esds) if result.cell_esds is not None else None,
        "rmsds": result.rmsds,
        "experiment": refined,
    }


def calibrate_distance(experiments_and_reflections: Sequence[tuple[Experiment, ReflectionTable]],
                       unit_cell: Sequence[float], sigmas: Sequence[float] = (0.01,),
                       space_group: str | gemmi.SpaceGroup | None = None, refinement: Refinement | None = None,
                       names: Sequence[str] | None = None, max_delta_deg: float = 5.0) -> dict:
    """Refined distance of every data set and the median over those whose lattice matches.

    Returns {"distance_mm" (the median, None if no data set fits), "distances" (each data set's
    refined distance in the order given, None where excluded), "median_distance_mm",
    "min_distance_mm", "max_distance_mm", "mean_distance_mm", "std_distance_mm",
    "mad_distance_mm", "n_used", "n_excluded", "unit_cell", "sigmas", "space_group",
    "datasets": [per data set: name, status ("ok"/"excluded"), reason, distance_mm, unit_cell,
    unit_cell_esds, rmsds, cb_op, experiment (refined, not JSON)]}.
    """
    if len(unit_cell) != 6:
        raise ParameterError(f"unit_cell={','.join(map(str, unit_cell))}: give six numbers a,b,c,alpha,beta,gamma")
    sigmas = tuple(float(s) for s in sigmas)
    if len(sigmas) == 1:
        sigmas = sigmas * 6
    if len(sigmas) != 6 or any(s < 0 for s in sigmas):
        raise ParameterError("sigmas: give one or six non-negative numbers")
    known = gemmi.UnitCell(*unit_cell)
    if isinstance(space_group, str):
        try:
            space_group = gemmi.SpaceGroup(space_group)
        except ValueError:
            raise ParameterError(f"space_group={space_group}: not a space group symbol (e.g. C2)") from None
    names = list(names) if names is not None else [str(i + 1) for i in range(len(experiments_and_reflections))]
    datasets = []
    for name, (experiment, reflections) in zip(names, experiments_and_reflections):
        record = calibrate_one(experiment, reflections, known, sigmas, space_group, refinement, max_delta_deg)
        datasets.append({"name": name, **record})
        if record["status"] == "ok":
            logger.debug("%s: distance %.1f mm", name, record["distance_mm"])
    distances = np.array([d["distance_mm"] for d in datasets if d["status"] == "ok"])
    median = float(np.median(distances)) if len(distances) else None
    return {
        "distance_mm": median,
        "distances": [d.get("distance_mm") for d in datasets],
        "median_distance_mm": median,
        "min_distance_mm": float(distances.min()) if len(distances) else None,
        "max_distance_mm": float(distances.max()) if len(distances) else None,
        "mean_distance_mm": float(distances.mean()) if len(distances) else None,
        "std_distance_mm": float(distances.std(ddof=1)) if len(distances) > 1 else None,
        "mad_distance_mm": float(np.median(np.abs(distances - median))) if len(distances) else None,
        "n_used": int(len(distances)),
        "n_excluded": int(len(datasets) - len(distances)),
        "unit_cell": list(known.parameters),
        "sigmas": list(sigmas),
        "space_group": space_group.hm if space_group is not None else None,
        "datasets": datasets,
    }


# ------------------------------------------------------------------------------------ report


def calibration_table(summary: dict) -> str:
    """Per data set: distance, refined cell (with esds), RMSDs and status; the reasons for
    exclusions; then the median and spread."""
    rows, reasons = [], []
    for d in summary["datasets"]:
        if d["status"] != "ok":
            rows.append([d["name"], "-", "-", "-", "-", "-", "-", "-", "excluded"])
            reasons.append(f"{d['name']}: excluded: {d['reason']}")
            continue
        esds = d["unit_cell_esds"] or [None] * 6
        cell = [format_value_with_esd(v, e) if e else f"{v:.2f}" for v, e in zip(d["unit_cell"], esds)]
        r = d["rmsds"]
        rows.append([d["name"], f"{d['distance_mm']:.1f}", " ".join(cell[:3]), " ".join(cell[3:]),
                     f"{r['x_px']:.3f}", f"{r['y_px']:.3f}", f"{r['z_images']:.3f}", str(r["nref"]), "ok"])
    headers = ["Data set", "Distance\n(mm)", "a, b, c\n(Å)", "alpha, beta, gamma\n(°)", "RMSD_X\n(px)",
               "RMSD_Y\n(px)", "RMSD_Z\n(images)", "Nref", "status"]
    text = "\n".join([format_table(headers, rows, right_aligned_columns=[0, 1, 4, 5, 6, 7])] + reasons)
    if summary["distance_mm"] is None:
        return text + "\nNo data set matches the known cell: no calibrated distance"
    spread = (f"Distance over {summary['n_used']} data sets ({summary['n_excluded']} excluded): median "
              f"{summary['median_distance_mm']:.1f} mm, range {summary['min_distance_mm']:.1f}–"
              f"{summary['max_distance_mm']:.1f} mm, mean {summary['mean_distance_mm']:.1f} mm")
    if summary["std_distance_mm"] is not None:
        spread += f", sd {summary['std_distance_mm']:.1f} mm, MAD {summary['mad_distance_mm']:.1f} mm"
    return f"{text}\n{spread}\nCalibrated detector distance (median): {summary['distance_mm']:.1f} mm"


def summary_for_json(summary: dict) -> dict:
    """The summary without the refined experiment objects."""
    return {**summary, "datasets": [{k: v for k, v in d.items() if k != "experiment"} for d in summary["datasets"]]}


# ------------------------------------------------------------------------------------ the step


def _check_params(params: Params) -> None:
    if params.unit_cell is None:
        raise ParameterError("unit_cell: give the known cell, e.g. unit_cell=99.06,31.01,54.30,90,107.7,90")


def run(experiments: list[Experiment], reflections: ReflectionTable, params: Params) -> StepResult:
    """Calibrate from several experiments (reflections told apart by ``id``)."""
    _check_params(params)
    pairs = [(e, reflections.select(reflections_of(reflections, i, len(experiments)))) for i, e in enumerate(experiments)]
    summary = calibrate_distance(pairs, params.unit_cell, params.sigmas, params.space_group, params.refinement,
                                 max_delta_deg=params.lepage_max_delta)
    refined = [d["experiment"] for d in summary["datasets"] if d["status"] == "ok"]
    return StepResult(refined, None, summary)


def dataset_files(files: Sequence[str]) -> list[tuple[str, Path, Path]]:
    """(name, .expt, .refl) per data set: folders holding indexed.expt/indexed.refl, or .expt and
    .refl files paired in the order given."""
    folders = [Path(f) for f in files if Path(f).is_dir()]
    expts = [Path(f) for f in files if str(f).endswith(".expt")]
    refls = [Path(f) for f in files if str(f).endswith(".refl")]
    others = [f for f in files if not Path(f).is_dir() and not str(f).endswith((".expt", ".refl"))]
    if others:
        raise InputFileError(f"ewald {NAME}: {others[0]}: not a folder, .expt or .refl file (nor a key=value parameter)")
    if len(expts) != len(refls):
        raise InputFileError(f"ewald {NAME}: give the .expt and .refl files in pairs; got {len(expts)} .expt and "
                             f"{len(refls)} .refl files")
    out = [(str(folder), folder / "indexed.expt", folder / "indexed.refl") for folder in folders]
    out += [(str(e.with_suffix("")), e, r) for e, r in zip(expts, refls)]
    if not out:
        raise InputFileError(f"ewald {NAME}: give indexed data sets: folders with indexed.expt/indexed.refl, or "
                             ".expt/.refl pairs")
    for _, e, r in out:
        for path in (e, r):
            if not path.is_file():
                raise InputFileError(f"{path}: file not found; check the path")
    return out


def cli(params: Params, files: list[str]) -> None:
    """Read every data set, calibrate, log the table and write calibrated_distance.json."""
    from pipeline.formats.expt import read_experiments
    from pipeline.formats.refl import read_reflections

    _check_params(params)
    pairs, names = [], []
    for name, expt_path, refl_path in dataset_files(files):
        experiments = read_experiments(expt_path)
        reflections = read_reflections(refl_path)
        for i, experiment in enumerate(experiments):
            pairs.append((experiment, reflections.select(reflections_of(reflections, i, len(experiments)))))
            names.append(name if len(experiments) == 1 else f"{name}#{i}")
    summary = calibrate_distance(pairs, params.unit_cell, params.sigmas, params.space_group, params.refinement,
                                 names, params.lepage_max_delta)
    logger.info(calibration_table(summary))
    if summary["distance_mm"] is None:
        raise DataError("no data set matches the known unit cell; check unit_cell= and space_group=")
    write_bytes_atomically(Path(params.output.json), (json.dumps(summary_for_json(summary), indent=2) + "\n").encode())
    logger.info("Saving the calibrated distance to %s", params.output.json)
