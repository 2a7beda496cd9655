"""Lattice symmetry: change-of-basis operators, Niggli reduction, Le Page Bravais settings."""
from algorithms.symmetry.change_of_basis import ChangeOfBasis
from algorithms.symmetry.lattice_symmetry import (
    HOLOHEDRY,
    LOWEST_CHIRAL_SPACE_GROUP,
    BravaisSetting,
    bravais_settings,
    bravais_type_of_space_group,
    lattice_group,
    lattice_two_folds,
    nearest_rotation,
    setting_for_space_group,
    symmetrize_cell,
    symmetrize_crystal,
)
from algorithms.symmetry.reduction import niggli_reduce_cell, niggli_reduce_crystal

__all__ = [
    "ChangeOfBasis", "BravaisSetting", "HOLOHEDRY", "LOWEST_CHIRAL_SPACE_GROUP", "bravais_settings",
    "bravais_type_of_space_group", "lattice_group", "lattice_two_folds", "setting_for_space_group",
    "symmetrize_cell", "symmetrize_crystal", "nearest_rotation", "niggli_reduce_cell", "niggli_reduce_crystal",
]
