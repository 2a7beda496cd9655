"""Tests of the physical scaling model and the scaling target (exact derivatives, smoother rules)."""
import numpy as np
import pytest

from algorithms.merging.symmetry import map_to_asu
from algorithms.scaling.absorption import real_spherical_harmonics
from algorithms.scaling.model import ModelOptions, PhysicalModel
from algorithms.scaling.smoother import SmootherAxis, auto_intervals_deg
from algorithms.scaling.target import ScalingTarget
from scaling_simulation import simulate_scaling


@pytest.mark.parametrize("wedge, width, interval, n_values, rot_int, norm", [
    (65.87, 0.9149, 8.0, 11, 65.87 / 9, None),   # MyD88 crystal 1: scale
    (65.87, 0.9149, 10.0, 9, 65.87 / 7, None),   # MyD88 crystal 1: decay
    (100.0, 1.0, 15.0, 9, 100 / 7, 0.06993),     # quartz (DIALS scaled.expt): scale
    (100.0, 1.0, 20.0, 7, 20.0, None),           # quartz: decay (the +1e-5 tie rule)
    (5.0, 1.0, 8.0, 2, 5.0, None),
    (12.0, 1.0, 8.0, 3, 6.0, None),
])
def test_smoother_parameter_counts_follow_dials_rules(wedge, width, interval, n_values, rot_int, norm):
    axis = SmootherAxis.from_interval(wedge, width, interval)
    assert axis.n_values == n_values
    assert axis.rot_interval_deg == pytest.approx(rot_int)
    if norm is not None:
        assert axis.norm_factor == pytest.approx(norm, abs=5e-6)
    assert auto_intervals_deg(65.87) == (8.0, 10.0)


def test_smoother_weights_are_normalised_gaussians_of_the_nearest_three():
    axis = SmootherAxis.from_interval(65.87, 0.9149, 8.0)
    z = np.array([0.0, 20.3, 71.9])
    columns, weights = axis.weights(z)
    assert np.allclose(weights.sum(axis=1), 1.0)
    x = (z - 0.5) * axis.norm_factor
    for row in range(len(z)):
        distances = np.abs(axis.positions - x[row])
        assert set(columns[row]) == set(np.argsort(distances)[:3])
        raw = np.exp(-((x[row] - axis.positions[columns[row]]) / 0.7) ** 2)
        assert np.allclose(weights[row], raw / raw.sum())


def test_real_spherical_harmonics_are_orthonormal():
    n_theta, n_phi = 200, 400
    theta = (np.arange(n_theta) + 0.5) * np.pi / n_theta
    phi = (np.arange(n_phi) + 0.5) * 2 * np.pi / n_phi
    t, p = np.meshgrid(theta, phi, indexing="ij")
    v = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=-1).reshape(-1, 3)
    y = real_spherical_harmonics(v, 4)
    assert y.shape[1] == 24
    area = (np.sin(t) * (np.pi / n_theta) * (2 * np.pi / n_phi)).ravel()
    gram = (y * area[:, None]).T @ y
    assert np.allclose(gram, np.eye(24), atol=2e-3)


@pytest.fixture(scope="module")
def small_problem():
    sim = simulate_scaling(n_datasets=3, obs_per_dataset=600, seed=4)
    data = sim.data
    mapping = map_to_asu(data.miller_index, data.space_group)
    model = PhysicalModel(data, ModelOptions(absorption_correction=True))
    weight = 1.0 / data.intensities.variance_prf
    target = ScalingTarget(model, mapping.group, len(mapping.unique_asu_index), data.intensities.intensity_prf, weight)
    rng = np.random.default_rng(0)
    p = model.initial_parameters() + rng.normal(0, 0.05, model.n_parameters)
    return model, target, p


def test_model_layout_and_restraints(small_problem):
    model, _, _ = small_problem
    assert model.n_parameters == 3 * (11 + 9 + 24)
    layout = model.layouts[0]
    assert model.restraint_weights[layout.decay_slice] == pytest.approx(0.1)
    assert model.restraint_weights[layout.absorption_slice] == pytest.approx(5e5)
    assert np.all(model.restraint_weights[layout.scale_slice] == 0)


def test_target_gradient_is_exact(small_problem):
    """∂Φ/∂Ĩ = 0 makes the fixed-Ĩ gradient the total one; check against central differences."""
    _, target, p = small_problem
    _, gradient = target.value_and_gradient(p)
    rng = np.random.default_rng(1)
    for k in rng.choice(len(p), 12, replace=False):
        h = 1e-6 * max(1.0, abs(p[k]))
        up, down = p.copy(), p.copy()
        up[k] += h
        down[k] -= h
        numeric = (target.value_and_gradient(up)[0] - target.value_and_gradient(down)[0]) / (2 * h)
        assert gradient[k] == pytest.approx(numeric, rel=2e-4, abs=1e-3 * max(1.0, np.abs(gradient).max() * 1e-6))


def test_normal_matrix_equals_jacobian_of_residuals(small_problem):
    """The sparse assembly of JᵀJ (with dĨ/dp) equals JᵀJ from a finite-difference Jacobian."""
    model, target, p = small_problem

    def residuals(q):
        g = model.inverse_scale(q)
        r = np.sqrt(target.weight) * (target.intensity - g * target.best_estimates(g)[target.group])
        return np.concatenate([r, np.sqrt(model.restraint_weights) * q])

    columns = np.r_[0:5, 11:14, 20:23]
    jac = np.empty((len(residuals(p)), len(columns)))
    for j, k in enumerate(columns):
        h = 1e-6
        up, down = p.copy(), p.copy()
        up[k] += h
        down[k] -= h
        jac[:, j] = (residuals(up) - residuals(down)) / (2 * h)
    normal, jtr, value = target.normal_equations(p)
    assert np.allclose(normal[np.ix_(columns, columns)], jac.T @ jac, rtol=1e-4, atol=1e-6 * np.abs(jac.T @ jac).max())
    assert np.allclose(jtr[columns], jac.T @ residuals(p), rtol=1e-4, atol=1e-6 * np.abs(jtr).max())
    assert value == pytest.approx(np.sum(residuals(p) ** 2))


def test_kb_model_for_narrow_wedges_recovers_one_scale_and_b_per_crystal():
    sim = simulate_scaling(n_datasets=4, n_images=5, width_deg=0.1, obs_per_dataset=1500, drift=False, seed=3)
    data = sim.data
    model = PhysicalModel(data, ModelOptions())
    assert model.n_parameters == 4 * 2  # wedge 0.5° < 1°: KB
    assert PhysicalModel(data, ModelOptions(model="physical")).n_parameters == 4 * (2 + 2)
    mapping = map_to_asu(data.miller_index, data.space_group)
    target = ScalingTarget(model, mapping.group, len(mapping.unique_asu_index), data.intensities.intensity_prf,
                           1.0 / data.intensities.variance_prf)
    from algorithms.scaling.target import minimise_lbfgs
    p = minimise_lbfgs(target, model.initial_parameters())
    g = model.inverse_scale(p)
    assert np.ptp(g[data.dataset == 0] / np.exp(p[1] / (2 * data.d[data.dataset == 0] ** 2))) < 1e-12  # constant K
    ratio = np.log(g / sim.true_g)
    design = np.stack([np.ones_like(ratio), 1 / (2 * data.d**2)], axis=1)
    residual = ratio - design @ np.linalg.lstsq(design, ratio, rcond=None)[0]
    assert np.std(residual) < 0.01  # relative K and B of the four crystals recovered
