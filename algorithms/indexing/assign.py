"""Miller-index assignment to reciprocal-lattice points and a linear fit of the setting matrix.

Assignment (DIALS ``index_assignment.method = simple``): h_f = A⁻¹·rlp, h = round(h_f); a spot
is indexed iff |h_f − h| ≤ tolerance (Euclidean norm of the 3-vector) and h ≠ 0.  Several spots
with the same h within 45° of rotation cannot all be that reflection: only the one with the
smallest |h_f − h| keeps it (the others are left unindexed).

Split reflections (ewald, :func:`split_pieces`): a reflection whose rocking range the spot
finder split in z (a weak image inside it, or a reflection near the rotation axis that stays in
diffraction for many images) gives several spots at the same place on the detector, all
rounding to its h.  DIALS' rule keeps one of them; the others are pieces of the same
reflection, not other reflections, and can be indexed as such (but not refined against: a
piece's z centroid is not the reflection's).
"""
from __future__ import annotations

import numba
import numpy as np

from algorithms.errors import DataError

HKL_TOLERANCE = 0.3
DUPLICATE_PHI_WINDOW_DEG = 45.0


@numba.njit(cache=True, nogil=True)
def _end_of_run(order, hkl, start):
    """The end (exclusive) of the run of equal h that starts at ``order[start]``."""
    end = start + 1
    while end < len(order):
        a = order[start]
        b = order[end]
        if hkl[a, 0] != hkl[b, 0] or hkl[a, 1] != hkl[b, 1] or hkl[a, 2] != hkl[b, 2]:
            break
        end += 1
    return end


@numba.njit(cache=True, nogil=True)
def _reject_duplicates(order, hkl, phi, residual, window_rad, indexed):
    """Within runs of equal h (``order`` sorts by h, then residual), keep a spot only if no
    better spot of the run lies within the φ window."""
    n = len(order)
    start = 0
    while start < n:
        end = _end_of_run(order, hkl, start)
        if end - start > 1:
            for m in range(start + 1, end):
                spot = order[m]
                for q in range(start, m):
                    better = order[q]
                    if indexed[better] and abs(phi[spot] - phi[better]) <= window_rad:
                        indexed[spot] = False
                        break
        start = end


def assign_indices(
    rlp: np.ndarray,
    A: np.ndarray,
    tolerance: float = HKL_TOLERANCE,
    phi_rad: np.ndarray | None = None,
    d_spacings: np.ndarray | None = None,
    d_min: float | None = None,
    candidates_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Assign Miller indices to rlps (n, 3) for the setting matrix A.

    Only spots with d > d_min (if given) and in ``candidates_mask`` (if given) are considered.
    Returns (miller_index (n, 3) int, with (0, 0, 0) for unindexed; indexed mask; |h_f − h|).
    """
    rlp = np.asarray(rlp, float)
    fractional = rlp @ np.linalg.inv(A).T
    hkl = np.rint(fractional).astype(np.int64)
    residual = np.linalg.norm(fractional - hkl, axis=1)
    indexed = (residual <= tolerance) & np.any(hkl != 0, axis=1)
    if candidates_mask is not None:
        indexed &= candidates_mask
    if d_min is not None:
        d = d_spacings if d_spacings is not None else 1.0 / np.linalg.norm(rlp, axis=1)
        indexed &= d > d_min
    if phi_rad is not None and indexed.any():
        rows = np.nonzero(indexed)[0]
        order = rows[np.lexsort((residual[rows], hkl[rows, 2], hkl[rows, 1], hkl[rows, 0]))]
        _reject_duplicates(order, hkl, np.asarray(phi_rad, float), residual,
                           np.radians(DUPLICATE_PHI_WINDOW_DEG), indexed)
    hkl[~indexed] = 0
    return hkl, indexed, residual


@numba.njit(cache=True, nogil=True)
def _pieces_of_kept(order, hkl, footprint, kept, piece_of):
    """Within runs of equal h (``order`` sorts by h), each spot that is not kept becomes a piece
    of the first kept spot of the run whose footprint (x0, x1, y0, y1; ends exclusive) it overlaps."""
    n = len(order)
    start = 0
    while start < n:
        end = _end_of_run(order, hkl, start)
        for m in range(start, end):
            spot = order[m]
            if kept[spot]:
                continue
            for q in range(start, end):
                other = order[q]
                if (kept[other] and footprint[spot, 0] < footprint[other, 1] and footprint[other, 0] < footprint[spot, 1]
                        and footprint[spot, 2] < footprint[other, 3] and footprint[other, 2] < footprint[spot, 3]):
                    piece_of[spot] = other
                    break
        start = end


def split_pieces(
    rlp: np.ndarray,
    A: np.ndarray,
    indexed: np.ndarray,
    footprints: np.ndarray,
    tolerance: float = HKL_TOLERANCE,
    candidates_mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pieces of indexed reflections among the spots :func:`assign_indices` left unindexed.

    A spot is a piece of indexed spot j if it rounds to j's h within ``tolerance`` (so at its
    own rotation angle the reflection is still near the diffracting condition) and its detector
    footprint ``footprints`` (n, 4: x0, x1, y0, y1 pixels, ends exclusive, e.g. bbox[:, :4])
    overlaps j's: the same diffracted ray, recorded at other images.  Another reflection that
    rounds to the same h lies elsewhere on the detector.

    Returns (piece_of (n,) int: the row of the indexed spot, −1 for none; miller_index (n, 3)
    of the pieces, (0, 0, 0) elsewhere).
    """
    rlp = np.asarray(rlp, float)
    indexed = np.asarray(indexed, bool)
    fractional = rlp @ np.linalg.inv(A).T
    hkl = np.rint(fractional).astype(np.int64)
    candidate = ~indexed & (np.linalg.norm(fractional - hkl, axis=1) <= tolerance) & np.any(hkl != 0, axis=1)
    if candidates_mask is not None:
        candidate &= candidates_mask
    piece_of = np.full(len(rlp), -1, np.int64)
    rows = np.nonzero(indexed | candidate)[0]
    if candidate.any() and indexed.any():
        order = rows[np.lexsort((hkl[rows, 2], hkl[rows, 1], hkl[rows, 0]))]
        _pieces_of_kept(order, hkl, np.asarray(footprints, np.float64)[:, :4], indexed, piece_of)
    miller_index = np.where((piece_of >= 0)[:, None], hkl, 0)
    return piece_of, miller_index


def fit_a_matrix(rlp: np.ndarray, hkl: np.ndarray) -> np.ndarray:
    """Linear least-squares A minimising Σ|rlp − A·h|² over the given (indexed) spots."""
    hkl = np.asarray(hkl, float)
    if len(hkl) < 3 or np.linalg.matrix_rank(hkl) < 3:
        raise DataError(
            f"cannot fit the unit cell: {len(hkl)} indexed spots do not span three dimensions; "
            "more spots (a wider rotation range or a lower spot-finding threshold) are needed"
        )
    A_transposed, *_ = np.linalg.lstsq(hkl, np.asarray(rlp, float), rcond=None)
    return A_transposed.T


def rlp_rmsd(rlp: np.ndarray, hkl: np.ndarray, A: np.ndarray) -> float:
    """Root-mean-square |rlp − A·h| (Å⁻¹) over the given spots."""
    if len(hkl) == 0:
        return float("inf")
    return float(np.sqrt(np.mean(np.sum((rlp - hkl @ A.T) ** 2, axis=1))))
