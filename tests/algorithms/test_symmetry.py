"""Change of basis, Niggli reduction and Le Page Bravais settings against exact/tutorial truth."""
import itertools
from collections import Counter

import gemmi
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from algorithms.errors import DataError
from algorithms.geometry.models import Crystal
from algorithms.symmetry import (
    ChangeOfBasis,
    bravais_settings,
    bravais_type_of_space_group,
    niggli_reduce_cell,
    niggli_reduce_crystal,
    setting_for_space_group,
    symmetrize_cell,
    symmetrize_crystal,
)

TUTORIAL_P1 = (37.07, 61.63, 64.40, 72.88, 89.25, 73.45)
MYD88_C2 = (99.06, 31.01, 54.30, 90.0, 107.7, 90.0)


def cell_close(cell, expected, length_rel=1e-3, angle_deg=0.05):
    p = np.array(cell.parameters if isinstance(cell, gemmi.UnitCell) else cell)
    e = np.array(expected)
    return np.all(np.abs(p[:3] - e[:3]) <= length_rel * e[:3]) and np.all(np.abs(p[3:] - e[3:]) <= angle_deg)


def primitive_crystal(cell, space_group, seed=3, scramble=((1, 2, 0), (0, 1, 0), (1, -1, 1))):
    """A crystal in a random orientation in a scrambled primitive basis of a centred lattice."""
    crystal = Crystal.from_cell_and_U(gemmi.UnitCell(*cell), Rotation.random(random_state=seed).as_matrix())
    centring = [np.array(t) / gemmi.Op.DEN for t in gemmi.SpaceGroup(space_group).operations().cen_ops]
    points = [np.eye(3)[i] for i in range(3)] + [t for t in centring if np.any(t)]
    for triple in itertools.combinations(points, 3):
        if abs(abs(np.linalg.det(np.array(triple))) - 1.0 / len(centring)) < 1e-9:
            return crystal.change_basis(np.array(triple)).change_basis(np.array(scramble, float))
    raise AssertionError("no primitive basis")


# ------------------------------------------------------------------------------ change of basis


def test_cb_op_parsing_and_hkl():
    op = ChangeOfBasis.from_string("a-2*b,a,c")
    np.testing.assert_array_equal(op.P, [[1, -2, 0], [1, 0, 0], [0, 0, 1]])
    assert op.as_string() == "a-2*b,a,c"
    assert op.as_string("hkl") == "h-2*k,h,l"
    assert ChangeOfBasis.from_string("h-2*k,h,l").as_string() == "a-2*b,a,c"
    assert ChangeOfBasis.from_string("c,a,-a+2*b-c").as_string() == "c,a,-a+2*b-c"
    assert ChangeOfBasis.from_string("-h,k,-l").as_string() == "-a,b,-c"
    # the x,y,z form is the coordinate transformation x' = P^-T x
    assert ChangeOfBasis.from_string("-1/2*y,x+1/2*y,z").as_string() == "a-2*b,a,c"
    hkl, ok = op.apply_to_hkl(np.array([[1, 2, 3], [2, 0, -1]]))
    np.testing.assert_array_equal(hkl, [[-3, 1, 3], [2, 2, -1]])
    assert ok.all()
    back, ok = op.inverse().apply_to_hkl(np.array([[1, 0, 0], [-3, 1, 3]]))
    assert not ok[0] and ok[1]
    np.testing.assert_array_equal(back[1], [1, 2, 3])
    with pytest.raises(DataError, match="change_of_basis_op"):
        ChangeOfBasis.from_string("a,b,q")
    with pytest.raises(DataError, match="singular"):
        ChangeOfBasis.from_string("a,a,c")


def test_cb_op_composition_and_crystal():
    crystal = Crystal.from_cell_and_U(gemmi.UnitCell(*TUTORIAL_P1), Rotation.random(random_state=1).as_matrix())
    first, second = ChangeOfBasis.from_string("a-2*b,a,c"), ChangeOfBasis.from_string("c,b,-a-c")
    combined = first.then(second)
    np.testing.assert_allclose((second @ first).P, combined.P)
    direct = second.apply_to_crystal(first.apply_to_crystal(crystal))
    np.testing.assert_allclose(combined.apply_to_crystal(crystal).A, direct.A, atol=1e-12)
    # h' = P h leaves the reciprocal vector A h unchanged
    hkl = np.array([[1, 2, 3], [-4, 0, 5]])
    new_hkl, _ = combined.apply_to_hkl(hkl)
    np.testing.assert_allclose(new_hkl @ direct.A.T, hkl @ crystal.A.T, atol=1e-12)
    assert cell_close(first.apply_to_cell(crystal.unit_cell), (118.17, 37.07, 64.40, 89.25, 107.635, 89.05), 1e-3, 0.01)


# ------------------------------------------------------------------------------------ Niggli


def test_niggli_reduction_recovers_reduced_cell_and_basis():
    crystal = primitive_crystal(MYD88_C2, "C 1 2 1", seed=5, scramble=((1, 0, 0), (3, 1, 0), (-2, 1, 1)))
    reduced, cb_op = niggli_reduce_crystal(crystal)
    assert abs(cb_op.determinant - 1.0) < 1e-9
    # the reduced cell of a C2 lattice: b, (a+b)/2, c
    half = np.hypot(99.06, 31.01) / 2
    assert cell_close(sorted(reduced.unit_cell.parameters[:3]), sorted([31.01, half, 54.30]), 1e-6, 1)
    cell, op2 = niggli_reduce_cell(crystal.unit_cell)
    np.testing.assert_allclose(cell.parameters, reduced.unit_cell.parameters, rtol=1e-9)
    np.testing.assert_allclose(reduced.real_space_vectors, cb_op.P @ crystal.real_space_vectors, atol=1e-9)
    assert abs(reduced.unit_cell.volume - crystal.unit_cell.volume) < 1e-6 * crystal.unit_cell.volume


# ------------------------------------------------------------------------------ Le Page / Bravais


@pytest.mark.parametrize(
    "best_beta, cell, cb_op, sg",
    [
        (False, (118.17, 37.07, 64.40, 90, 107.635, 90), "a-2*b,a,c", "C 1 2 1"),
        (True, (64.40, 37.07, 116.19, 90, 104.25, 90), "c,a,-a+2*b-c", "I 1 2 1"),
    ],
)
def test_tutorial_p1_cell_gives_mC(best_beta, cell, cb_op, sg):
    settings = bravais_settings(TUTORIAL_P1, best_monoclinic_beta=best_beta)
    assert [s.bravais for s in settings] == ["mC", "aP"]
    mc, ap = settings
    assert abs(mc.max_delta_deg - 1.45) < 0.01  # DIALS: 1.4508 (T3, same cell)
    assert mc.cb_op.as_string() == cb_op
    assert mc.space_group.hm == sg
    # unrefined symmetrised cell; DIALS' refined one is 117.84 37.02 64.31 107.54 (C) / 115.99 104.37 (I)
    assert cell_close(mc.unit_cell, cell, 1e-3, 0.02)
    assert ap.max_delta_deg == 0 and ap.cb_op.as_string() == "a,b,c"
    assert cell_close(ap.unit_cell, TUTORIAL_P1, 1e-6, 1e-6)


# every Bravais-type subgroup, conjugates included (DIALS lists 22 for a cubic F lattice)
@pytest.mark.parametrize(
    "cell, space_group, expected_counts, expected_cell",
    [
        ((77.8, 77.8, 38.0, 90, 90, 90), "P 43 21 2", {"tP": 1, "oP": 1, "oC": 1, "mP": 3, "mC": 2, "aP": 1},
         (77.8, 77.8, 38.0, 90, 90, 90)),
        ((100.0, 100.0, 100.0, 90, 90, 90), "F 2 3", {"cF": 1, "tI": 3, "hR": 4, "oF": 1, "oI": 3, "mC": 9, "aP": 1},
         (100, 100, 100, 90, 90, 90)),
        ((50.0, 60.0, 70.0, 90, 90, 90), "C 2 2 2", {"oC": 1, "mP": 1, "mC": 2, "aP": 1}, (50, 60, 70, 90, 90, 90)),
        ((60.0, 60.0, 120.0, 90, 90, 120), "R 3:H", {"hR": 1, "mC": 3, "aP": 1}, (60, 60, 120, 90, 90, 120)),
        ((60.0, 60.0, 120.0, 90, 90, 120), "P 6", {"hP": 1, "oC": 3, "mC": 6, "mP": 1, "aP": 1},
         (60, 60, 120, 90, 90, 120)),
        (MYD88_C2, "C 1 2 1", {"mC": 1, "aP": 1}, MYD88_C2),
    ],
)
def test_exact_lattices_from_scrambled_primitive_bases(cell, space_group, expected_counts, expected_cell):
    crystal = primitive_crystal(cell, space_group)
    settings = bravais_settings(crystal.unit_cell, best_monoclinic_beta=False)
    assert Counter(s.bravais for s in settings) == expected_counts
    orders = [len(s.rotations) for s in settings]
    assert orders == sorted(orders, reverse=True)  # all δ = 0: highest symmetry first
    top = settings[0]
    assert top.max_delta_deg < 1e-6
    assert cell_close(top.unit_cell, expected_cell, 1e-6, 1e-4)
    # the cb_op really maps the input crystal onto the conventional cell
    assert cell_close(top.cb_op.apply_to_crystal(crystal).unit_cell, expected_cell, 1e-6, 1e-4)
    assert top.cb_op.determinant > 0


def test_c2_reference_cell_perturbed_finds_mC_with_small_delta():
    crystal = primitive_crystal(MYD88_C2, "C 1 2 1", seed=11)
    reduced, _ = niggli_reduce_cell(crystal.unit_cell)
    noisy = gemmi.UnitCell(*(np.array(reduced.parameters) + [0.05, -0.03, 0.04, 0.03, -0.02, 0.04]))
    mc = setting_for_space_group(noisy, "C2")
    assert mc is not None and mc.bravais == "mC" and 0 < mc.max_delta_deg < 0.1
    assert cell_close(mc.unit_cell, MYD88_C2, 2e-3, 0.1)
    assert mc.space_group.hm == "C 1 2 1"


def test_setting_for_space_group_settings_and_absence():
    assert setting_for_space_group(TUTORIAL_P1, "C2").cb_op.as_string() == "a-2*b,a,c"
    i2 = setting_for_space_group(TUTORIAL_P1, "I 1 2 1")
    assert i2.cb_op.as_string() == "c,a,-a+2*b-c" and i2.unit_cell.beta > 90
    assert setting_for_space_group(TUTORIAL_P1, "P 2 2 2") is None
    tp = setting_for_space_group((38.0, 77.8, 77.8, 90, 90, 90), "P 43 21 2")
    assert cell_close(tp.unit_cell, (77.8, 77.8, 38.0, 90, 90, 90), 1e-9, 1e-9)
    assert setting_for_space_group((38.0, 77.8, 77.8, 90, 90, 90), "R 3:H") is None


def test_symmetrize_cell_and_bravais_types():
    tetragonal = symmetrize_cell((77.7, 77.9, 38.0, 90.2, 89.9, 90.1), "P 43 21 2")
    assert cell_close(tetragonal, (77.8, 77.8, 38.0, 90, 90, 90), 1e-3, 1e-6)
    sym = symmetrize_cell((99.0, 31.0, 54.3, 90.3, 107.7, 89.8), "C 1 2 1")
    assert abs(sym.alpha - 90) < 1e-9 and abs(sym.gamma - 90) < 1e-9 and abs(sym.beta - 107.7) < 1e-6
    assert bravais_type_of_space_group("C2") == "mC"
    assert bravais_type_of_space_group("P 43 21 2") == "tP"
    assert bravais_type_of_space_group("R 3:H") == "hR"
    assert bravais_type_of_space_group("P 31 2 1") == "hP"
    assert bravais_type_of_space_group("F 2 3") == "cF"


def test_setting_follows_input_basis_and_target_cell():
    # an already conventional (but Niggli-sign-flipped) input keeps its basis
    assert setting_for_space_group((50, 60, 70, 90.1, 90, 89.9), "P 21 21 2").cb_op.as_string() == "a,b,c"
    # a target cell picks the orthorhombic axis order
    for target in ((50, 70, 60, 90, 90, 90), (70, 60, 50, 90, 90, 90)):
        setting = setting_for_space_group((50, 60, 70, 90.1, 90, 89.9), "P 21 21 2", target_cell=target)
        assert cell_close(setting.unit_cell, target, 1e-3, 0.2)
        assert setting.cb_op.determinant > 0


def test_symmetrize_crystal_keeps_orientation():
    U = Rotation.random(random_state=7).as_matrix()
    true = Crystal.from_cell_and_U(gemmi.UnitCell(*MYD88_C2), U, space_group="C 1 2 1")
    strained = Crystal(A=true.A @ (np.eye(3) + 1e-3 * np.random.default_rng(0).normal(size=(3, 3))))
    ideal = symmetrize_crystal(strained, gemmi.SpaceGroup("C 1 2 1"))
    p = ideal.unit_cell.parameters
    assert abs(p[3] - 90) < 1e-9 and abs(p[5] - 90) < 1e-9
    assert cell_close(ideal.unit_cell, MYD88_C2, 3e-3, 0.3)
    R = ideal.U @ true.U.T
    assert np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))) < 0.2
    assert ideal.space_group.hm == "C 1 2 1"
