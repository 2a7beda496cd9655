"""True intensities: one Wilson-distributed intensity per reflection of the reciprocal
asymmetric unit, shared by all its symmetry equivalents and Friedel mates.

Acentric reflections have I = ε·Σ(d)·E with E ~ Exp(1); centric ones I = ε·Σ(d)·z², z ~ N(0, 1)
(Wilson 1949, Acta Cryst. 2, 318), with Σ(d) = ⟨I⟩₀·exp(−B/(2d²)) and ε the symmetry
enhancement factor (without centring). Systematically absent reflections have no entry.
The asymmetric unit is gemmi's (the CCP4 convention), so the true merged MTZ compares directly
with merged data.
"""
from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import b_matrix
from algorithms.geometry.prediction import miller_indices_to_d_min

_KEY_OFFSET = 1 << 9  # |h|, |k|, |l| < 512


def miller_keys(hkl: np.ndarray) -> np.ndarray:
    """A unique int64 per Miller index (for sorted look-up)."""
    h = np.asarray(hkl, dtype=np.int64) + _KEY_OFFSET
    return (h[:, 0] << 20) | (h[:, 1] << 10) | h[:, 2]


def asu_miller_indices(hkl: np.ndarray, space_group: gemmi.SpaceGroup, cell: gemmi.UnitCell) -> np.ndarray:
    """Map Miller indices (n, 3) to gemmi's reciprocal ASU (Friedel mates together), keeping order.

    gemmi's Mtz.ensure_asu does the mapping in C++ for a whole array; a row-number column
    carries the original order through it.
    """
    hkl = np.asarray(hkl, dtype=int).reshape(-1, 3)
    if len(hkl) == 0:
        return hkl.copy()
    mtz = gemmi.Mtz(with_base=True)
    mtz.spacegroup = space_group
    mtz.set_cell_for_all(cell)
    mtz.add_dataset("asu")
    mtz.add_column("ROW", "I")
    mtz.set_data(np.column_stack([hkl, np.arange(len(hkl))]).astype(np.float32))
    mtz.ensure_asu()
    data = np.array(mtz, copy=True)
    out = np.empty_like(hkl)
    out[data[:, 3].astype(np.int64)] = np.rint(data[:, :3]).astype(int)
    return out


@dataclass
class StructureModel:
    """True intensities of the ASU reflections, sorted by :func:`miller_keys`."""

    space_group: gemmi.SpaceGroup
    cell: gemmi.UnitCell
    asu_hkl: np.ndarray  # (n, 3) int
    intensity: np.ndarray  # (n,)
    centric: np.ndarray  # (n,) bool
    epsilon: np.ndarray  # (n,) int

    def __post_init__(self):
        self._keys = miller_keys(self.asu_hkl)

    @property
    def d(self) -> np.ndarray:
        return 1.0 / np.linalg.norm(self.asu_hkl @ b_matrix(self.cell).T, axis=1)

    def lookup(self, hkl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(asu_hkl, true intensity) of any Miller indices; raises if one is not in the table."""
        asu = asu_miller_indices(hkl, self.space_group, self.cell)
        keys = miller_keys(asu)
        pos = np.clip(np.searchsorted(self._keys, keys), 0, len(self._keys) - 1)
        found = self._keys[pos] == keys
        if not np.all(found):
            missing = asu[~found][0]
            raise DataError(
                f"simulation: reflection {tuple(missing)} is not in the structure table "
                "(absent, or beyond its resolution); lower d_min of the table"
            )
        return asu, self.intensity[pos]


def is_systematically_absent(hkl: np.ndarray, space_group: gemmi.SpaceGroup) -> np.ndarray:
    return np.asarray(space_group.operations().systematic_absences(np.asarray(hkl, dtype=np.int32)), dtype=bool)


def wilson_structure(
    space_group: gemmi.SpaceGroup,
    cell: gemmi.UnitCell,
    d_min: float,
    wilson_b: float,
    mean_intensity: float,
    rng: np.random.Generator,
) -> StructureModel:
    """Draw a random structure's intensities for all ASU reflections with d ≥ d_min."""
    hkl = miller_indices_to_d_min(b_matrix(cell), d_min)
    hkl = hkl[~is_systematically_absent(hkl, space_group)]
    asu = np.unique(asu_miller_indices(hkl, space_group, cell), axis=0)
    asu = asu[np.argsort(miller_keys(asu))]
    ops = space_group.operations()
    hkl32 = asu.astype(np.int32)
    centric = np.asarray(ops.centric_flag_array(hkl32), dtype=bool)
    epsilon = np.asarray(ops.epsilon_factor_without_centering_array(hkl32), dtype=int)
    d = 1.0 / np.linalg.norm(asu @ b_matrix(cell).T, axis=1)
    sigma = mean_intensity * epsilon * np.exp(-wilson_b / (2.0 * d * d))
    draws = np.where(centric, rng.standard_normal(len(asu)) ** 2, rng.exponential(1.0, len(asu)))
    return StructureModel(space_group, cell, asu, sigma * draws, centric, epsilon)
