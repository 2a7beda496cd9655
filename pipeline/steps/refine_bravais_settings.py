"""``ewald refine_bravais_settings``: indexed.expt + indexed.refl (P1) → bravais_setting_N.expt and
bravais_summary.json, as ``dials.refine_bravais_settings`` (algorithms.md §6.1).

For every Bravais lattice compatible with the P1 metric (Le Page 1982, via
:func:`algorithms.symmetry.bravais_settings`): transform the crystal with the setting's cb_op,
symmetrise its metric for the lowest-symmetry chiral group of that lattice, re-index the P1
reflections, and refine twice (first the reflections indexing used, without outlier rejection;
then all, with Tukey rejection; 100 reflections per degree, static). Each solution is scored by
its rmsd = √(RMSD_X² + RMSD_Y²) in mm, its number of spots, and the correlation of the strong
spots' I/σ between reflections related by each rotation of the lattice group (min/max cc); a
recommendation heuristic compares the rmsd with the P1 solution's.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Experiment
from algorithms.reflection_table import Flags, ReflectionTable
from algorithms.refinement import RefinementResult, refine
from algorithms.symmetry import BravaisSetting, bravais_settings, bravais_type_of_space_group, symmetrize_crystal
from algorithms.symmetry.reduction import niggli_reduce_cell
from pipeline.formats.expt import write_bytes_atomically
from pipeline.params import param, scope
from pipeline.refinement_report import format_table
from pipeline.steps import StepResult
from pipeline.steps.refine import Refinement, reflections_of, refinement_options, with_mm_observations

NAME = "refine_bravais_settings"
HELP = "Refine the P1 indexing solution in every compatible Bravais lattice and score them, as dials.refine_bravais_settings."

logger = logging.getLogger(__name__)

# DIALS' rule: "Keep operators with more than 10 common reflections"
MIN_COMMON_REFLECTIONS = 10
_BRAVAIS_ORDER = ["aP", "mP", "mC", "oP", "oC", "oF", "oI", "tP", "tI", "hP", "hR", "cP", "cF", "cI"]


@dataclass
class Output:
    directory: str = param(".", "Folder for bravais_setting_N.expt and the summary.")
    summary: str = param("bravais_summary.json", "JSON summary of all solutions.")


@dataclass
class Params:
    lepage_max_delta: float = param(5.0, "Largest Le Page obliquity (degrees) of a lattice two-fold.")
    best_monoclinic_beta: bool = param(
        True, "For centred monoclinic lattices prefer the I2 cell when its beta is closer to 90° than C2's; "
              "False keeps the C2 cell.")
    refinement: Refinement = scope(Refinement, "Geometry refinement of each solution (static).")
    output: Output = scope(Output, "Output files.")


@dataclass
class Solution:
    """One refined Bravais setting (DIALS' bravais_summary.json entry)."""

    number: int
    setting: BravaisSetting
    refinement: RefinementResult
    rmsd_mm: float
    nspots: int
    correlation_coefficients: list[float]
    cc_nrefs: list[int]
    recommended: bool = False

    @property
    def experiment(self) -> Experiment:
        return self.refinement.experiment

    @property
    def min_cc(self) -> float | None:
        return min(self.correlation_coefficients) if self.correlation_coefficients else None

    @property
    def max_cc(self) -> float | None:
        return max(self.correlation_coefficients) if self.correlation_coefficients else None

    def as_summary(self) -> dict:
        cell = self.experiment.crystal.unit_cell
        return {
            "bravais": self.setting.setting_symbol,
            "max_angular_difference": self.setting.max_delta_deg,
            "rmsd": self.rmsd_mm,
            "nspots": self.nspots,
            "min_cc": self.min_cc,
            "max_cc": self.max_cc,
            "correlation_coefficients": self.correlation_coefficients,
            "cc_nrefs": self.cc_nrefs,
            "unit_cell": list(cell.parameters),
            "cb_op": self.setting.cb_op.as_string(),
            "recommended": self.recommended,
        }


# ------------------------------------------------------------------------- intensity agreement


def _index_keys(hkl: np.ndarray) -> np.ndarray:
    h = np.asarray(hkl, np.int64) + 1024
    return (h[:, 0] * 2048 + h[:, 1]) * 2048 + h[:, 2]


def symmetry_correlations(hkl: np.ndarray, values: np.ndarray, rotations: np.ndarray,
                          to_reduced: np.ndarray) -> tuple[list[float], list[int]]:
    """Pearson CC (and number of pairs) between the values and their copies re-indexed by each
    non-identity rotation; only rotations with more than 10 common reflections count.

    ``hkl`` are indices in the input (P1) basis, ``rotations`` act on direct fractional
    coordinates of the reduced basis reached by ``to_reduced`` (h_red = to_reduced·h). Repeated
    observations of one index are averaged first; Friedel mates are kept apart (anomalous).
    """
    unique, inverse = np.unique(np.asarray(hkl, np.int64), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    mean = np.bincount(inverse, weights=values) / np.bincount(inverse)
    keys = _index_keys(unique)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    R = np.asarray(to_reduced, float)
    ccs, nrefs = [], []
    for W in rotations:
        if np.array_equal(W, np.eye(3)):
            continue
        # indices transform with W^-T in the reduced basis
        op = np.linalg.inv(R) @ np.linalg.inv(W).T @ R
        mapped = np.rint(unique @ op.T).astype(np.int64)
        position = np.searchsorted(sorted_keys, _index_keys(mapped))
        position = np.minimum(position, len(sorted_keys) - 1)
        found = sorted_keys[position] == _index_keys(mapped)
        n = int(found.sum())
        if n <= MIN_COMMON_REFLECTIONS:
            continue
        x, y = mean[found], mean[order[position[found]]]
        if np.std(x) == 0 or np.std(y) == 0:
            continue
        ccs.append(float(np.corrcoef(x, y)[0, 1]))
        nrefs.append(n)
    return ccs, nrefs


def strong_i_over_sigma(reflections: ReflectionTable) -> tuple[np.ndarray, np.ndarray]:
    """Indexed rows with a positive strong-spot variance: (miller_index, I/σ)."""
    if "intensity.sum.value" not in reflections or "intensity.sum.variance" not in reflections:
        return np.zeros((0, 3), int), np.zeros(0)
    variance = np.asarray(reflections["intensity.sum.variance"], float)
    hkl = np.asarray(reflections["miller_index"])
    ok = (variance > 0) & np.any(hkl != 0, axis=1)
    return hkl[ok], np.asarray(reflections["intensity.sum.value"], float)[ok] / np.sqrt(variance[ok])


# ----------------------------------------------------------------------------- one solution


def reindexed(reflections: ReflectionTable, setting: BravaisSetting) -> ReflectionTable:
    """The reflections with Miller indices in the setting (indexed rows only)."""
    hkl, integral = setting.cb_op.apply_to_hkl(reflections["miller_index"])
    keep = integral & np.any(np.asarray(reflections["miller_index"]) != 0, axis=1)
    table = reflections.select(keep)
    table["miller_index"] = hkl[keep].astype(np.int32)
    return table


def refine_setting(experiment: Experiment, reflections: ReflectionTable, setting: BravaisSetting,
                   refinement: Refinement) -> RefinementResult:
    """Transform, symmetrise, re-index and refine (two rounds, as DIALS) one Bravais setting."""
    start = experiment.copy()
    start.crystal = symmetrize_crystal(setting.cb_op.apply_to_crystal(experiment.crystal), setting.space_group)
    table = reindexed(reflections, setting)
    options = refinement_options(refinement, outlier_auto="tukey", reflections_per_degree_auto=100.0,
                                 scan_varying_auto=False, auto_reduction_auto="fix", scan_varying=False)
    used_before = table.get_flags(Flags.used_in_refinement) if "flags" in table else np.zeros(len(table), bool)
    first_rows = table.select(used_before) if used_before.sum() >= 20 else table
    first_options = refinement_options(refinement, outlier_auto="tukey", reflections_per_degree_auto=100.0,
                                       scan_varying_auto=False, auto_reduction_auto="fix", scan_varying=False,
                                       outlier_algorithm="null")
    first = refine(start, first_rows, first_options)
    return refine(first.experiment, table, options)


def recommend(solutions: list[Solution]) -> None:
    """DIALS' heuristic (algorithms.md §6.1.7) against the P1 solution's rmsd."""
    p1 = next(s for s in solutions if s.setting.bravais == "aP")
    r1 = p1.rmsd_mm
    for s in solutions:
        min_cc = s.min_cc
        ok = True
        if s.setting.max_delta_deg < 0.5:
            if (min_cc is None or min_cc < 0.5) and s.rmsd_mm > 1.5 * r1:
                ok = False
        elif (min_cc is None or min_cc < 0.7) and s.rmsd_mm > 2.0 * r1:
            ok = False
        if s.rmsd_mm > 3.0 * r1:
            ok = False
        s.recommended = ok


# ------------------------------------------------------------------------------------ the step


def run(experiments: list[Experiment], reflections: ReflectionTable, params: Params) -> StepResult:
    """Refine the P1 solution in every Bravais setting; experiments are the refined solutions in
    solution order (1 = aP), the summary holds the :class:`Solution` list."""
    if len(experiments) != 1:
        raise DataError(f"refine_bravais_settings needs exactly one indexed experiment, got {len(experiments)}; "
                        "split the experiments first")
    experiment = experiments[0]
    if experiment.crystal is None:
        raise DataError("refine_bravais_settings: the experiment has no crystal; index it first")
    if experiment.crystal.space_group.number != 1:
        raise DataError(f"refine_bravais_settings: the crystal is in {experiment.crystal.space_group.hm}, not P1; "
                        "run it on the P1 indexing result")
    rows = reflections_of(reflections, 0, 1) & np.any(np.asarray(reflections["miller_index"]) != 0, axis=1)
    table = with_mm_observations(experiment, reflections.select(rows))
    if len(table) == 0:
        raise DataError("refine_bravais_settings: no indexed reflections")
    cell = experiment.crystal.unit_cell
    settings = bravais_settings(cell, params.lepage_max_delta, params.best_monoclinic_beta)
    _, to_reduced = niggli_reduce_cell(cell)
    hkl_strong, i_over_sigma = strong_i_over_sigma(table)
    solutions = []
    for k, setting in enumerate(settings):
        result = refine_setting(experiment, table, setting, params.refinement)
        ccs, nrefs = symmetry_correlations(hkl_strong, i_over_sigma, setting.rotations, to_reduced.P)
        solutions.append(Solution(
            number=len(settings) - k, setting=setting, refinement=result,
            rmsd_mm=float(np.hypot(result.rmsds["x_mm"], result.rmsds["y_mm"])), nspots=int(result.rmsds["nref"]),
            correlation_coefficients=ccs, cc_nrefs=nrefs))
    recommend(solutions)
    ordered = sorted(solutions, key=lambda s: s.number)
    return StepResult([s.experiment for s in ordered], None,
                      {"solutions": solutions, "bravais_summary": bravais_summary(solutions)})


def bravais_summary(solutions: list[Solution]) -> dict:
    """bravais_summary.json: solution number (as text) → DIALS' keys."""
    return {str(s.number): s.as_summary() for s in sorted(solutions, key=lambda s: s.number)}


def _chiral_name(space_group: gemmi.SpaceGroup) -> str:
    name = space_group.short_name()
    return "R" + name[1:] if name.startswith("H") else name  # gemmi calls hexagonal-axes R groups "H"


def chiral_space_groups_text(bravais_types: set[str]) -> str:
    """"Chiral space groups corresponding to each Bravais lattice:" for the lattices present."""
    lines = ["Chiral space groups corresponding to each Bravais lattice:"]
    for bravais in _BRAVAIS_ORDER:
        if bravais not in bravais_types:
            continue
        groups = [gemmi.find_spacegroup_by_number(n) for n in range(1, 231)]
        names = [_chiral_name(g) for g in groups if g.is_sohncke() and bravais_type_of_space_group(g) == bravais]
        lines.append(f"{bravais}: {' '.join(names)}")
    return "\n".join(lines)


def solutions_table(solutions: list[Solution]) -> str:
    """DIALS' table, highest solution number first, and the footnote."""
    rows = []
    for s in sorted(solutions, key=lambda s: -s.number):
        cell = s.experiment.crystal.unit_cell
        cc = "-/-" if s.min_cc is None else f"{s.min_cc:.3f}/{s.max_cc:.3f}"
        rows.append([
            "%1s%7d" % ("*" if s.recommended else "", s.number),
            f"{s.setting.max_delta_deg:6.4f}", f"{s.rmsd_mm:5.3f}", cc, str(s.nspots), s.setting.setting_symbol,
            "%6.2f %6.2f %6.2f %6.2f %6.2f %6.2f" % tuple(cell.parameters), f"{cell.volume:.0f}",
            s.setting.cb_op.as_string(),
        ])
    headers = ["Solution", "Metric fit", "rmsd", "min/max cc", "#spots", "lattice", "unit_cell", "volume", "cb_op"]
    return format_table(headers, rows, right_aligned_columns=[0]) + "\n* = recommended solution"


def cli(params: Params, files: list[str]) -> None:
    """Read indexed.expt/refl, refine every setting, log the table, write the files."""
    from pipeline.formats.expt import read_experiments, write_experiments
    from pipeline.formats.refl import read_reflections
    from pipeline.inputs import experiments_and_reflections_from

    experiments_path, reflections_path = experiments_and_reflections_from(files, NAME)
    experiments = read_experiments(experiments_path)
    reflections = read_reflections(reflections_path)
    result = run(experiments, reflections, params)
    solutions = result.summary["solutions"]
    logger.info(chiral_space_groups_text({s.setting.bravais for s in solutions}))
    logger.info(solutions_table(solutions))
    folder = Path(params.output.directory)
    folder.mkdir(parents=True, exist_ok=True)
    summary_path = folder / params.output.summary
    logger.info("Saving summary as %s", summary_path)
    write_bytes_atomically(summary_path, (json.dumps(result.summary["bravais_summary"], indent=2) + "\n").encode())
    for s in sorted(solutions, key=lambda s: -s.number):
        path = folder / f"bravais_setting_{s.number}.expt"
        logger.info("Saving solution %d as %s", s.number, path)
        write_experiments([s.experiment], path)
