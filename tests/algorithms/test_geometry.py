"""Geometry models and prediction against independent brute-force computations."""
import gemmi
import numpy as np
import pytest

from algorithms.geometry.models import Beam, Crystal, Detector, Goniometer, Scan, b_matrix, rotation_matrix
from algorithms.geometry.prediction import (
    miller_indices_to_d_min,
    predict_rotation,
    reciprocal_lattice_points,
)


def random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def electron_experiment(rng, distance_mm=1762.0):
    beam = Beam(direction=(0, 0, 1), wavelength=0.0251)
    detector = Detector(origin=(-228.9 * 0.055, 235.8 * 0.055, -distance_mm))
    goniometer = Goniometer(rotation_axis=(-107, -122, 0))
    scan = Scan(image_range=(1, 72), oscillation=(-56.73, 0.9149))
    crystal = Crystal.from_cell_and_U((99.06, 31.01, 54.30, 90, 107.7, 90), random_rotation(rng), "C 1 2 1")
    return beam, detector, goniometer, scan, crystal


def xray_experiment(rng):
    beam = Beam(direction=(0, 0, 1), wavelength=0.9795)
    detector = Detector(origin=(-86.0, 86.0, -150.0), pixel_size=(0.172, 0.172), image_size=(1000, 1000))
    goniometer = Goniometer(rotation_axis=(1, 0, 0), setting_rotation=rotation_matrix((0, 1, 0), 0.01))
    scan = Scan(image_range=(5, 40), oscillation=(10.0, 0.5))
    crystal = Crystal.from_cell_and_U((79.1, 79.1, 38.0, 90, 90, 90), random_rotation(rng), "P 43 21 2")
    return beam, detector, goniometer, scan, crystal


def test_b_matrix_is_dials_lower_triangular_and_matches_tutorial():
    B = b_matrix(gemmi.UnitCell(99.06, 31.01, 54.30, 90, 107.7, 90))
    assert B[0, 1] == B[0, 2] == B[1, 2] == 0
    # the walk-through prints B rows (0.0101,0,0) (−0,0.0322,0) (0.0032,−0,0.0194)
    np.testing.assert_allclose(np.round(B, 4), [[0.0101, 0, 0], [0, 0.0322, 0], [0.0032, 0, 0.0193]], atol=1.1e-4)


def test_crystal_round_trip_real_space_vectors_and_cell():
    rng = np.random.default_rng(1)
    U = random_rotation(rng)
    c = Crystal.from_cell_and_U((37.07, 61.63, 64.40, 72.88, 89.25, 73.45), U)
    assert np.allclose(c.unit_cell.parameters, (37.07, 61.63, 64.40, 72.88, 89.25, 73.45))
    np.testing.assert_allclose(c.U, U, atol=1e-12)
    M = c.real_space_vectors
    np.testing.assert_allclose(M @ c.A, np.eye(3), atol=1e-12)
    c2 = Crystal.from_real_space_vectors(*M)
    np.testing.assert_allclose(c2.A, c.A, atol=1e-15)


def test_change_basis_matches_tutorial_cell():
    """P1 37.07,61.63,64.40,72.88,89.25,73.45 with a-2*b,a,c gives the C2 cell ≈117.84,37.02,64.31,90,107.54,90
    (the printed C2 cell is the symmetrised one; the P1 cell is monoclinic only within 1.45°)."""
    c = Crystal.from_cell_and_U((37.07, 61.63, 64.40, 72.88, 89.25, 73.45), np.eye(3))
    P = np.array([[1, -2, 0], [1, 0, 0], [0, 0, 1]])
    cell = np.array(c.change_basis(P).unit_cell.parameters)
    np.testing.assert_allclose(cell[:3], (117.84, 37.02, 64.31), rtol=0.004)
    np.testing.assert_allclose(cell[3:], (90.0, 107.54, 90.0), atol=1.0)
    # exactly: a C2 cell taken to P1 by P⁻¹ and back by P is unchanged
    c2 = Crystal.from_cell_and_U((117.84, 37.02, 64.31, 90, 107.54, 90), np.eye(3), "C 1 2 1")
    back = c2.change_basis(np.linalg.inv(P)).change_basis(P)
    np.testing.assert_allclose(back.unit_cell.parameters, (117.84, 37.02, 64.31, 90, 107.54, 90), atol=1e-9)
    hkl = np.array([[1, 2, 3], [-2, 0, 5]])
    np.testing.assert_allclose(hkl @ P.T @ c.change_basis(P).A.T, hkl @ c.A.T, atol=1e-12)


@pytest.mark.parametrize("make", [electron_experiment, xray_experiment])
def test_pixel_lab_round_trip(make):
    rng = np.random.default_rng(2)
    beam, det, *_ = make(rng)
    xy = rng.uniform(0, det.image_size[0], size=(1000, 2))
    lab = det.pixel_to_lab(xy)
    back, valid = det.ray_intersection_px(lab * 3.7)  # any length along the ray
    assert valid.all()
    np.testing.assert_allclose(back, xy, atol=1e-9)
    s1 = det.pixel_to_s1(xy, beam.s0)
    np.testing.assert_allclose(np.linalg.norm(s1, axis=1), 1 / beam.wavelength, rtol=1e-12)


def test_beam_centre_and_distance_overrides():
    beam = Beam(wavelength=0.0251)
    det = Detector(origin=(-12.588125, 12.9679, -2.193))
    np.testing.assert_allclose(det.beam_centre_px(beam.s0), (228.875, 235.78), atol=1e-9)
    det.set_distance_mm(2193.0)
    assert det.distance_mm == pytest.approx(2193.0)
    np.testing.assert_allclose(det.origin, (-12.588125, 12.9679, -2193.0))
    np.testing.assert_allclose(det.beam_centre_px(beam.s0), (228.875, 235.78), atol=1e-9)
    det.set_beam_centre_px(230.0, 240.5, beam.s0)
    np.testing.assert_allclose(det.beam_centre_px(beam.s0), (230.0, 240.5), atol=1e-9)
    assert det.distance_mm == pytest.approx(2193.0)


def test_resolution_of_pixel_matches_bragg():
    beam = Beam(wavelength=0.0251)
    det = Detector(origin=(-12.5, 12.5, -1762.0))
    xy = np.array([[227.27 + 0.5 + 100.0, 227.27]])  # ~100 px from the centre along fast
    r_mm = np.hypot(*(det.pixel_to_mm(xy)[0] - det.beam_centre_mm(beam.s0)))
    two_theta = np.arctan(r_mm / 1762.0)
    d_bragg = 0.0251 / (2 * np.sin(two_theta / 2))
    assert det.resolution_of_pixel(xy, beam.s0)[0] == pytest.approx(d_bragg, rel=1e-12)


def _brute_force_crossings(r0, s0, goniometer, phi_lo, phi_hi, n=20001):
    """Sign changes of |s0 + R(φ) r0| − |s0| on a fine grid, refined by bisection."""
    phis = np.linspace(phi_lo, phi_hi, n)
    R = goniometer.rotation_matrix(phis)
    f = np.linalg.norm(s0 + R @ r0, axis=1) - np.linalg.norm(s0)
    out = []
    for i in np.nonzero(np.sign(f[:-1]) != np.sign(f[1:]))[0]:
        a, b = phis[i], phis[i + 1]
        fa = f[i]
        for _ in range(60):
            m = 0.5 * (a + b)
            fm = np.linalg.norm(s0 + goniometer.rotation_matrix(m) @ r0) - np.linalg.norm(s0)
            if np.sign(fm) == np.sign(fa):
                a, fa = m, fm
            else:
                b = m
        out.append(0.5 * (a + b))
    return out


@pytest.mark.parametrize("make", [electron_experiment, xray_experiment])
def test_prediction_agrees_with_brute_force_rotation_scan(make):
    rng = np.random.default_rng(3)
    beam, det, gonio, scan, crystal = make(rng)
    hkl = miller_indices_to_d_min(crystal.A, 2.5)
    pred = predict_rotation(hkl, crystal.A, beam, det, gonio, scan)
    assert len(pred) > 100
    lo, hi = np.radians(scan.oscillation_range_deg)
    pick = rng.choice(len(pred), size=40, replace=False)
    for i in pick:
        r0 = gonio.fixed_rotation @ crystal.A @ pred.miller_index[i]
        crossings = _brute_force_crossings(r0, beam.s0, gonio, lo, hi)
        j = np.argmin(np.abs(np.array(crossings) - pred.phi_rad[i]))
        assert np.degrees(abs(crossings[j] - pred.phi_rad[i])) < 1e-3
        s1 = beam.s0 + gonio.rotation_matrix(crossings[j]) @ r0
        xy, _ = det.ray_intersection_px(s1)
        np.testing.assert_allclose(xy, pred.xy_px[i], atol=0.01)
    np.testing.assert_allclose(np.linalg.norm(pred.s1, axis=1), np.linalg.norm(beam.s0), rtol=1e-10)


def test_reciprocal_lattice_points_invert_prediction():
    rng = np.random.default_rng(4)
    beam, det, gonio, scan, crystal = electron_experiment(rng)
    hkl = miller_indices_to_d_min(crystal.A, 2.5)
    pred = predict_rotation(hkl, crystal.A, beam, det, gonio, scan)
    rlp = reciprocal_lattice_points(pred.xyzcal_px, beam, det, gonio, scan)
    np.testing.assert_allclose(rlp, pred.miller_index @ crystal.A.T, atol=1e-9)


def test_entering_flag_and_axis_inversion_is_mirror():
    rng = np.random.default_rng(5)
    beam, det, gonio, scan, crystal = electron_experiment(rng)
    hkl = miller_indices_to_d_min(crystal.A, 3.0)
    pred = predict_rotation(hkl, crystal.A, beam, det, gonio, scan)
    # entering: the point moves from outside to inside the Ewald sphere as φ increases
    eps = 1e-6
    r0 = pred.miller_index @ crystal.A.T
    R_after = gonio.rotation_matrix(pred.phi_rad + eps)
    inside_after = np.linalg.norm(beam.s0 + np.einsum("nij,nj->ni", R_after, r0), axis=1) < np.linalg.norm(beam.s0)
    np.testing.assert_array_equal(pred.entering, inside_after)


def test_scan_angles_and_array_index():
    scan = Scan(image_range=(5, 40), oscillation=(10.0, 0.5))
    assert scan.angle_from_image_index(5) == 10.0
    assert scan.angle_from_array_index(4) == 10.0  # z of image 5 starts at 4
    assert scan.array_index_from_angle(12.5) == pytest.approx(9.0)
    assert scan.array_range == (4, 40)
    assert scan.num_images == 36


@pytest.mark.parametrize("make", [electron_experiment, xray_experiment])
def test_scan_varying_prediction_with_constant_A_matches_static(make):
    from algorithms.geometry.prediction import predict_rotation_scan_varying

    rng = np.random.default_rng(6)
    beam, det, gonio, scan, crystal = make(rng)
    hkl = miller_indices_to_d_min(crystal.A, 3.0)
    static = predict_rotation(hkl, crystal.A, beam, det, gonio, scan)
    A_sp = np.repeat(crystal.A[None], scan.num_images + 1, axis=0)
    varying = predict_rotation_scan_varying(hkl, A_sp, beam, det, gonio, scan)
    # the same reflections, positions equal to well below a tenth of a pixel (chord vs arc)
    key_s = {(tuple(h), e) for h, e in zip(static.miller_index, static.entering)}
    key_v = {(tuple(h), e) for h, e in zip(varying.miller_index, varying.entering)}
    assert len(key_s ^ key_v) <= 0.002 * len(key_s) + 2  # only rows at the very scan ends may differ
    lookup = {(tuple(h), e): i for i, (h, e) in enumerate(zip(static.miller_index, static.entering))}
    pairs = [(lookup[k], i) for i, k in enumerate(zip(map(tuple, varying.miller_index), varying.entering)) if k in lookup]
    i_s, i_v = np.array(pairs).T
    assert np.max(np.abs(static.xy_px[i_s] - varying.xy_px[i_v])) < 0.05
    dz = np.abs(static.z_px[i_s] - varying.z_px[i_v])
    assert np.percentile(dz, 99) < 0.01 and dz.max() < 0.05  # worst near the rotation axis
    np.testing.assert_array_equal(static.entering[i_s], varying.entering[i_v])
