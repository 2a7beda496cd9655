"""FAST-MCD, Tukey fences and the Gaussian smoother against known distributions."""
import numpy as np
import pytest

from algorithms.refinement.outliers import fast_mcd, mcd_outliers, reject_outliers, tukey_outliers
from algorithms.refinement.smoother import GaussianSmoother

COVARIANCE = np.array([[4.0, 1.2, 0.0], [1.2, 1.0, -0.3], [0.0, -0.3, 0.25]])


def _contaminated(n_clean: int, n_bad: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    clean = rng.multivariate_normal([1.0, -2.0, 0.5], COVARIANCE, size=n_clean)
    bad = rng.multivariate_normal([12.0, 6.0, -4.0], 0.5 * np.eye(3), size=n_bad)
    X = np.concatenate([clean, bad])
    truth = np.zeros(len(X), bool)
    truth[n_clean:] = True
    return X, truth


@pytest.mark.parametrize("n_clean", [250, 1800])  # one group, and the sub-group path (n ≥ 600)
def test_fast_mcd_is_robust_to_a_cluster_of_outliers(n_clean):
    X, truth = _contaminated(n_clean, n_clean // 5)
    mean, cov, d2 = fast_mcd(X)
    assert np.allclose(mean, [1.0, -2.0, 0.5], atol=0.35)
    assert np.allclose(cov, COVARIANCE, atol=0.25 * np.abs(COVARIANCE).max())
    flagged = mcd_outliers(X)
    assert flagged[truth].all()
    assert flagged[~truth].mean() < 0.06  # ~2.5 % expected beyond χ²₃(0.975)


def test_mcd_is_reproducible():
    X, _ = _contaminated(300, 30, seed=4)
    assert np.array_equal(mcd_outliers(X), mcd_outliers(X))


def test_tukey_fences():
    x = np.zeros((9, 1))
    x[:, 0] = [1, 2, 3, 4, 5, 6, 7, 8, 30]  # Q1 3, Q3 7, IQR 4 → upper fence 13
    assert tukey_outliers(x).tolist() == [False] * 8 + [True]


def test_small_blocks_are_rejected_whole():
    rng = np.random.default_rng(1)
    residuals = rng.normal(size=(60, 3))
    phi = np.radians(np.concatenate([np.linspace(0, 17, 45), np.linspace(19, 40, 15)]))
    # 40° → two blocks of 20°: the second has 15 < 20 reflections
    flagged = reject_outliers(residuals, phi, "tukey")
    second = np.degrees(phi) >= 20
    assert flagged[second].all() and flagged[~second].mean() < 0.1
    assert not reject_outliers(residuals, phi, "null").any()


@pytest.mark.parametrize("range_deg, n_values, positions, sigma", [
    (65.9, 2, [0, 1], 0.65),  # MyD88: one interval
    (72.0, 3, [0, 1, 2], 0.70),
    (180.0, 7, [-0.5, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5], 0.70),
])
def test_gaussian_smoother(range_deg, n_values, positions, sigma):
    smoother = GaussianSmoother((0, 72), range_deg, 36.0)
    assert smoother.num_values == n_values
    assert np.allclose(smoother.positions, positions)
    assert smoother.sigma == pytest.approx(sigma)
    t = np.linspace(0, 72, 50)
    w = smoother.weights(t)
    assert np.allclose(w.sum(axis=1), 1.0)
    assert np.all((w > 0).sum(axis=1) == min(3, n_values))  # the naverage nearest values
    # a parameter equal at every smoother point is constant along the scan
    assert np.allclose(w @ np.full(n_values, 2.5), 2.5)
    # at the first point the first value dominates: weights exp(−(d/σ)²)
    z = 0.0
    expected = np.exp(-(((z - smoother.positions) / sigma) ** 2))
    nearest = np.argsort(np.abs(z - smoother.positions))[: min(3, n_values)]
    e = np.zeros(n_values)
    e[nearest] = expected[nearest]
    assert np.allclose(smoother.weights([0.0])[0], e / e.sum())
