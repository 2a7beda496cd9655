"""Indexing against exact truth: simulated spots from known crystals in ED and X-ray geometry."""
import gemmi
import numpy as np
import pytest

from algorithms.errors import DataError
from algorithms.geometry.models import Crystal
from algorithms.indexing import (
    assign_indices,
    correct_non_primitive_basis,
    detect_non_primitive_basis,
    estimate_max_cell,
    fft3d_candidate_vectors,
    fit_a_matrix,
    index_reflections,
    score_candidates,
    split_pieces,
)
from algorithms.symmetry import nearest_rotation
from algorithms.indexing.max_cell import _primitive_cell, ice_ring_mask, overlapping_bbox_mask
from algorithms.symmetry import niggli_reduce_cell
from indexing_simulation import LYSOZYME, MYD88_C2, TRICLINIC, simulate_spots


def reduced_primitive_cell(crystal: Crystal) -> np.ndarray:
    """Niggli cell of the primitive lattice of a (possibly centred) conventional crystal."""
    translations = [np.array(t, float) / gemmi.Op.DEN for t in crystal.space_group.operations().cen_ops]
    cell = _primitive_cell(crystal.unit_cell, translations) if len(translations) > 1 else crystal.unit_cell
    return np.array(niggli_reduce_cell(cell)[0].parameters)


def relation_to_truth(found: Crystal, true: Crystal):
    """T with h_found = T·h_true (rational; integral for a setting of the same lattice) and its error."""
    T = np.linalg.inv(found.A) @ true.A
    T_rational = np.rint(T * 6) / 6
    return T_rational, np.abs(T - T_rational).max()


def misorientation_deg(found: Crystal, true: Crystal, T: np.ndarray) -> float:
    ideal = true.A @ np.linalg.inv(T)  # the true A expressed in the found basis
    R = nearest_rotation(found.A @ np.linalg.inv(ideal))
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1) / 2, -1, 1))))


def check_solution(result, sim, cell_tolerance=0.01, angle_tolerance_deg=0.5, min_correct=0.95):
    found_reduced = reduced_primitive_cell(result.crystal)
    true_reduced = reduced_primitive_cell(sim.crystal)
    np.testing.assert_allclose(found_reduced[:3], true_reduced[:3], rtol=cell_tolerance)
    # a reduced angle of ~90° may come out as its supplement (both Niggli forms are valid)
    found_angles, true_angles = found_reduced[3:], true_reduced[3:]
    angle_error = np.minimum(np.abs(found_angles - true_angles), np.abs(found_angles + true_angles - 180))
    assert np.all(angle_error < 100 * cell_tolerance)
    T, error = relation_to_truth(result.crystal, sim.crystal)
    assert error < 0.02, f"found basis is not a setting of the true lattice (error {error:.3f})"
    assert misorientation_deg(result.crystal, sim.crystal, T) < angle_tolerance_deg
    expected = sim.true_hkl @ T.T
    lattice = sim.is_lattice
    same_index = np.all(np.abs(result.miller_index[lattice] - expected[lattice]) < 1e-6, axis=1)
    correct = result.indexed_mask[lattice] & same_index
    assert correct.mean() >= min_correct, f"only {correct.mean():.3f} of the lattice spots have the true index"
    return T


# --------------------------------------------------------------------------------- unit pieces


def test_assign_indices_tolerance_and_duplicates():
    A = np.linalg.inv(np.diag([50.0, 60.0, 70.0]))
    hkl = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [4, 0, 0], [0, 0, 0], [2, 2, 2]])
    offsets = np.array([[0.1, 0, 0], [0.05, 0, 0], [0.0, 0.0, 0.02], [0.2, 0.2, 0.05], [0.1, 0.1, 0.1],
                        [0.2, 0.2, 0.2]])
    rlp = (hkl + offsets) @ A.T
    phi = np.radians([10.0, 30.0, 80.0, 0.0, 0.0, 0.0])
    miller, indexed, residual = assign_indices(rlp, A, phi_rad=phi)
    # |Δh| = 0.1, 0.05, 0.02: spots 0 and 1 are within 45° → only the better (1) stays; spot 2 is 50° from 1
    np.testing.assert_array_equal(indexed, [False, True, True, True, False, False])  # |(.2,.2,.2)| = 0.35 > 0.3
    np.testing.assert_array_equal(miller[1], [1, 2, 3])
    np.testing.assert_array_equal(miller[0], [0, 0, 0])
    np.testing.assert_allclose(residual[3], np.sqrt(0.0825))
    _, indexed_all, _ = assign_indices(rlp, A)
    _, indexed_dmin, _ = assign_indices(rlp, A, d_min=15.0)
    assert indexed_all[:4].all() and indexed_all.sum() == 4
    np.testing.assert_array_equal(indexed_dmin, indexed_all & (1.0 / np.linalg.norm(rlp, axis=1) > 15.0))
    assert 0 < indexed_dmin.sum() < 4


def test_split_pieces_are_duplicates_at_the_same_detector_place():
    A = np.linalg.inv(np.diag([50.0, 60.0, 70.0]))
    hkl = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3], [2, 0, 1], [2, 0, 1]])
    offsets = np.array([[0.02, 0, 0], [0.1, 0, 0], [0.1, 0.1, 0], [0.2, 0.2, 0.2], [0.05, 0, 0], [0.1, 0, 0]])
    rlp = (hkl + offsets) @ A.T
    phi = np.radians([10.0, 14.0, 20.0, 12.0, 0.0, 5.0])
    # x0, x1, y0, y1: spot 1 overlaps spot 0 (a piece); spot 2 touches it only at an edge (ends are
    # exclusive: another reflection); spot 3 overlaps but |Δh| = 0.35 > 0.3; spot 5 overlaps 4
    footprints = np.array([[10, 14, 20, 24], [13, 15, 23, 26], [14, 18, 20, 24], [10, 14, 20, 24],
                           [50, 53, 60, 63], [52, 55, 62, 64]])
    miller, indexed, _ = assign_indices(rlp, A, phi_rad=phi)
    np.testing.assert_array_equal(indexed, [True, False, False, False, True, False])  # DIALS' rule
    piece_of, piece_hkl = split_pieces(rlp, A, indexed, footprints)
    np.testing.assert_array_equal(piece_of, [-1, 0, -1, -1, -1, 4])
    np.testing.assert_array_equal(piece_hkl[[1, 5]], hkl[[1, 5]])
    assert not piece_hkl[[0, 2, 3, 4]].any()
    outside = np.array([True, True, True, True, True, False])
    assert split_pieces(rlp, A, indexed, footprints, candidates_mask=outside)[0][5] == -1


def test_fit_a_matrix_recovers_exact_setting_matrix():
    sim = simulate_spots(TRICLINIC, noise_px=0.0, noise_images=0.0, n_spots=200)
    true_A = sim.crystal.A
    rlp = sim.true_hkl @ true_A.T
    np.testing.assert_allclose(fit_a_matrix(rlp, sim.true_hkl), true_A, atol=1e-12)
    with pytest.raises(DataError, match="three dimensions"):
        fit_a_matrix(rlp[:2], sim.true_hkl[:2])


def test_detect_non_primitive_basis_on_doubled_cell():
    sim = simulate_spots(TRICLINIC, noise_px=0.0, noise_images=0.0, n_spots=300)
    doubled_hkl = sim.true_hkl * np.array([2, 1, 1])  # indices in a cell with a' = 2a
    T = detect_non_primitive_basis(doubled_hkl)
    assert T is not None and round(abs(np.linalg.det(T))) == 2
    assert np.all((np.linalg.inv(T) @ doubled_hkl.T) % 1 < 1e-9)  # all h lie on the sublattice
    assert detect_non_primitive_basis(sim.true_hkl) is None


SCRAMBLE = np.array([[1, 1, 0], [0, 1, 2], [1, 0, -1]])  # det −1: a skewed basis of the same lattice


@pytest.mark.parametrize("index_matrix", [np.diag([7, 1, 1]), np.diag([1, 5, 1]) @ SCRAMBLE, np.diag([2, 2, 1]),
                                          np.diag([3, 3, 1]), np.diag([2, 5, 1]) @ SCRAMBLE, np.diag([1, 2, 3]),
                                          SCRAMBLE.T @ np.diag([7, 1, 1]) @ SCRAMBLE])
def test_correct_non_primitive_basis_removes_supercells_of_any_index_up_to_10(index_matrix):
    """A supercell M' = S·M (S integer, det 2…10, any orientation of the sublattice) indexes the
    true spots with h' = S·h; the correction must come back to the true lattice."""
    sim = simulate_spots(TRICLINIC, noise_px=0.0, noise_images=0.0, n_spots=400)
    true_A = sim.crystal.A
    S = np.asarray(index_matrix)
    supercell = Crystal(A=true_A @ np.linalg.inv(S), space_group=sim.crystal.space_group)
    rlp = sim.true_hkl @ true_A.T

    def reindex(crystal):
        h = np.linalg.solve(crystal.A, rlp.T).T
        return np.rint(h[np.all(np.abs(h - np.rint(h)) < 1e-6, axis=1)]).astype(int)

    corrected, _ = correct_non_primitive_basis(supercell, reindex)
    T = np.linalg.inv(corrected.A) @ true_A
    assert np.allclose(T, np.rint(T), atol=1e-6) and round(abs(np.linalg.det(np.rint(T)))) == 1


def test_score_candidates_weighted_formula():
    scores = score_candidates([100.0, 200.0, 100.0], [0.9, 0.9, 0.45], [0.5, 0.5, 1.0])
    np.testing.assert_allclose(scores["overall_score"], [0.0, 1.0, 2.0])
    np.testing.assert_allclose(scores["volume_score"], [0.0, 1.0, 0.0])


# ------------------------------------------------------------------------------- max cell, FFT


@pytest.mark.parametrize("cell, space_group, n_spots", [(MYD88_C2, "C 1 2 1", 600), (TRICLINIC, "P 1", 600),
                                                       (LYSOZYME, "P 43 21 2", 5000)])
def test_max_cell_estimate_brackets_the_longest_reduced_edge(cell, space_group, n_spots):
    sim = simulate_spots(cell, space_group, n_spots=n_spots)
    longest = reduced_primitive_cell(sim.crystal)[:3].max()
    max_cell = estimate_max_cell(sim.rlp, sim.phi_rad, sim.entering)
    assert longest < max_cell < 3 * longest


def test_max_cell_ice_and_overlap_filters():
    sim = simulate_spots(TRICLINIC, n_spots=600)
    ice_d = 3.897  # (1 0 0) of hexagonal ice (a = 4.498 Å): d = a·√3/2
    ice_spot = np.array([[1.0 / ice_d, 0.0, 0.0]])
    assert ice_ring_mask(ice_spot)[0] and not ice_ring_mask(np.array([[1 / 5.0, 0, 0]]))[0]
    boxes = np.array([[0, 5, 0, 5, 0, 2], [4, 8, 4, 8, 1, 3], [20, 25, 0, 5, 0, 2], [0, 5, 0, 5, 3, 5]])
    np.testing.assert_array_equal(overlapping_bbox_mask(boxes), [True, True, False, False])
    assert estimate_max_cell(sim.rlp, sim.phi_rad, sim.entering, filter_ice=False) > 0


def test_fft3d_vectors_include_the_true_basis():
    sim = simulate_spots(TRICLINIC, n_spots=600)
    vectors, volumes, info = fft3d_candidate_vectors(sim.rlp, sim.d, max_cell=1.3 * 64.4)
    assert info["n_points"] == 256 and info["n_centroids"] == 600
    assert abs(info["d_min"] - sim.d.min()) < 1e-9
    assert np.all(np.diff(volumes) <= 0)
    true_vectors = sim.crystal.real_space_vectors
    for t in true_vectors:
        cos = np.abs(vectors @ t) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(t))
        best = np.argmax(cos - np.abs(np.linalg.norm(vectors, axis=1) - np.linalg.norm(t)) / 100)
        assert np.degrees(np.arccos(min(cos[best], 1.0))) < 2.0
        assert abs(np.linalg.norm(vectors[best]) - np.linalg.norm(t)) < 0.02 * np.linalg.norm(t)


# ------------------------------------------------------------------------------ whole indexing


@pytest.mark.parametrize(
    "cell, space_group, geometry, method",
    [
        (MYD88_C2, "C 1 2 1", "ed", "fft3d"),
        (LYSOZYME, "P 43 21 2", "ed", "fft3d"),
        (TRICLINIC, "P 1", "ed", "fft3d"),
        (MYD88_C2, "C 1 2 1", "xray", "fft3d"),
        (MYD88_C2, "C 1 2 1", "ed", "fft1d"),
        (LYSOZYME, "P 43 21 2", "ed", "fft1d"),
    ],
)
def test_index_recovers_true_lattice(cell, space_group, geometry, method):
    sim = simulate_spots(cell, space_group, geometry=geometry, seed=1)
    result = index_reflections(sim.rlp, sim.d, sim.phi_rad, sim.entering, method=method)
    assert result.crystal.space_group.number == 1
    check_solution(result, sim)
    assert len(result.cycles) == 5 and result.cycles[0]["d_min"] == pytest.approx(result.d_min_fft)
    assert result.candidates_table[0]["overall_score"] == min(r["overall_score"] for r in result.candidates_table)


def test_candidates_are_exposed_and_a_run_can_restart_from_any_of_them():
    sim = simulate_spots(TRICLINIC, "P 1", seed=4)
    result = index_reflections(sim.rlp, sim.d, sim.phi_rad, sim.entering)
    assert len(result.candidates) == len(result.candidates_table) >= 1
    for candidate, row in zip(result.candidates, result.candidates_table):
        assert candidate.n_indexed == row["n_indexed"]
        assert candidate.outlier_mask.shape == (len(sim.rlp),)
        assert not (candidate.outlier_mask & candidate.indexed_mask).any()
    again = index_reflections(sim.rlp, sim.d, sim.phi_rad, sim.entering, start_crystal=result.candidates[0].p1_crystal)
    np.testing.assert_allclose(again.crystal.A, result.crystal.A, atol=1e-9)
    assert again.d_min_fft == pytest.approx(result.d_min_fft) and len(again.candidates) == 1
    # a given lattice is indexed as given: a sub-cell of half the volume takes about half the spots
    half = Crystal(A=sim.crystal.A @ np.diag([2.0, 1.0, 1.0]), space_group=sim.crystal.space_group)
    subcell = index_reflections(sim.rlp, sim.d, sim.phi_rad, sim.entering, start_crystal=half)
    assert subcell.crystal.unit_cell.volume == pytest.approx(sim.crystal.unit_cell.volume / 2, rel=0.01)
    assert 0.35 < subcell.indexed_mask.sum() / result.indexed_mask.sum() < 0.65


def test_index_with_known_space_group_c2_gives_c2_setting():
    sim = simulate_spots(MYD88_C2, "C 1 2 1", seed=2)
    result = index_reflections(sim.rlp, sim.d, sim.phi_rad, sim.entering, known_space_group="C2")
    assert result.crystal.space_group.hm == "C 1 2 1"
    np.testing.assert_allclose(result.crystal.unit_cell.parameters[:3], MYD88_C2[:3], rtol=0.005)
    np.testing.assert_allclose(result.crystal.unit_cell.parameters[3:], MYD88_C2[3:], atol=0.3)
    T = check_solution(result, sim)
    assert abs(abs(np.linalg.det(T)) - 1) < 1e-9  # same C-centred cell as the truth (up to its 2-fold)
    assert result.cb_op is not None and abs(result.cb_op.determinant - 2) < 1e-9  # P1 → C doubles the cell


def test_index_with_known_cell_and_lysozyme_space_group():
    sim = simulate_spots(LYSOZYME, "P 43 21 2", seed=3)
    result = index_reflections(sim.rlp, sim.d, sim.phi_rad, sim.entering, known_space_group="P 43 21 2",
                               known_unit_cell=LYSOZYME)
    assert result.crystal.space_group.hm == "P 43 21 2"
    p = result.crystal.unit_cell.parameters
    assert p[0] == pytest.approx(p[1]) and p[3] == pytest.approx(90) and p[5] == pytest.approx(90)
    np.testing.assert_allclose(p[:3], LYSOZYME[:3], rtol=0.005)
    check_solution(result, sim)
    assert result.max_cell == pytest.approx(1.3 * 77.8)


def test_index_with_ten_percent_random_spots():
    sim = simulate_spots(MYD88_C2, "C 1 2 1", seed=4, random_fraction=0.1)
    assert (~sim.is_lattice).sum() > 40
    result = index_reflections(sim.rlp, sim.d, sim.phi_rad, sim.entering)
    check_solution(result, sim)
    # random spots mostly stay unindexed (a few fall within 0.3 of a lattice point by chance)
    assert result.indexed_mask[~sim.is_lattice].mean() < 0.5


def test_index_rejects_impossible_symmetry_and_too_few_spots():
    sim = simulate_spots(TRICLINIC, seed=5)
    with pytest.raises(DataError, match="no candidate lattice"):
        index_reflections(sim.rlp, sim.d, sim.phi_rad, sim.entering, known_space_group="P 43 21 2")
    with pytest.raises(DataError, match="at least 10"):
        index_reflections(sim.rlp[:5], sim.d[:5], sim.phi_rad[:5], sim.entering[:5])


def test_refine_callables_are_used_for_candidates_and_cycles():
    sim = simulate_spots(TRICLINIC, seed=6)
    calls = {"candidate": 0, "cycle": 0}

    def make_refine(kind, rmsds):
        def refine(crystal, indexed_mask, miller_index):
            calls[kind] += 1
            A = fit_a_matrix(sim.rlp[indexed_mask], miller_index[indexed_mask])
            return Crystal(A=A), rmsds, np.zeros(len(indexed_mask), bool)
        return refine

    result = index_reflections(sim.rlp, sim.d, sim.phi_rad, sim.entering, refine=make_refine("cycle", (0.3, 0.4, 0.2)),
                               refine_candidate=make_refine("candidate", (0.6, 0.8, 0.2)))
    assert calls["cycle"] == 5 and calls["candidate"] >= 1
    assert result.rmsds == (0.3, 0.4, 0.2)
    assert result.candidates_table[0]["rmsd"] == pytest.approx(1.0)
    check_solution(result, sim)
