"""Indexing one sweep: basis-vector search, candidate lattices, scoring, macro-cycles.

Follows ``dials.index`` (fft3d or fft1d): maximum cell → candidate basis vectors →
Niggli-reduced candidate lattices from vector triples → for up to ``max_refine`` (50)
candidates: assign indices, remove supercells, apply a known space group, refine → rank with
the weighted scorer → macro-cycles of index + refine at increasing resolution.

Refinement is supplied by the caller (the pipeline builds it on ``algorithms.refinement``):
``refine(crystal, indexed_mask, miller_index) -> (crystal, rmsds, outlier_mask)`` or
``(crystal, rmsds, outlier_mask, rlp)`` when it moved the geometry (new rlps), with rmsds
(x px, y px, z images).  Without it, A is fitted to the rlps by linear least squares and the
rmsd used for scoring is the reciprocal-space rmsd |rlp − A·h| (Å⁻¹).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import gemmi
import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Crystal
from algorithms.indexing.assign import HKL_TOLERANCE, assign_indices, fit_a_matrix, rlp_rmsd, split_pieces
from algorithms.indexing.candidates import (
    MIN_CELL_VOLUME,
    candidate_crystals,
    correct_non_primitive_basis,
    same_lattice,
)
from algorithms.indexing.fft1d import fft1d_candidate_vectors
from algorithms.indexing.fft3d import MIN_CELL, fft3d_candidate_vectors, nearest_5_smooth
from algorithms.indexing.fft3d import fft_d_min as grid_d_min
from algorithms.indexing.known_symmetry import MAX_DELTA_DEG, apply_known_symmetry
from algorithms.indexing.max_cell import estimate_max_cell, max_cell_from_unit_cell
from algorithms.indexing.scoring import score_candidates
from algorithms.symmetry.change_of_basis import ChangeOfBasis
from algorithms.symmetry.lattice_symmetry import symmetrize_crystal
from algorithms.symmetry.reduction import niggli_reduce_crystal

RefineCallable = Callable[[Crystal, np.ndarray, np.ndarray], tuple]


@dataclass
class Candidate:
    """One evaluated candidate lattice."""

    crystal: Crystal
    miller_index: np.ndarray
    indexed_mask: np.ndarray
    rmsd: float
    rmsds: tuple | None
    cb_op: ChangeOfBasis  # from the Niggli P1 candidate to the crystal's setting
    rlp: np.ndarray
    p1_crystal: Crystal  # the Niggli P1 candidate before a known symmetry was applied (``start_crystal``)
    outlier_mask: np.ndarray  # rows the candidate's refinement rejected as centroid outliers

    @property
    def n_indexed(self) -> int:
        return int(self.indexed_mask.sum())


@dataclass
class IndexingResult:
    crystal: Crystal
    miller_index: np.ndarray  # (n, 3), (0, 0, 0) where unindexed
    indexed_mask: np.ndarray
    candidates_table: list[dict]  # DIALS' "Candidate solutions" rows, best first
    max_cell: float
    d_min_fft: float
    n_centroids: int
    basis_vectors: np.ndarray
    rmsds: tuple | None
    rlp: np.ndarray
    cb_op: ChangeOfBasis | None = None  # P1 candidate → known-symmetry setting
    cycles: list[dict] = field(default_factory=list)  # per macro-cycle: d_min, n_indexed, n_considered
    candidates: list[Candidate] = field(default_factory=list)  # the evaluated candidates, ranked as candidates_table
    # per spot: the row of the indexed spot it is a split piece of (−1 for none); pieces are in
    # indexed_mask and miller_index but were not refined against
    piece_of: np.ndarray | None = None


def _refine_or_fit(crystal, rlp, hkl, mask, space_group, refine):
    """One refinement of a candidate; returns (crystal, rmsd, rmsds, mask, rlp, outliers)."""
    if refine is not None:
        out = refine(crystal, mask, hkl)
        crystal, rmsds, outliers = out[:3]
        if len(out) > 3:
            rlp = out[3]
        outliers = mask & np.asarray(outliers, bool)
        return crystal, float(np.hypot(rmsds[0], rmsds[1])), tuple(rmsds), mask & ~outliers, rlp, outliers
    fitted = Crystal(A=fit_a_matrix(rlp[mask], hkl[mask]), space_group=crystal.space_group)
    if space_group is not None and space_group.number > 1:
        fitted = symmetrize_crystal(fitted, space_group)
    return fitted, rlp_rmsd(rlp[mask], hkl[mask], fitted.A), None, mask, rlp, np.zeros(len(mask), bool)


def index_reflections(
    rlp: np.ndarray,
    d: np.ndarray | None,
    phi_rad: np.ndarray,
    entering: np.ndarray,
    *,
    method: str = "fft3d",
    max_cell: float | None = None,
    known_space_group: gemmi.SpaceGroup | str | None = None,
    known_unit_cell: gemmi.UnitCell | tuple | None = None,
    refine: RefineCallable | None = None,
    refine_candidate: RefineCallable | None = None,
    max_delta_deg: float = MAX_DELTA_DEG,
    hkl_tolerance: float = HKL_TOLERANCE,
    max_refine: int = 50,
    n_macro_cycles: int = 5,
    n_points: int = 256,
    fft_d_min: float | None = None,
    b_iso: float | None = None,
    min_cell: float = MIN_CELL,
    min_cell_volume: float = MIN_CELL_VOLUME,
    bboxes: np.ndarray | None = None,
    imageset_id: np.ndarray | None = None,
    workers: int = 1,
    start_crystal: Crystal | None = None,
    footprints: np.ndarray | None = None,
) -> IndexingResult:
    """Index one sweep's spots given their reciprocal-lattice points (φ = 0 frame).

    Parameters follow DIALS: ``max_cell`` (None = estimate), ``n_points``/``fft_d_min``/``b_iso``
    (fft3d.reciprocal_space_grid), ``min_cell``, ``min_cell_volume``, ``max_refine``
    (basis_vector_combinations), ``hkl_tolerance``, ``n_macro_cycles``, ``max_delta_deg``
    (known_symmetry.max_delta).  ``refine`` runs in the macro-cycles and, unless
    ``refine_candidate`` is given (DIALS' shorter refinement of each candidate), also in the
    candidate evaluation.

    ``start_crystal`` (a P1 crystal, e.g. ``result.candidates[k].p1_crystal`` of an earlier run
    on the same spots) skips the basis-vector search: that lattice alone is evaluated and goes
    through the macro-cycles — how a caller retries the next-ranked candidate.

    ``footprints`` (n, 4: the spots' detector bbox x0, x1, y0, y1) index, after the last
    macro-cycle, the spots DIALS' duplicate rule rejected that are split pieces of an indexed
    reflection (:func:`~algorithms.indexing.assign.split_pieces`; ewald, not DIALS); they are
    not refined against.  None = DIALS' assignment.
    """
    rlp = np.asarray(rlp, float)
    if len(rlp) < 10:
        raise DataError(f"only {len(rlp)} spots to index; at least 10 are needed (check spot finding)")
    d = 1.0 / np.linalg.norm(rlp, axis=1) if d is None else np.asarray(d, float)
    phi_rad = np.asarray(phi_rad, float)
    if isinstance(known_space_group, str):
        known_space_group = gemmi.SpaceGroup(known_space_group)
    if known_unit_cell is not None and not isinstance(known_unit_cell, gemmi.UnitCell):
        known_unit_cell = gemmi.UnitCell(*known_unit_cell)

    if max_cell is None:
        if known_unit_cell is not None:
            max_cell = max_cell_from_unit_cell(known_unit_cell, known_space_group)
        else:
            max_cell = estimate_max_cell(rlp, phi_rad, entering, bboxes=bboxes, imageset_id=imageset_id)
    if start_crystal is not None:
        # the d_min the search would have set, for the macro-cycles
        d_min_start = grid_d_min(max_cell, nearest_5_smooth(n_points), d) if method == "fft3d" else float(d.min())
        vectors, info = np.zeros((0, 3)), {"d_min": fft_d_min or d_min_start, "n_centroids": 0}
    elif method == "fft3d":
        vectors, _, info = fft3d_candidate_vectors(rlp, d, max_cell, n_points=n_points, d_min=fft_d_min,
                                                   b_iso=b_iso, min_cell=min_cell, workers=workers)
    elif method == "fft1d":
        vectors, _, info = fft1d_candidate_vectors(rlp, d, max_cell, min_cell=min_cell)
    else:
        raise DataError(f"indexing.method={method} is not known; use fft3d or fft1d")
    d_min_fft = info["d_min"]
    considered = d > d_min_fft

    candidates: list[Candidate] = []
    # Supercell candidates often reduce to the same lattice: each lattice is evaluated once, but
    # every P1 candidate that fits counts towards max_refine, as in DIALS.
    evaluated_lattices = np.zeros((0, 3, 3))  # inverses of the real-space bases already evaluated
    evaluated_ok: list[bool] = []
    n_counted = 0
    p1_crystals = [start_crystal] if start_crystal is not None else candidate_crystals(vectors, 10 * max_refine)
    for p1_crystal in p1_crystals:
        corrected = _primitive_candidate(p1_crystal, rlp, d, phi_rad, considered, hkl_tolerance, min_cell_volume)
        if corrected is None:
            continue
        M = corrected.real_space_vectors
        seen = np.nonzero(same_lattice(M, evaluated_lattices))[0] if len(evaluated_lattices) else []
        if len(seen):
            ok = evaluated_ok[seen[0]]
        else:
            candidate = _evaluate(corrected, rlp, d, phi_rad, considered, known_space_group, known_unit_cell,
                                  max_delta_deg, hkl_tolerance, refine_candidate or refine)
            ok = candidate is not None
            evaluated_lattices = np.concatenate([evaluated_lattices, np.linalg.inv(M)[None]])
            evaluated_ok.append(ok)
            if ok:
                candidates.append(candidate)
        n_counted += ok
        if n_counted >= max_refine:
            break
    if not candidates:
        raise DataError(
            "no candidate lattice indexed the spots"
            + (f" in space group {known_space_group.hm}" if known_space_group is not None else "")
            + "; check max_cell, the geometry (distance, beam centre, rotation axis) and the known symmetry"
        )
    n_considered = max(int(considered.sum()), 1)
    scores = score_candidates([c.crystal.unit_cell.volume for c in candidates],
                              [c.n_indexed / n_considered for c in candidates], [c.rmsd for c in candidates])
    order = np.argsort(scores["overall_score"], kind="stable")
    table = [
        {
            "unit_cell": tuple(candidates[i].crystal.unit_cell.parameters),
            "volume": candidates[i].crystal.unit_cell.volume,
            "volume_score": float(scores["volume_score"][i]),
            "n_indexed": candidates[i].n_indexed,
            "fraction_indexed": candidates[i].n_indexed / n_considered,
            "fraction_indexed_score": float(scores["fraction_indexed_score"][i]),
            "rmsd": candidates[i].rmsd,
            "rmsd_score": float(scores["rmsd_score"][i]),
            "overall_score": float(scores["overall_score"][i]),
        }
        for i in order
    ]
    best = candidates[order[0]]
    crystal, rmsds, cycle_rlp, cycles, hkl, mask, piece_of = _macro_cycles(
        best, d, phi_rad, d_min_fft, known_space_group, hkl_tolerance, refine, n_macro_cycles, footprints)
    if crystal.space_group.number == 1:
        # refinement can move a cell with an angle near 90° across the Niggli boundary
        crystal, to_reduced = niggli_reduce_crystal(crystal)
        hkl, _ = to_reduced.apply_to_hkl(hkl)
    return IndexingResult(crystal=crystal, miller_index=hkl, indexed_mask=mask, candidates_table=table,
                          max_cell=float(max_cell), d_min_fft=d_min_fft, n_centroids=info["n_centroids"],
                          basis_vectors=vectors, rmsds=rmsds, rlp=cycle_rlp,
                          cb_op=best.cb_op if known_space_group is not None else None, cycles=cycles,
                          candidates=[candidates[i] for i in order], piece_of=piece_of)


def _primitive_candidate(crystal, rlp, d, phi_rad, considered, tolerance, min_cell_volume) -> Crystal | None:
    def reindex(c: Crystal) -> np.ndarray:
        hkl, ok, _ = assign_indices(rlp, c.A, tolerance, phi_rad, d, candidates_mask=considered)
        return hkl[ok]

    if crystal.unit_cell.volume < min_cell_volume:
        return None
    crystal, _ = correct_non_primitive_basis(crystal, reindex, min_cell_volume)
    return crystal


def _evaluate(crystal, rlp, d, phi_rad, considered, space_group, unit_cell, max_delta_deg, tolerance,
              refine) -> Candidate | None:
    p1_crystal = crystal
    cb_op = ChangeOfBasis.identity()
    if space_group is not None or unit_cell is not None:
        known = apply_known_symmetry(crystal, space_group, unit_cell, max_delta_deg)
        if known is None:
            return None
        crystal, cb_op = known
    hkl, mask, _ = assign_indices(rlp, crystal.A, tolerance, phi_rad, d, candidates_mask=considered)
    if mask.sum() < 10:
        return None
    try:
        crystal, rmsd, rmsds, mask, rlp, outliers = _refine_or_fit(crystal, rlp, hkl, mask, space_group, refine)
    except DataError:
        return None
    if refine is None:
        hkl, mask, _ = assign_indices(rlp, crystal.A, tolerance, phi_rad, d, candidates_mask=considered)
        rmsd = rlp_rmsd(rlp[mask], hkl[mask], crystal.A)
    return Candidate(crystal, hkl, mask, rmsd, rmsds, cb_op, rlp, p1_crystal, outliers)


def _macro_cycles(best: Candidate, d, phi_rad, d_min_fft, space_group, tolerance, refine, n_cycles, footprints):
    """DIALS' refine_shells protocol: index + refine to d_min_i = d_min₀ − i·step, i = 0 … n−1;
    then the split pieces of the last assignment's reflections (with ``footprints``)."""
    crystal, rlp, rmsds = best.crystal, best.rlp, best.rmsds
    step = (d_min_fft - d.min()) / (n_cycles - 1) if n_cycles > 1 else 0.0
    cycles = []
    for i in range(n_cycles):
        d_min = max(d_min_fft - i * step, 0.0)
        d = 1.0 / np.linalg.norm(rlp, axis=1)  # the refinement may have moved the geometry
        considered = d > d_min if i < n_cycles - 1 else np.ones(len(d), bool)
        hkl, mask, _ = assign_indices(rlp, crystal.A, tolerance, phi_rad, d, candidates_mask=considered)
        last_assignment = (rlp, crystal.A, mask)
        volume_before = crystal.unit_cell.volume
        crystal, _, rmsds, mask, rlp, _ = _refine_or_fit(crystal, rlp, hkl, mask, space_group, refine)
        if abs(crystal.unit_cell.volume - volume_before) / volume_before > 0.5:
            raise DataError("Unrealistic unit cell volume increase during refinement; check the geometry and max_cell")
        cycles.append({"d_min": d_min, "n_indexed": int(mask.sum()), "n_considered": int(considered.sum())})
    if refine is None:  # the last fit moved A: assign once more with it
        hkl, mask, _ = assign_indices(rlp, crystal.A, tolerance, phi_rad)
        last_assignment = (rlp, crystal.A, mask)
    piece_of = np.full(len(rlp), -1, np.int64)
    if footprints is not None:
        piece_of, piece_hkl = split_pieces(*last_assignment, footprints, tolerance)
        pieces = piece_of >= 0
        hkl = np.where(pieces[:, None], piece_hkl, hkl)
        mask = mask | pieces
    return crystal, rmsds, rlp, cycles, hkl, mask, piece_of
