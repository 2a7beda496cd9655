"""Miller-index assignment to reciprocal-lattice points and a linear fit of the setting matrix.

Assignment (DIALS ``index_assignment.method = simple``): h_f = A⁻¹·rlp, h = round(h_f); a spot
is indexed iff |h_f − h| ≤ tolerance (Euclidean norm of the 3-vector) and h ≠ 0.  Several spots
with the same h within 45° of rotation cannot all be that reflection: only the one with the
smallest |h_f − h| keeps it (the others are left unindexed).
"""
from __future__ import annotations

import numba
import numpy as np

from algorithms.errors import DataError

HKL_TOLERANCE = 0.3
DUPLICATE_PHI_WINDOW_DEG = 45.0


@numba.njit(cache=True, nogil=True)
def _reject_duplicates(order, hkl, phi, residual, window_rad, indexed):
    """Within runs of equal h (``order`` sorts by h, then residual), keep a spot only if no
    better spot of the run lies within the φ window."""
    n = len(order)
    start = 0
    while start < n:
        end = start + 1
        while end < n:
            a = order[start]
            b = order[end]
            if hkl[a, 0] != hkl[b, 0] or hkl[a, 1] != hkl[b, 1] or hkl[a, 2] != hkl[b, 2]:
                break
            end += 1
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
