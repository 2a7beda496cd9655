"""Niggli (Křivý–Gruber) cell reduction with the change of basis from the input cell.

Uses gemmi's ``GruberVector.niggli_reduce`` (Křivý & Gruber 1976, Acta Cryst. A32, 297–298, with
the ε-tolerant comparisons of Grosse-Kunstleve, Sauter & Adams 2004, Acta Cryst. A60, 1–6).
The ε is relative to the cell size, ε = 10⁻⁵·V^(2/3), as cctbx does, so that nearly
degenerate cells reduce stably.  gemmi's tracked operator has the new basis vectors as
*columns*, so P (rows) is its transpose.
"""
from __future__ import annotations

import gemmi
import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Crystal
from algorithms.symmetry.change_of_basis import ChangeOfBasis

RELATIVE_EPSILON = 1e-5
ITERATION_LIMIT = 1000


def niggli_reduce_cell(cell: gemmi.UnitCell | tuple) -> tuple[gemmi.UnitCell, ChangeOfBasis]:
    """The Niggli-reduced cell of a primitive cell and the cb_op from the input to it."""
    if not isinstance(cell, gemmi.UnitCell):
        cell = gemmi.UnitCell(*cell)
    if not cell.volume > 0:
        raise DataError(f"cannot reduce unit cell {cell.parameters}: its volume is not positive")
    gruber = gemmi.GruberVector(cell, "P", True)
    epsilon = RELATIVE_EPSILON * cell.volume ** (2.0 / 3.0)
    iterations = gruber.niggli_reduce(epsilon=epsilon, iteration_limit=ITERATION_LIMIT)
    if iterations >= ITERATION_LIMIT:
        raise DataError(f"Niggli reduction of unit cell {cell.parameters} did not converge")
    op = gruber.change_of_basis
    P = (np.array(op.rot, dtype=float) / op.DEN).T
    return gruber.get_cell(), ChangeOfBasis(np.rint(P))


def niggli_reduce_crystal(crystal: Crystal) -> tuple[Crystal, ChangeOfBasis]:
    """The crystal in its Niggli-reduced basis (same orientation) and the cb_op used."""
    _, cb_op = niggli_reduce_cell(crystal.unit_cell)
    return crystal.change_basis(cb_op.P), cb_op
