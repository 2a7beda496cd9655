"""Analytic derivatives of the refinement engine against central finite differences."""
import numpy as np
import pytest

from algorithms.refinement.model import ParameterisedModel
from algorithms.refinement.prediction_gradients import centroid_gradients, predict_centroids
from algorithms.refinement.unit_cell import MetricTensorParameterisation
from algorithms.refinement.simulation import ed_experiment, simulate_reflections, xray_experiment

ALL_FREE = {
    "Beam": np.zeros(3, bool),
    "Crystal orientation": np.zeros(3, bool),
    "Crystal unit cell": False,
    "Detector": np.zeros(6, bool),
    "Goniometer": np.zeros(2, bool),
}


def _compare(experiment, scan_varying: bool, interval_width_degrees: float = 36.0):
    table, _ = simulate_reflections(experiment, 150, seed=5)
    model = ParameterisedModel(experiment, ALL_FREE, scan_varying, interval_width_degrees)
    hkl, entering, phi = table["miller_index"], table["entering"], table["xyzobs.mm.value"][:, 2]
    # move away from the starting point so no derivative is trivially at a symmetric point
    x0 = model.free_values() + np.random.default_rng(3).normal(size=len(model.free_values())) * 0.05
    state, q, deriv = model.evaluate(model.full_values(x0), hkl, phi)
    pred = predict_centroids(q, state, entering, phi)
    analytic = np.stack(centroid_gradients(q, pred, state, deriv), axis=0)  # (3, n, P)
    scale = np.abs(analytic[:, pred.valid]).max(axis=(1, 2))  # per coordinate
    for k, name in enumerate(model.free_names):
        step = 1e-4 * max(1.0, abs(x0[k]))
        ends = []
        for sign in (1.0, -1.0):
            x = x0.copy()
            x[k] += sign * step
            s, qq, _ = model.evaluate(model.full_values(x), hkl, phi, with_derivatives=False)
            p = predict_centroids(qq, s, entering, phi)
            ends.append(np.stack([p.x_mm, p.y_mm, p.phi_rad]))
        numeric = (ends[0] - ends[1]) / (2 * step)
        error = np.abs(numeric - analytic[:, :, k])[:, pred.valid].max(axis=1)
        assert np.all(error < 1e-6 * scale), (name, error / scale)
    return model.free_names


def test_static_gradients_electron_geometry():
    names = _compare(ed_experiment(0), scan_varying=False)
    # every parameter type is exercised, with DIALS' names
    for n in ("Beam1Mu1", "Beam1Mu2", "Beam1nu", "Crystal1phi1", "Crystal1g_param_3", "Detector1Dist",
              "Detector1Shift1", "Detector1Tau1", "Detector1Tau2", "Detector1Tau3", "Goniometer1Gamma1", "Goniometer1Gamma2"):
        assert n in names
    assert len([n for n in names if "g_param" in n]) == 4  # monoclinic


def test_static_gradients_xray_tetragonal():
    names = _compare(xray_experiment(0), scan_varying=False)
    assert len([n for n in names if "g_param" in n]) == 2


def test_scan_varying_gradients():
    names = _compare(ed_experiment(1), scan_varying=True, interval_width_degrees=15.0)
    # 65.9°/15° → 4 intervals → 6 smoother values per parameter
    assert "Crystal1phi2_sample5" in names and "Crystal1g_param_3_sample5" in names


@pytest.mark.parametrize("cell, group, n_params", [
    ((99.06, 31.01, 54.30, 90, 107.7, 90), "C 1 2 1", 4),
    ((37.07, 61.62, 64.40, 72.89, 89.26, 73.47), "P 1", 6),
    ((57.8, 57.8, 150.0, 90, 90, 90), "P 43 21 2", 2),
    ((40.0, 50.0, 60.0, 90, 90, 90), "P 21 21 21", 3),
    ((70.0, 70.0, 40.0, 90, 90, 120), "P 61", 2),
    ((80.0, 80.0, 80.0, 90, 90, 90), "I 2 3", 1),
])
def test_metric_parameterisation(cell, group, n_params):
    import gemmi

    from algorithms.geometry.models import b_matrix

    B = b_matrix(gemmi.UnitCell(*cell))
    param = MetricTensorParameterisation(B, gemmi.SpaceGroup(group))
    assert len(param.names) == n_params
    B_back, dB = param.compose(param.initial_values)
    assert np.allclose(B_back, B, atol=1e-12)
    assert np.allclose(param.cell(param.initial_values), cell, atol=1e-9)
    # dB/dp and d(cell)/dp against finite differences
    jac = param.cell_jacobian(param.initial_values)
    for k in range(n_params):
        h = 1e-5 * abs(param.initial_values[k]) + 1e-9
        up, down = param.initial_values.copy(), param.initial_values.copy()
        up[k] += h
        down[k] -= h
        assert np.allclose((param.compose(up)[0] - param.compose(down)[0]) / (2 * h), dB[k], rtol=1e-6, atol=1e-12)
        assert np.allclose((param.cell(up) - param.cell(down)) / (2 * h), jac[:, k], rtol=1e-5, atol=1e-8)


def test_gradients_with_fixed_and_setting_rotations():
    from algorithms.geometry.models import rotation_matrix

    experiment = xray_experiment(2)
    experiment.goniometer.fixed_rotation = rotation_matrix((0.3, 0.5, 0.8), np.radians(30.0))
    experiment.goniometer.setting_rotation = rotation_matrix((0.0, 1.0, 0.2), np.radians(10.0))
    _compare(experiment, scan_varying=False)


def test_predict_for_indexed_with_fixed_and_setting_rotations():
    from algorithms.geometry.models import rotation_matrix
    from algorithms.geometry.prediction import miller_indices_to_d_min, predict_rotation
    from algorithms.refinement import predict_for_indexed

    e = xray_experiment(2)
    e.goniometer.fixed_rotation = rotation_matrix((0.3, 0.5, 0.8), np.radians(30.0))
    e.goniometer.setting_rotation = rotation_matrix((0.0, 1.0, 0.2), np.radians(10.0))
    pred = predict_rotation(miller_indices_to_d_min(e.crystal.A, 2.0), e.crystal.A, e.beam, e.detector, e.goniometer, e.scan)
    assert len(pred) > 100
    got = predict_for_indexed(e, pred.miller_index, pred.entering, pred.phi_rad + 0.05)
    assert np.allclose(got.xyzcal_mm, pred.xyzcal_mm, atol=1e-9)
