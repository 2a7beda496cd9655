"""``ewald index``: imported.expt + strong.refl → indexed.expt + indexed.refl (``dials.index``).

Per sweep (algorithms.md §4): spots → reciprocal-lattice points, max_cell, FFT basis vectors,
candidate lattices (each with DIALS' short refinement, :mod:`pipeline.indexing_refinement`),
weighted ranking, then macro-cycles of index + static refinement at increasing resolution that
carry the refined beam, detector and goniometer along (refinement defaults of dials.index:
Tukey outliers, 100 reflections per degree; ``detector.fix=distance goniometer.fix=None`` set
``refinement.parameterisation.*.fix``). ``space_group=`` / ``unit_cell=`` put every candidate
into the known symmetry as DIALS' ``known_symmetry`` does.

Beyond DIALS (DESIGN.md): indexing checks its own answer. If the chosen solution's RMSDs are
poor, too few spots index, or its cell disagrees with a known cell, the next-ranked candidate
lattices are indexed, then the sweep is indexed again with the rotation axis reversed, with the
axis refined (both senses) and with the other basis-vector search; the best acceptable attempt
wins, and the summary records every attempt. A solution whose cell is an integer multiple of a
candidate's that indexed a fair share of spots is retried from that smaller lattice.
If none fits, a cell that disagrees is an error (DataError) and poor RMSDs are a warning.

indexed.refl holds every strong spot: ``miller_index`` and ``id`` (−1 unindexed), ``xyzcal.px``
/ ``xyzcal.mm`` (0 for unindexed, as DIALS), ``xyzobs.mm.*``, ``s1``, ``rlp``, ``entering``,
``imageset_id`` and the flags indexed / used_in_refinement / centroid_outlier; shoeboxes and
every other strong-spot column are kept.
"""
from __future__ import annotations

import itertools
import logging
import uuid
from dataclasses import dataclass, field, replace
from typing import Literal

import gemmi
import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Crystal, Experiment
from algorithms.indexing import Candidate, index_reflections
from algorithms.indexing.known_symmetry import cells_match
from algorithms.refinement import RefinementOptions
from algorithms.reflection_table import Flags, ReflectionTable
from pipeline.errors import InputFileError, ParameterError
from pipeline.indexing_refinement import IndexingRefiner, candidate_options, spot_geometry
from pipeline.params import param, scope
from pipeline.refinement_report import crystal_model_text, format_table, log_refinement
from pipeline.steps import StepResult
from pipeline.steps.refine import Refinement, refinement_options

NAME = "index"
HELP = "Find the crystal lattice, assign Miller indices and refine the geometry (indexed.expt/refl), as dials.index."

logger = logging.getLogger(__name__)
RULE = "#" * 80


# ------------------------------------------------------------------------------- parameters


@dataclass
class ReciprocalSpaceGrid:
    n_points: int = param(256, "FFT grid points along each axis (rounded up to a product of 2, 3 and 5).")
    d_min: float | None = param(None, "Resolution of the FFT grid (Å); None = max(5·max_cell/n_points, min spot d).")


@dataclass
class Fft3d:
    reciprocal_space_grid: ReciprocalSpaceGrid = scope(ReciprocalSpaceGrid, "The 3D FFT grid.")


@dataclass
class BasisVectorCombinations:
    max_refine: int = param(50, "Candidate lattices refined and ranked.")


@dataclass
class RefinementProtocol:
    n_macro_cycles: int = param(5, "Macro-cycles of index + refine at increasing resolution.")


@dataclass
class Simple:
    hkl_tolerance: float = param(0.3, "Largest |h_f − h| (Euclidean norm) for a spot to be indexed.")
    split_pieces: bool = param(True, "Spots that DIALS' duplicate rule leaves unindexed but that round to an indexed "
                                     "spot's h at the same detector place (a reflection the spot finder split in z) are "
                                     "indexed as pieces of it, excluded from refinement (ewald; False = DIALS).")


@dataclass
class IndexAssignment:
    simple: Simple = scope(Simple, "Rounding assignment of Miller indices.")


@dataclass
class KnownSymmetry:
    space_group: str | None = param(None, "Index in this space group (e.g. C2), as DIALS' known_symmetry.")
    unit_cell: tuple[float, float, float, float, float, float] | None = param(
        None, "Index with a cell near this one (a,b,c,alpha,beta,gamma; lengths within 10 %, angles within 5°).")
    max_delta: float = param(5.0, "Largest Le Page δ (degrees) for a candidate to fit the known lattice.")


@dataclass
class Indexing:
    method: Literal["fft3d", "fft1d"] = param("fft3d", "Basis-vector search.")
    max_cell: float | None = param(None, "Longest cell edge (Å) sought; None = estimated from the spots' neighbours.")
    min_cell: float = param(3.0, "Shortest basis vector (Å) kept from the FFT.")
    min_cell_volume: float = param(25.0, "Smallest cell volume (Å³) of a candidate lattice.")
    fft3d: Fft3d = scope(Fft3d, "3D FFT search.")
    basis_vector_combinations: BasisVectorCombinations = scope(BasisVectorCombinations, "Candidate lattices.")
    refinement_protocol: RefinementProtocol = scope(RefinementProtocol, "Macro-cycles.")
    index_assignment: IndexAssignment = scope(IndexAssignment, "Miller-index assignment.")
    known_symmetry: KnownSymmetry = scope(KnownSymmetry, "Known space group and cell.")


@dataclass
class SelfCheck:
    enabled: bool = param(True, "Check the solution and retry (next candidate lattices, axis reversed, axis refined, "
                                "fft1d) if it is poor (ewald).")
    max_rmsd_xy_px: float = param(2.0, "A solution with RMSD_X or RMSD_Y above this (pixels) is poor.")
    max_rmsd_z_images: float = param(0.5, "A solution with RMSD_Z above this (images) is poor.")
    min_fraction_indexed: float = param(0.5, "A solution indexing fewer of the strong spots than this is poor.")
    max_cell_difference: float = param(
        0.05, "With a known unit_cell: a refined cell whose edges differ by more than this fraction (or angles by "
              "more than 100× this in degrees) disagrees.")


@dataclass
class Output:
    experiments: str = param("indexed.expt", "The output experiment file.")
    reflections: str = param("indexed.refl", "The output reflection file.")
    log: str = param("index.log", "The log file.")


@dataclass
class Params:
    indexing: Indexing = scope(Indexing, "Indexing.")
    refinement: Refinement = scope(Refinement, "Geometry refinement in the macro-cycles (static; dials.index's "
                                                "defaults: tukey outliers, 100 reflections per degree).")
    self_check: SelfCheck = scope(SelfCheck, "ewald's check of the solution.")
    output: Output = scope(Output, "Output files.")


@dataclass
class IndexingSettings:
    """What :func:`index_sweep` needs, independent of the command line."""

    refinement: RefinementOptions
    method: str = "fft3d"
    max_cell: float | None = None
    min_cell: float = 3.0
    min_cell_volume: float = 25.0
    n_points: int = 256
    fft_d_min: float | None = None
    max_refine: int = 50
    n_macro_cycles: int = 5
    hkl_tolerance: float = 0.3
    split_pieces: bool = True
    space_group: gemmi.SpaceGroup | None = None
    unit_cell: gemmi.UnitCell | None = None
    max_delta_deg: float = 5.0
    refine_candidates: bool = True  # False: rank candidates by the linear fit (faster)


def settings_from_params(params: Params) -> IndexingSettings:
    ix = params.indexing
    ks = ix.known_symmetry
    space_group = None
    if ks.space_group is not None:
        try:
            space_group = gemmi.SpaceGroup(ks.space_group)
        except ValueError:
            raise ParameterError(f"space_group={ks.space_group}: unknown space group; give e.g. C2 or P43212") from None
    unit_cell = None
    if ks.unit_cell is not None:
        unit_cell = gemmi.UnitCell(*ks.unit_cell)
        if not unit_cell.volume > 0:
            raise ParameterError(f"unit_cell={','.join(map(str, ks.unit_cell))}: not a valid cell (a,b,c,alpha,beta,gamma)")
    if ix.refinement_protocol.n_macro_cycles < 1:
        raise ParameterError("n_macro_cycles must be at least 1")
    if ix.max_cell is not None and not ix.max_cell > 0:
        raise ParameterError(f"max_cell={ix.max_cell}: give a positive length (Å) or Auto")
    return IndexingSettings(
        refinement=refinement_options(params.refinement, outlier_auto="tukey", reflections_per_degree_auto=100.0,
                                      scan_varying_auto=False, auto_reduction_auto="fail", scan_varying=False),
        method=ix.method, max_cell=ix.max_cell, min_cell=ix.min_cell, min_cell_volume=ix.min_cell_volume,
        n_points=ix.fft3d.reciprocal_space_grid.n_points, fft_d_min=ix.fft3d.reciprocal_space_grid.d_min,
        max_refine=ix.basis_vector_combinations.max_refine, n_macro_cycles=ix.refinement_protocol.n_macro_cycles,
        hkl_tolerance=ix.index_assignment.simple.hkl_tolerance, split_pieces=ix.index_assignment.simple.split_pieces,
        space_group=space_group, unit_cell=unit_cell,
        max_delta_deg=ks.max_delta)


# ---------------------------------------------------------------------------- one sweep


@dataclass
class SweepIndexing:
    """The outcome of indexing one sweep."""

    experiment: Experiment  # refined geometry with the crystal
    table: ReflectionTable  # the sweep's strong spots with the indexing columns
    summary: dict = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)  # ranked as summary["candidates"]

    @property
    def n_indexed(self) -> int:
        return int(self.table.get_flags(Flags.indexed).sum())

    @property
    def fraction_indexed(self) -> float:
        return self.n_indexed / max(len(self.table), 1)

    @property
    def rmsds(self) -> dict:
        return self.summary["rmsds"]


def _crystal_record(crystal: Crystal, cell_esds=None) -> dict:
    return {"unit_cell": list(crystal.unit_cell.parameters), "space_group": crystal.space_group.hm,
            "A": crystal.A.tolist(), "cell_esds": list(cell_esds) if cell_esds is not None else None}


def _crystal_from_record(record: dict) -> Crystal:
    return Crystal(A=np.array(record["A"]), space_group=gemmi.SpaceGroup(record["space_group"]))


def _refinement_record(result) -> dict:
    return {"residual_summaries": result.residual_summaries, "history": result.history,
            "termination": result.termination, "rmsds": result.rmsds,
            "crystal": _crystal_record(result.experiment.crystal, result.cell_esds)}


def index_sweep(experiment: Experiment, strong: ReflectionTable, settings: IndexingSettings,
                start_crystal: Crystal | None = None) -> SweepIndexing:
    """Index one sweep's strong spots (all rows of ``strong`` belong to it); pure function.

    ``start_crystal`` (a candidate's ``p1_crystal``) skips the basis-vector search and indexes
    that lattice."""
    if experiment.scan is None or experiment.goniometer is None:
        raise DataError("indexing needs a rotation sweep (scan and goniometer); give the imported.expt of a sweep")
    xyz = np.asarray(strong["xyzobs.px.value"], float).reshape(-1, 3)
    variance = np.asarray(strong["xyzobs.px.variance"], float).reshape(-1, 3)
    rlp, phi_rad, entering = spot_geometry(experiment, xyz)
    macro = IndexingRefiner(experiment, xyz, variance, settings.refinement, carry_geometry=True)
    candidate = (IndexingRefiner(experiment, xyz, variance, candidate_options(settings.refinement), carry_geometry=False)
                 if settings.refine_candidates else None)
    bboxes = strong["bbox"] if "bbox" in strong else None
    result = index_reflections(
        rlp, None, phi_rad, entering, method=settings.method, max_cell=settings.max_cell,
        known_space_group=settings.space_group, known_unit_cell=settings.unit_cell, refine=macro,
        refine_candidate=candidate, max_delta_deg=settings.max_delta_deg, hkl_tolerance=settings.hkl_tolerance,
        max_refine=settings.max_refine, n_macro_cycles=settings.n_macro_cycles, n_points=settings.n_points,
        fft_d_min=settings.fft_d_min, min_cell=settings.min_cell, min_cell_volume=settings.min_cell_volume,
        bboxes=bboxes, start_crystal=start_crystal,
        footprints=bboxes[:, :4] if settings.split_pieces and bboxes is not None else None)
    final = macro.results[-1]
    refined = macro.experiment.replace(crystal=result.crystal)
    # the last macro-cycle's assignment, in the basis of the returned crystal (P1 cells are
    # Niggli-reduced once more after refinement); its centroid outliers stay indexed, as in DIALS,
    # and so do the split pieces of its reflections
    to_final = np.rint(np.linalg.inv(result.crystal.A) @ final.experiment.crystal.A).astype(np.int64)
    pieces = result.piece_of >= 0
    indexed = macro.last_indexed_mask | pieces
    hkl = np.where(macro.last_indexed_mask[:, None], macro.last_miller_index @ to_final.T,
                   np.where(pieces[:, None], result.miller_index, 0)).astype(np.int32)
    table = _indexed_table(strong, refined, macro, final, indexed, hkl, result.piece_of)

    # DIALS prints "% indexed" before each refinement: spots assigned out of those considered
    cycles = [{"d_min": float(cycle["d_min"]), "n_considered": cycle["n_considered"], "n_indexed": n_assigned,
               "crystal_before": _crystal_record(crystal_before), **_refinement_record(refinement)}
              for cycle, n_assigned, crystal_before, refinement
              in zip(result.cycles, macro.indexed_counts, macro.crystals_in, macro.results)]
    summary = {
        "max_cell": result.max_cell, "d_min_fft": float(result.d_min_fft), "n_points": settings.n_points,
        "method": settings.method, "n_centroids": result.n_centroids, "candidates": result.candidates_table,
        "d_min_step": float((result.d_min_fft - np.min(1.0 / np.linalg.norm(rlp, axis=1)))
                            / max(settings.n_macro_cycles - 1, 1)),
        "cycles": cycles,
        "n_indexed": int(indexed.sum()), "n_split_pieces": int(pieces.sum()), "n_strong": len(strong),
        "n_used_in_refinement": int(final.used_in_refinement.sum()), "rmsds": final.rmsds,
        "crystal": _crystal_record(result.crystal, final.cell_esds if np.array_equal(to_final, np.eye(3)) else None),
        "rotation_axis": refined.goniometer.rotation_axis.tolist(),
        "distance_mm": refined.detector.distance_mm,
    }
    return SweepIndexing(refined, table, summary, result.candidates)


def _indexed_table(strong: ReflectionTable, experiment: Experiment, macro: IndexingRefiner, final,
                   indexed: np.ndarray, hkl: np.ndarray, piece_of: np.ndarray) -> ReflectionTable:
    """The strong spots with the indexing columns; a split piece takes its reflection's
    prediction and is excluded from refinement."""
    table = strong.copy()
    n = len(table)
    xyz = np.asarray(strong["xyzobs.px.value"], float).reshape(-1, 3)
    table["miller_index"] = hkl
    table["id"] = np.where(indexed, 0, -1).astype(np.int32)
    table["xyzobs.mm.value"] = macro.obs_mm
    table["xyzobs.mm.variance"] = macro.var_mm
    pieces = piece_of >= 0
    source = np.where(pieces, piece_of, np.arange(n))  # the row whose prediction a spot takes
    xyzcal_mm, xyzcal_px = final.xyzcal_mm[source], final.xyzcal_px[source]
    valid = indexed & np.all(np.isfinite(xyzcal_mm), axis=1)
    table["xyzcal.mm"] = np.where(valid[:, None], np.nan_to_num(xyzcal_mm), 0.0)
    table["xyzcal.px"] = np.where(valid[:, None], np.nan_to_num(xyzcal_px), 0.0)
    rlp, _, entering = spot_geometry(experiment, xyz)
    table["rlp"] = rlp
    table["s1"] = experiment.detector.pixel_to_s1(xyz[:, :2], experiment.beam.s0)
    table["entering"] = entering
    table["imageset_id"] = np.zeros(n, np.int32)
    if "flags" not in table:
        table["flags"] = np.full(n, int(Flags.strong), np.uint64)
    table.unset_flags(np.ones(n, bool), Flags.indexed | Flags.used_in_refinement | Flags.centroid_outlier
                      | Flags.excluded_for_refinement)
    table.set_flags(indexed, Flags.indexed)
    table.set_flags(pieces, Flags.excluded_for_refinement)
    table.set_flags(indexed & final.used_in_refinement, Flags.used_in_refinement)
    table.set_flags(indexed & final.centroid_outlier, Flags.centroid_outlier)
    table.experiment_identifiers = {0: experiment.identifier}
    return table


# ------------------------------------------------------------------------------ self-check


def solution_problems(outcome: SweepIndexing, settings: IndexingSettings, check: SelfCheck) -> list[str]:
    """Why a solution is not acceptable (empty if it is)."""
    problems = []
    rmsds = outcome.rmsds
    if max(rmsds["x_px"], rmsds["y_px"]) > check.max_rmsd_xy_px:
        problems.append(f"RMSD_X/Y {rmsds['x_px']:.2f}/{rmsds['y_px']:.2f} px > {check.max_rmsd_xy_px}")
    if rmsds["z_images"] > check.max_rmsd_z_images:
        problems.append(f"RMSD_Z {rmsds['z_images']:.2f} images > {check.max_rmsd_z_images}")
    if outcome.fraction_indexed < check.min_fraction_indexed:
        problems.append(f"only {100 * outcome.fraction_indexed:.1f}% of the strong spots indexed")
    if settings.unit_cell is not None and not _cell_agrees(outcome.experiment.crystal.unit_cell, settings.unit_cell, check):
        cell = ", ".join(f"{v:.2f}" for v in outcome.experiment.crystal.unit_cell.parameters)
        problems.append(f"cell ({cell}) disagrees with unit_cell by more than {100 * check.max_cell_difference:g}%")
    return problems


SUPERCELL_RATIO_TOLERANCE = 0.05
SUPERCELL_MIN_FRACTION = 0.3  # a smaller candidate must index at least this before its retry
NEXT_CANDIDATES = 2  # next-ranked candidate lattices retried when the chosen one is poor


def smaller_candidate(outcome: SweepIndexing) -> Candidate | None:
    """A candidate whose volume is the chosen cell's divided by an integer ≥ 2 (a supercell the
    non-primitive-basis test did not remove), if it indexed a fair share of spots."""
    volume = outcome.experiment.crystal.unit_cell.volume
    for candidate, row in zip(outcome.candidates, outcome.summary["candidates"]):
        ratio = volume / row["volume"]
        if (ratio > 1.5 and abs(ratio - round(ratio)) < SUPERCELL_RATIO_TOLERANCE * ratio
                and row["fraction_indexed"] >= SUPERCELL_MIN_FRACTION):
            return candidate
    return None


def _cell_agrees(cell: gemmi.UnitCell, target: gemmi.UnitCell, check: SelfCheck) -> bool:
    return cells_match(cell, target, check.max_cell_difference, 100.0 * check.max_cell_difference)


def _reversed_axis(experiment: Experiment) -> Experiment:
    reversed_ = experiment.copy()
    reversed_.goniometer.invert()
    return reversed_


def _alternatives(experiment: Experiment, settings: IndexingSettings):
    """The retries of the self-check, in order: (label, experiment, settings)."""
    refined_axis = replace(settings, refinement=replace(settings.refinement, goniometer_fix=()))
    other_search = replace(settings, method="fft1d" if settings.method == "fft3d" else "fft3d")
    yield "rotation axis reversed", _reversed_axis(experiment), settings
    if settings.refinement.goniometer_fix:
        yield "rotation axis refined", experiment, refined_axis
        yield "rotation axis reversed and refined", _reversed_axis(experiment), refined_axis
    yield f"basis vectors by {other_search.method}", experiment, other_search


def _attempt_record(label: str, outcome: SweepIndexing | None, problems: list[str], error: str | None = None) -> dict:
    record = {"attempt": label, "problems": problems, "error": error}
    if outcome is not None:
        record.update({"fraction_indexed": outcome.fraction_indexed, "rmsds": outcome.rmsds,
                       "unit_cell": list(outcome.experiment.crystal.unit_cell.parameters),
                       "rotation_axis": outcome.experiment.goniometer.rotation_axis.tolist()})
    return record


def _quality_key(outcome: SweepIndexing, problems: list[str]) -> tuple:
    return (len(problems), outcome.rmsds["z_images"] + outcome.rmsds["x_px"] + outcome.rmsds["y_px"]
            - outcome.fraction_indexed)


def _retry_candidate(label, candidate, trial_experiment, strong, trial_settings, settings, check, attempts):
    """Index from one of an earlier run's candidate lattices; (outcome, problems) or None."""
    try:
        outcome = index_sweep(trial_experiment, strong, trial_settings, start_crystal=candidate.p1_crystal)
    except DataError as error:
        attempts.append(_attempt_record(label, None, [], str(error)))
        return None
    problems = solution_problems(outcome, settings, check)
    attempts.append(_attempt_record(label, outcome, problems))
    return outcome, problems


def _cell_label(crystal) -> str:
    return " ".join(f"{v:.1f}" for v in crystal.unit_cell.parameters)


def _prefer_smaller_cell(outcome, problems, label, trial_experiment, strong, trial_settings, settings, check, attempts):
    """Retry a suspected supercell from the smaller candidate lattice; keep it if it indexes as well."""
    candidate = smaller_candidate(outcome) if settings.unit_cell is None else None
    if candidate is None:
        return outcome, problems, label
    smaller_label = f"{label}, smaller candidate cell {_cell_label(candidate.crystal)}"
    retried = _retry_candidate(smaller_label, candidate, trial_experiment, strong, trial_settings, settings, check,
                               attempts)
    if retried is not None and len(retried[1]) <= len(problems) and retried[0].n_indexed >= 0.95 * outcome.n_indexed:
        return retried[0], retried[1], smaller_label
    return outcome, problems, label


def _next_candidates(outcome, label, trial_experiment, strong, trial_settings, settings, check, attempts):
    """The next-ranked candidate lattices of a poor solution, indexed in turn: (outcome, problems, label)."""
    for rank, candidate in enumerate(outcome.candidates[1:1 + NEXT_CANDIDATES], start=2):
        next_label = f"{label}, candidate {rank} ({_cell_label(candidate.crystal)})"
        retried = _retry_candidate(next_label, candidate, trial_experiment, strong, trial_settings, settings, check,
                                   attempts)
        if retried is not None:
            yield retried[0], retried[1], next_label


def index_with_self_check(experiment: Experiment, strong: ReflectionTable, settings: IndexingSettings,
                          check: SelfCheck) -> SweepIndexing:
    """:func:`index_sweep`, retried with the alternatives of the self-check if the solution is poor."""
    if not check.enabled:
        return index_sweep(experiment, strong, settings)
    attempts, best, best_key, chosen, first_error = [], None, None, None, None
    for label, trial_experiment, trial_settings in [("as given", experiment, settings),
                                                    *_alternatives(experiment, settings)]:
        try:
            outcome = index_sweep(trial_experiment, strong, trial_settings)
        except DataError as error:
            first_error = first_error or error
            attempts.append(_attempt_record(label, None, [], str(error)))
            continue
        problems = solution_problems(outcome, settings, check)
        attempts.append(_attempt_record(label, outcome, problems))
        outcome, problems, label = _prefer_smaller_cell(outcome, problems, label, trial_experiment, strong,
                                                        trial_settings, settings, check, attempts)
        next_ones = (_next_candidates(outcome, label, trial_experiment, strong, trial_settings, settings, check,
                                      attempts) if problems else ())
        for outcome, problems, label in itertools.chain([(outcome, problems, label)], next_ones):
            key = _quality_key(outcome, problems)
            if best is None or key < best_key:
                best, best_key, chosen = outcome, key, label
            if not problems:
                break
        if best_key[0] == 0:
            break
    if best is None:
        raise first_error
    accepted = best_key[0] == 0
    best.summary["self_check"] = {"attempts": attempts, "accepted": accepted, "chosen": chosen}
    if not accepted:
        problems = solution_problems(best, settings, check)
        if any("disagrees" in p for p in problems):
            raise DataError(f"indexing self-check: no solution fits the known cell ({'; '.join(problems)}); tried "
                            + ", ".join(a["attempt"] for a in attempts) + "; check the distance and unit_cell")
        logger.warning("Warning: indexing self-check: the best solution is poor (%s) after trying %s",
                       "; ".join(problems), ", ".join(a["attempt"] for a in attempts))
    return best


# ------------------------------------------------------------------------------------ step


def _sweep_rows(reflections: ReflectionTable, sweep: int, n_sweeps: int) -> np.ndarray:
    ids = np.asarray(reflections["id"]) if "id" in reflections else np.zeros(len(reflections), int)
    if n_sweeps == 1 and not np.any(ids == 0):
        return np.ones(len(reflections), bool)
    return ids == sweep


def _identifier(experiment: Experiment) -> str:
    if experiment.identifier:
        return experiment.identifier
    key = f"{experiment.imageset.get('template', '')}:{experiment.scan.image_range if experiment.scan else ''}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


def run(experiments: list[Experiment], reflections: ReflectionTable | None, params: Params) -> StepResult:
    """Index every sweep of ``experiments`` with its strong spots (``id`` = sweep index)."""
    if not experiments:
        raise InputFileError("no experiments to index; give the imported.expt")
    if reflections is None or len(reflections) == 0:
        raise InputFileError("no strong spots to index; give the strong.refl of find_spots")
    for column in ("xyzobs.px.value", "xyzobs.px.variance"):
        if column not in reflections:
            raise InputFileError(f"the reflections have no {column} column; give the strong.refl of find_spots")
    settings = settings_from_params(params)
    indexed_experiments, tables, sweeps = [], [], []
    for sweep, experiment in enumerate(experiments):
        rows = _sweep_rows(reflections, sweep, len(experiments))
        strong = reflections.select(rows)
        if len(strong) == 0:
            raise DataError(f"sweep {sweep} ({experiment.imageset.get('template', '')}) has no strong spots to index")
        experiment = experiment.replace(identifier=_identifier(experiment))
        outcome = index_with_self_check(experiment, strong, settings, params.self_check)
        new_id = len(indexed_experiments)
        outcome.table["id"] = np.where(outcome.table["id"] >= 0, new_id, -1).astype(np.int32)
        outcome.table["imageset_id"] = np.full(len(outcome.table), sweep, np.int32)
        outcome.table.experiment_identifiers = {new_id: outcome.experiment.identifier}
        indexed_experiments.append(outcome.experiment)
        tables.append(outcome.table)
        sweeps.append(outcome.summary)
    table = ReflectionTable.concat(tables)
    table.experiment_identifiers = {i: e.identifier for i, e in enumerate(indexed_experiments)}
    return StepResult(experiments=indexed_experiments, reflections=table, summary={"sweeps": sweeps})


# ------------------------------------------------------------------------------------- log


def candidates_table(candidates: list[dict]) -> str:
    """DIALS' "Candidate solutions" table."""
    rows = [[" ".join(f"{v:.2f}" if k < 3 else f"{v:.1f}" for k, v in enumerate(c["unit_cell"])),
             f"{c['volume']:.0f}", f"{c['volume_score']:.2f}", c["n_indexed"], f"{100 * c['fraction_indexed']:.0f}",
             f"{c['fraction_indexed_score']:.2f}", f"{c['rmsd']:.2f}", f"{c['rmsd_score']:.2f}",
             f"{c['overall_score']:.2f}"] for c in candidates]
    return format_table(["unit_cell", "volume", "volume score", "#indexed", "% indexed", "% indexed score",
                         "rmsd_xy", "rmsd_xy score", "overall score"], rows)


def percent_indexed_table(rows: list[tuple[int, int, int]]) -> str:
    """The "% indexed" table: (imageset, # indexed, # unindexed) per imageset."""
    return format_table(["Imageset", "# indexed", "# unindexed", "% indexed"],
                        [[i, n, u, f"{100 * n / max(n + u, 1):.1f}%"] for i, n, u in rows])


class _LoggedRefinement:
    """The RefinementResult fields log_refinement reads, rebuilt from a summary record."""

    def __init__(self, record: dict):
        self.history = record["history"]
        self.residual_summaries = record["residual_summaries"]
        self.termination = record["termination"]
        self.rmsds = record["rmsds"]
        self.cell_esds = record["crystal"]["cell_esds"]
        self.experiment = Experiment(beam=None, detector=None, crystal=_crystal_from_record(record["crystal"]))


def log_sweep(summary: dict, imageset: int = 0) -> None:
    """The log of indexing one sweep, as dials.index prints it."""
    logger.info("Found max_cell: %.1f Angstrom", summary["max_cell"])
    logger.info("Setting d_min: %.2f", summary["d_min_fft"])
    if summary["method"] == "fft3d":
        n = summary["n_points"]
        logger.info("FFT gridding: (%d,%d,%d)", n, n, n)
    logger.info("Number of centroids used: %d", summary["n_centroids"])
    logger.info("Candidate solutions:\n%s", candidates_table(summary["candidates"]))
    logger.info("Using d_min_step %.1f", summary["d_min_step"])
    for k, cycle in enumerate(summary["cycles"]):
        if k > 0:
            logger.info("\nIncreasing resolution to %.2f Angstrom", cycle["d_min"])
        logger.info("\nIndexed crystal models:\nmodel 1 (%d reflections):\n%s", cycle["n_indexed"],
                    crystal_model_text(_crystal_from_record(cycle["crystal_before"])))
        logger.info(percent_indexed_table([(imageset, cycle["n_indexed"], cycle["n_considered"] - cycle["n_indexed"])]))
        logger.info("\n%s\nStarting refinement (macro-cycle %d)\n%s", RULE, k + 1, RULE)
        log_refinement(logger, _LoggedRefinement(cycle), final_crystal_model=False)
        crystal = cycle["crystal"]
        logger.info("\nRefined crystal models:\nmodel 1 (%d reflections):\n%s", cycle["n_indexed"],
                    crystal_model_text(_crystal_from_record(crystal), crystal["cell_esds"]))
    logger.info(percent_indexed_table([(imageset, summary["n_indexed"], summary["n_strong"] - summary["n_indexed"])]))
    if summary.get("n_split_pieces"):
        logger.info("%d of the indexed spots are pieces of reflections the spot finder split in z (same h at the "
                    "same detector place; excluded from refinement)", summary["n_split_pieces"])
    check = summary.get("self_check")
    if check and len(check["attempts"]) > 1:
        rows = [[a["attempt"], "-" if a.get("fraction_indexed") is None else f"{100 * a['fraction_indexed']:.1f}",
                 *(("-",) * 3 if a.get("rmsds") is None else
                   (f"{a['rmsds']['x_px']:.3f}", f"{a['rmsds']['y_px']:.3f}", f"{a['rmsds']['z_images']:.3f}")),
                 "; ".join(a["problems"]) or (a["error"] or "ok")] for a in check["attempts"]]
        logger.info("\nSelf-check of the solution (ewald): chose '%s'\n%s", check["chosen"], format_table(
            ["Attempt", "% indexed", "RMSD_X\n(px)", "RMSD_Y\n(px)", "RMSD_Z\n(images)", "Problems"], rows))


def cli(params: Params, files: list[str]) -> None:
    """``ewald index imported.expt strong.refl [key=value ...]`` → indexed.expt, indexed.refl."""
    from pipeline.formats.expt import read_experiments, write_experiments
    from pipeline.formats.refl import read_reflections, write_reflections
    from pipeline.inputs import experiments_and_reflections_from

    expt_path, refl_path = experiments_and_reflections_from(files, NAME)
    result = run(read_experiments(expt_path), read_reflections(refl_path), params)
    for imageset, summary in enumerate(result.summary["sweeps"]):
        log_sweep(summary, imageset)
    logger.info("Saving refined experiments to %s", params.output.experiments)
    write_experiments(result.experiments, params.output.experiments)
    logger.info("Saving refined reflections to %s", params.output.reflections)
    write_reflections(result.reflections, params.output.reflections)
