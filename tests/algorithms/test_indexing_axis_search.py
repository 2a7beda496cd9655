"""The lattice-sharpness score of a trial rotation axis (algorithms.indexing.axis_search) on an
exact lattice rotated through a 66° wedge about a known axis ⟂ to the beam."""
from __future__ import annotations

import gemmi
import numpy as np
import pytest

from algorithms.geometry.models import b_matrix, rotation_matrix
from algorithms.geometry.prediction import miller_indices_to_d_min
from algorithms.indexing.axis_search import axis_sharpness, lattice_sharpness, rlps_about_axis, sharpness_d_min

CELL = (99.06, 31.01, 54.30, 90.0, 107.7, 90.0)  # the MyD88 cell (as P1 here)
TRUE_AXIS = np.array([-0.627963, -0.778243, 0.0])


@pytest.fixture(scope="module")
def sweep():
    rng = np.random.default_rng(7)
    U = rotation_matrix(rng.normal(size=3), 0.8)
    A = U @ b_matrix(gemmi.UnitCell(*CELL))
    hkl = miller_indices_to_d_min(A, 3.0)
    r0 = hkl @ A.T
    keep = (1.0 / np.linalg.norm(r0, axis=1) < 20.0) & (rng.random(len(r0)) < 0.15)  # a sparse subset, as spots
    r0 = r0[keep]
    phi_rad = np.radians(rng.uniform(-33.0, 33.0, len(r0)))
    s_lab = np.einsum("nij,nj->ni", rotation_matrix(TRUE_AXIS, phi_rad), r0)
    return r0, phi_rad, s_lab


def test_rlps_about_axis_undoes_the_rotation(sweep):
    r0, phi_rad, s_lab = sweep
    assert np.allclose(rlps_about_axis(s_lab, phi_rad, 3.0 * TRUE_AXIS), r0, atol=1e-12)


def test_the_true_axis_is_the_sharpest_and_a_wrong_one_smears_the_lattice(sweep):
    r0, phi_rad, s_lab = sweep
    d_min = sharpness_d_min(1.0 / np.linalg.norm(s_lab, axis=1), max_cell=1.3 * 99.06)
    assert np.isclose(d_min, 2 * 99.06 / 64)  # the box holds the longest edge
    beam = np.array([0.0, 0.0, -1.0])
    offsets_deg = np.arange(-30.0, 31.0, 1.0)
    axes = [rotation_matrix(beam, np.radians(o)) @ TRUE_AXIS for o in offsets_deg]
    scores = axis_sharpness(s_lab, phi_rad, np.array(axes), d_min)
    assert abs(offsets_deg[np.argmax(scores)]) <= 1.0
    assert scores[offsets_deg == 0][0] > 1.5 * np.median(scores)
    assert scores[offsets_deg == 0][0] > 1.3 * scores[offsets_deg == 10][0]
    # the exact lattice itself, and a random cloud with the same radial distribution for contrast
    random_cloud = s_lab * np.random.default_rng(1).uniform(0.97, 1.03, (len(s_lab), 3))
    assert lattice_sharpness(r0, d_min) > 2.0 * lattice_sharpness(random_cloud, d_min)
