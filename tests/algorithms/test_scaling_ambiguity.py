"""Indexing-ambiguity resolution (Brehm & Diederichs 2014) on simulated crystals with known settings."""
import gemmi
import numpy as np
import pytest

from algorithms.merging.symmetry import point_group_rotations
from algorithms.scaling.ambiguity import alternative_indexings, hkl_triplet, resolve_indexing_ambiguity
from scaling_simulation import simulate_ambiguous_crystals

P4_CELL = gemmi.UnitCell(79, 79, 38, 90, 90, 90)
P3_CELL = gemmi.UnitCell(60, 60, 90, 90, 90, 120)


def _resolve(simulated, sg, operators, n_crystals):
    return resolve_indexing_ambiguity(simulated["dataset"], simulated["hkl"], simulated["intensity"], simulated["d"],
                                      n_crystals, sg, operators)


def test_alternative_indexings_are_the_twin_laws_of_the_lattice():
    assert [hkl_triplet(p) for p in alternative_indexings(P4_CELL, gemmi.SpaceGroup("P 4"))] == ["h,k,l", "k,h,-l"]
    myd88 = gemmi.UnitCell(99.06, 31.01, 54.30, 90, 107.7, 90)
    assert [hkl_triplet(p) for p in alternative_indexings(myd88, gemmi.SpaceGroup("C 1 2 1"))] == ["h,k,l"]
    assert len(alternative_indexings(P4_CELL, gemmi.SpaceGroup("P 43 21 2"))) == 1  # the lattice's own symmetry
    p3 = alternative_indexings(P3_CELL, gemmi.SpaceGroup("P 3"))
    assert len(p3) == 4
    hkl = np.array([[3, 1, 2], [5, -2, 7], [1, 4, -3]])
    for p in p3:  # proper rotations of the lattice: same d-spacings, same handedness
        assert round(np.linalg.det(p)) == 1
        np.testing.assert_allclose(P3_CELL.calculate_d_array((hkl @ p.T).astype(np.int32)),
                                   P3_CELL.calculate_d_array(hkl.astype(np.int32)))


@pytest.mark.parametrize("flipped", [{2, 5, 6, 11}, {0, 1, 3, 4, 5, 7, 8, 10}])
def test_p4_crystals_indexed_by_the_twin_law_are_brought_back(flipped):
    operators = alternative_indexings(P4_CELL, gemmi.SpaceGroup("P 4"))
    twin = operators[1]
    simulated, sg = simulate_ambiguous_crystals(P4_CELL, "P 4", [twin if k in flipped else None for k in range(12)])
    result = _resolve(simulated, sg, operators, 12)
    minority = flipped if len(flipped) <= 6 else set(range(12)) - flipped  # as few crystals as possible reindexed
    assert {k for k, op in result.reindexed()} == minority
    assert all(op == "k,h,-l" for _, op in result.reindexed())
    assert result.undecided == []
    for k in range(12):
        assert result.mean_correlation(k, result.assignment[k]) > 0.9
        assert result.mean_correlation(k, 1 - result.assignment[k]) < 0.3


def test_p3_crystals_in_four_settings_end_in_one():
    sg = gemmi.SpaceGroup("P 3")
    operators = alternative_indexings(P3_CELL, sg)
    applied = [0, 1, 2, 3, 0, 0, 2, 1, 3, 0]
    simulated, _ = simulate_ambiguous_crystals(P3_CELL, "P 3", [operators[a] for a in applied], n_obs=800, seed=4)
    result = _resolve(simulated, sg, operators, len(applied))
    # The reindexing undoes what was applied: P_assigned·P_applied is one and the same setting
    # (here the identity, the most common one) for every crystal, up to the symmetry of P3.
    rotations = np.transpose(point_group_rotations(sg), (0, 2, 1))
    for k, a in enumerate(applied):
        combined = operators[result.assignment[k]] @ operators[a]
        assert np.any(np.all(rotations == combined, axis=(1, 2))), (k, hkl_triplet(combined))
    assert sum(result.assignment != 0) == sum(np.array(applied) != 0)


def test_twin_law_that_is_a_true_symmetry_leaves_crystals_as_indexed():
    """Lysozyme is P4₃2₁2: processed in P4, k,h,−l maps the intensities onto themselves and there is
    nothing to resolve; no crystal may be flipped on noise."""
    operators = alternative_indexings(P4_CELL, gemmi.SpaceGroup("P 4"))
    simulated, sg = simulate_ambiguous_crystals(P4_CELL, "P 4", [operators[1] if k % 3 == 0 else None for k in range(9)],
                              true_symmetry="P 4 2 2", seed=2)
    result = _resolve(simulated, sg, operators, 9)
    assert result.reindexed() == []
    assert np.all(result.assignment == 0)
