"""Mapping Miller indices to the reciprocal asymmetric unit, with CCP4's ISYM code.

gemmi's ``ReciprocalAsu.to_asu`` works on one index at a time. Here every observation's
symmetry equivalents (all point-group rotations h·R_k and their Friedel mates) are generated as
one integer array; equivalents share a canonical key (the lexicographically largest equivalent),
so gemmi is asked only once per *unique* reflection, and the ISYM of each observation is found by
matching its equivalents against the ASU representative, in gemmi's order (op k applied: 2k+1,
Friedel mate of op k: 2k+2; k over primitive operations). That is the code unmerged MTZ files
carry in M/ISYM (CCP4 convention).
"""
from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np

_KEY_OFFSET = 1 << 10  # |h|, |k|, |l| < 1024 for any realistic cell and resolution


@dataclass
class AsuMapping:
    """Observations mapped to the ASU. ``group`` indexes ``unique_asu_index``."""

    asu_index: np.ndarray  # (n, 3) int, ASU index of each observation
    isym: np.ndarray  # (n,) int, CCP4 ISYM (odd: op applied, even: Friedel mate of op)
    group: np.ndarray  # (n,) int, index of the unique reflection of each observation
    unique_asu_index: np.ndarray  # (m, 3) int
    centric: np.ndarray  # (m,) bool, centric flag of each unique reflection

    @property
    def is_plus(self) -> np.ndarray:
        """Observation belongs to I(+): measured as h itself (odd ISYM) or centric."""
        return (self.isym % 2 == 1) | self.centric[self.group]

    def anomalous_group(self) -> tuple[np.ndarray, int]:
        """Group id keeping Bijvoet mates apart: 2·group (I+) or 2·group + 1 (I−)."""
        return 2 * self.group + (~self.is_plus).astype(np.int64), 2 * len(self.unique_asu_index)


def point_group_rotations(space_group: gemmi.SpaceGroup) -> np.ndarray:
    """Integer rotation matrices R_k (k over primitive symmetry operations), h' = h·R_k."""
    ops = space_group.operations()
    return np.array([np.array(op.rot) // op.DEN for op in ops.sym_ops], dtype=np.int64)


def _equivalents(miller_index: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """(n, 2K, 3) array: h·R_0, −h·R_0, h·R_1, −h·R_1, … (gemmi's search order)."""
    rotated = np.einsum("ni,kij->nkj", miller_index, rotations)
    both = np.stack([rotated, -rotated], axis=2)  # (n, K, 2, 3)
    return both.reshape(len(miller_index), -1, 3)


def _keys(hkl: np.ndarray) -> np.ndarray:
    shifted = hkl.astype(np.int64) + _KEY_OFFSET
    base = 2 * _KEY_OFFSET
    return (shifted[..., 0] * base + shifted[..., 1]) * base + shifted[..., 2]


def map_to_asu(miller_index: np.ndarray, space_group: gemmi.SpaceGroup) -> AsuMapping:
    """Map original indices to the ASU of ``space_group`` (non-anomalous grouping) with ISYM."""
    hkl = np.asarray(miller_index, dtype=np.int64).reshape(-1, 3)
    rotations = point_group_rotations(space_group)
    equivalents = _equivalents(hkl, rotations)
    canonical = _keys(equivalents).max(axis=1)
    unique_keys, first, group = np.unique(canonical, return_index=True, return_inverse=True)
    asu = gemmi.ReciprocalAsu(space_group)
    ops = space_group.operations()
    # One gemmi call per unique reflection (a few thousand), not per observation.
    unique_asu = np.array([asu.to_asu(h, ops)[0] for h in hkl[first].tolist()], dtype=np.int64).reshape(-1, 3)
    asu_index = unique_asu[group]
    matches = np.all(equivalents == asu_index[:, None, :], axis=2)
    isym = np.argmax(matches, axis=1) + 1
    centric = ops.centric_flag_array(unique_asu.astype(np.int32)) if len(unique_asu) else np.zeros(0, bool)
    return AsuMapping(asu_index=asu_index, isym=isym.astype(np.int64), group=group.astype(np.int64),
                      unique_asu_index=unique_asu, centric=np.asarray(centric, dtype=bool))
