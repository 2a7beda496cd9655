"""Putting a P1 candidate into a known space group / unit cell (``dials.index space_group=...``).

The candidate's lattice must have a Le Page subgroup of the target's Bravais type within
max_delta (and, with a target cell, lengths within 10 % and angles within 5° of it); the
crystal is transformed to the target setting and its metric symmetrised, keeping the
orientation nearest to the unconstrained one.
"""
from __future__ import annotations

import gemmi
import numpy as np

from algorithms.geometry.models import Crystal
from algorithms.symmetry.change_of_basis import ChangeOfBasis
from algorithms.symmetry.lattice_symmetry import setting_for_space_group, symmetrize_crystal
from algorithms.symmetry.reduction import niggli_reduce_cell

RELATIVE_LENGTH_TOLERANCE = 0.1
ABSOLUTE_ANGLE_TOLERANCE_DEG = 5.0
MAX_DELTA_DEG = 5.0


def cells_match(cell: gemmi.UnitCell, target: gemmi.UnitCell,
                relative_length_tolerance: float = RELATIVE_LENGTH_TOLERANCE,
                absolute_angle_tolerance_deg: float = ABSOLUTE_ANGLE_TOLERANCE_DEG) -> bool:
    p, t = np.array(cell.parameters), np.array(target.parameters)
    return bool(np.all(np.abs(p[:3] - t[:3]) <= relative_length_tolerance * t[:3])
                and np.all(np.abs(p[3:] - t[3:]) <= absolute_angle_tolerance_deg))


def apply_known_symmetry(
    crystal: Crystal,
    space_group: gemmi.SpaceGroup | str | None = None,
    unit_cell: gemmi.UnitCell | tuple | None = None,
    max_delta_deg: float = MAX_DELTA_DEG,
) -> tuple[Crystal, ChangeOfBasis] | None:
    """(crystal in the target setting, cb_op from the input basis) or None if it does not fit."""
    if isinstance(space_group, str):
        space_group = gemmi.SpaceGroup(space_group)
    if unit_cell is not None and not isinstance(unit_cell, gemmi.UnitCell):
        unit_cell = gemmi.UnitCell(*unit_cell)
    if space_group is None:
        space_group = gemmi.SpaceGroup("P 1")
    if unit_cell is not None and space_group.number == 1:
        unit_cell, _ = niggli_reduce_cell(unit_cell)  # P1 cells are compared in their reduced form
    setting = setting_for_space_group(crystal.unit_cell, space_group, max_delta_deg, target_cell=unit_cell)
    if setting is None:
        return None
    if unit_cell is not None and not cells_match(setting.unit_cell, unit_cell):
        return None
    transformed = setting.cb_op.apply_to_crystal(crystal)
    return symmetrize_crystal(transformed, space_group), setting.cb_op
