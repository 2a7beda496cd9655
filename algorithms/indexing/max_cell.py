"""Maximum cell estimate from nearest-neighbour distances in reciprocal space (``max_cell=Auto``).

Spots are grouped by imageset, 45° blocks of rotation and entering/exiting (within a group
neighbouring spots are true lattice neighbours rather than projections of different rotations);
the direct-space distance 1/NN of each spot's nearest neighbour is histogrammed on a log scale
and the largest distance whose bin frequency exceeds 25 % of the peak, times 1.3, is max_cell.
Spots on hexagonal-ice rings and spots whose bounding boxes overlap are dropped first.
(DIALS ``find_max_cell``; Gildea et al. 2014, Acta Cryst. D70, 2652–2666.)
"""
from __future__ import annotations

from itertools import combinations

import gemmi
import numba
import numpy as np
from scipy.spatial import cKDTree

from algorithms.errors import DataError
from algorithms.geometry.models import Crystal, b_matrix
from algorithms.geometry.prediction import miller_indices_to_d_min
from algorithms.symmetry.reduction import niggli_reduce_cell

ICE_CELL = (4.498, 4.498, 7.338, 90.0, 90.0, 120.0)
ICE_SPACE_GROUP = "P 63/m m c"
ICE_HALF_WIDTH_D_STAR_SQ = 0.004 / 2


def ice_ring_mask(rlp: np.ndarray, half_width: float = ICE_HALF_WIDTH_D_STAR_SQ) -> np.ndarray:
    """True for spots within ±half_width in d*² of a hexagonal-ice powder ring."""
    d_star_sq = np.sum(rlp * rlp, axis=1)
    if len(rlp) == 0:
        return np.zeros(0, bool)
    d_min = 1.0 / np.sqrt(d_star_sq.max() + half_width)  # rings just beyond the last spot count too
    A = b_matrix(gemmi.UnitCell(*ICE_CELL))
    hkl = miller_indices_to_d_min(A, max(d_min, 0.5))
    hkl = hkl[~gemmi.SpaceGroup(ICE_SPACE_GROUP).operations().systematic_absences(hkl.astype(np.int32))]
    rings = np.unique(np.round(np.sum((hkl @ A.T) ** 2, axis=1), 10))
    if len(rings) == 0:
        return np.zeros(len(rlp), bool)
    distance = np.abs(d_star_sq[:, None] - rings[None, :]).min(axis=1)
    return distance < half_width


@numba.njit(cache=True, nogil=True)
def _overlapping(bboxes, order):
    """True for boxes that overlap another box (6-column half-open bboxes, sorted by x0)."""
    n = len(order)
    out = np.zeros(len(bboxes), dtype=np.bool_)
    for p in range(n):
        i = order[p]
        for q in range(p + 1, n):
            j = order[q]
            if bboxes[j, 0] >= bboxes[i, 1]:
                break
            if (bboxes[i, 2] < bboxes[j, 3] and bboxes[j, 2] < bboxes[i, 3]
                    and bboxes[i, 4] < bboxes[j, 5] and bboxes[j, 4] < bboxes[i, 5]):
                out[i] = True
                out[j] = True
    return out


def overlapping_bbox_mask(bboxes: np.ndarray, border: int = 0) -> np.ndarray:
    """True for spots whose bounding box (x0, x1, y0, y1, z0, z1), grown by ``border``, overlaps another."""
    boxes = np.asarray(bboxes, dtype=np.int64).copy()
    boxes[:, 0::2] -= border
    boxes[:, 1::2] += border
    return _overlapping(boxes, np.argsort(boxes[:, 0], kind="stable"))


def nearest_neighbour_direct_distances(
    rlp: np.ndarray, phi_rad: np.ndarray, entering: np.ndarray, imageset_id: np.ndarray | None = None,
    step_size_deg: float = 45.0,
) -> np.ndarray:
    """1/|NN distance| (Å) of each spot within its (imageset, φ block, entering) group."""
    imageset_id = np.zeros(len(rlp), int) if imageset_id is None else np.asarray(imageset_id)
    block = np.floor((phi_rad - phi_rad.min()) / np.radians(step_size_deg)).astype(int)
    keys = np.column_stack([imageset_id, block, np.asarray(entering, int)])
    _, group = np.unique(keys, axis=0, return_inverse=True)
    distances = []
    for g in np.unique(group):
        points = rlp[group.ravel() == g]
        if len(points) < 2:
            continue
        nn, _ = cKDTree(points).query(points, k=2)
        with np.errstate(divide="ignore"):
            distances.append(1.0 / nn[:, 1])
    return np.concatenate(distances) if distances else np.zeros(0)


def estimate_max_cell(
    rlp: np.ndarray,
    phi_rad: np.ndarray,
    entering: np.ndarray,
    *,
    bboxes: np.ndarray | None = None,
    imageset_id: np.ndarray | None = None,
    filter_ice: bool = True,
    filter_overlaps: bool = True,
    overlaps_border: int = 0,
    multiplier: float = 1.3,
    step_size_deg: float = 45.0,
    nn_per_bin: int = 5,
    max_height_fraction: float = 0.25,
    histogram_binning: str = "log",
) -> float:
    """DIALS' max_cell estimate (Å) from the spots' reciprocal-lattice points."""
    keep = np.ones(len(rlp), bool)
    if filter_ice:
        keep &= ~ice_ring_mask(rlp)
    if filter_overlaps and bboxes is not None:
        keep &= ~overlapping_bbox_mask(bboxes, overlaps_border)
    ids = None if imageset_id is None else np.asarray(imageset_id)[keep]
    direct = nearest_neighbour_direct_distances(rlp[keep], np.asarray(phi_rad)[keep], np.asarray(entering)[keep],
                                                ids, step_size_deg)
    direct = np.sort(direct[np.isfinite(direct) & (direct > 1.0)])
    direct = direct[: int(len(direct) * 0.99)]  # drop the longest 1 %
    if len(direct) < 2 * nn_per_bin:
        raise DataError(
            f"too few spots ({len(direct)}) to estimate max_cell; give indexing.max_cell= or find more spots"
        )
    n_bins = len(direct) // nn_per_bin
    if histogram_binning == "log":
        edges = np.logspace(np.log10(direct[0]), np.log10(direct[-1]), n_bins + 1)
    else:
        edges = np.linspace(direct[0], direct[-1], n_bins + 1)
    counts, _ = np.histogram(direct, bins=edges)
    frequency = counts / np.diff(edges)
    high = np.nonzero(frequency > max_height_fraction * frequency.max())[0]
    return float(multiplier * edges[high[-1] + 1])


def max_cell_from_unit_cell(unit_cell: gemmi.UnitCell, space_group: gemmi.SpaceGroup | None = None,
                            multiplier: float = 1.3) -> float:
    """1.3 × the longest edge of the reduced primitive cell of a known cell."""
    cell = unit_cell
    if space_group is not None:
        translations = [np.array(t, float) / gemmi.Op.DEN for t in space_group.operations().cen_ops]
        if len(translations) > 1:
            cell = _primitive_cell(unit_cell, translations)
    reduced, _ = niggli_reduce_cell(cell)
    return float(multiplier * max(reduced.parameters[:3]))


def _primitive_cell(cell: gemmi.UnitCell, translations: list[np.ndarray]) -> gemmi.UnitCell:
    points = [np.eye(3)[i] for i in range(3)] + [t for t in translations if np.any(t)]
    for triple in combinations(points, 3):
        P = np.array(triple)
        if abs(abs(np.linalg.det(P)) - 1.0 / len(translations)) < 1e-9:
            return Crystal.from_cell_and_U(cell, np.eye(3)).change_basis(P).unit_cell
    return cell
