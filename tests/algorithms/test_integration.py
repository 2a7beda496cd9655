"""Integration kernels against exact ground truth: the robust GLM background, the Huber
expectations, the core-width estimate of the pooled profile and the foreground masks."""
import math

import numpy as np
import pytest
from scipy.stats import poisson

from algorithms.integration import kernels
from algorithms.integration.integrate import _core_gaussian_width


@pytest.mark.parametrize("mu", [0.7, 4.0, 22.0, 90.0])
def test_huber_expectations_match_direct_sums(mu):
    c = 1.345
    j = np.arange(0, int(mu + 40 * math.sqrt(mu) + 40))
    r = (j - mu) / math.sqrt(mu)
    psi = np.clip(r, -c, c)
    p = poisson.pmf(j, mu)
    e_psi, e_psi_r = kernels.huber_expectations(mu, c)
    assert e_psi == pytest.approx(np.sum(p * psi), abs=1e-10)
    assert e_psi_r == pytest.approx(np.sum(p * psi * r), abs=1e-10)


def _background_sample(rng, beta, n=4000, shape=(32, 32, 8)):
    """Poisson counts on every voxel of a box (flat, (z, y, x) order), ``n`` of them, at random,
    marked as background; the box indices (bx, by, bz) of every voxel and the axis coordinates."""
    nx, ny, nz = shape
    bz, by, bx = (a.ravel() for a in np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij"))
    ux, uy, uz = (kernels.box_coordinates(m) for m in (nx, ny, nz))
    mu = np.exp(beta[0] + beta[1] * ux[bx] + beta[2] * uy[by] + beta[3] * uz[bz])
    use = np.zeros(nx * ny * nz, bool)
    use[rng.choice(nx * ny * nz, n, replace=False)] = True
    return rng.poisson(mu).astype(np.float32), use, bx, by, bz, ux, uy, uz, mu


def _fit(values, use, ux, uy, uz, n_params):
    ex, ey, ez = np.empty(len(ux)), np.empty(len(uy)), np.empty(len(uz))
    beta, information = np.zeros(4), np.zeros((4, 4))
    iterations = kernels.robust_loglinear_background(values, use, ux, uy, uz, n_params, 1.345, ex, ey, ez, beta,
                                                     information)
    return iterations, beta, ex, ey, ez


def test_loglinear_background_recovers_a_gradient_and_ignores_a_peak():
    rng = np.random.default_rng(3)
    true = np.array([np.log(20.0), 0.15, -0.08, 0.02])
    values, use, bx, by, bz, ux, uy, uz, mu = _background_sample(rng, true)
    values[np.flatnonzero(use)[:40]] += 300.0  # a neighbour's peak in the background: Huber's ψ bounds its pull
    values[~use] = 5000.0  # voxels not marked (a foreground) play no part
    iterations, beta, ex, ey, ez = _fit(values, use, ux, uy, uz, 4)
    assert 1 <= iterations < 20
    # standard errors of β for 4000 voxels at μ≈20 are ≈ 0.0035 (level) and ≈ 0.006 (slopes)
    np.testing.assert_allclose(beta, true, atol=0.025)
    # μ at every voxel is the product of the per-axis tables
    np.testing.assert_allclose(ex[bx] * ey[by] * ez[bz], np.exp(beta[0] + beta[1] * ux[bx] + beta[2] * uy[by]
                                                                  + beta[3] * uz[bz]), rtol=1e-12)


def test_loglinear_background_solves_the_robust_estimating_equations():
    """At the returned β the Cantoni–Ronchetti equations Σ (ψ_c(r) − E[ψ_c])·√μ·x = 0 hold over
    the marked voxels (E at the mean level), summed here voxel by voxel."""
    rng = np.random.default_rng(11)
    values, use, bx, by, bz, ux, uy, uz, _ = _background_sample(rng, np.array([np.log(8.0), 0.2, 0.1, -0.05]))
    values[np.flatnonzero(use)[:30]] += 100.0
    _, beta, *_ = _fit(values, use, ux, uy, uz, 4)
    x = np.column_stack([np.ones(use.sum()), ux[bx[use]], uy[by[use]], uz[bz[use]]])
    mu = np.exp(x @ beta)
    e_psi, _ = kernels.huber_expectations(math.exp(beta[0]), 1.345)
    psi = np.clip((values[use] - mu) / np.sqrt(mu), -1.345, 1.345)
    score = ((psi - e_psi) * np.sqrt(mu)) @ x
    information = (x * mu[:, None]).T @ x
    # the last Fisher step was < 1e-4 in every β: the score is that small in units of the information
    assert np.all(np.abs(np.linalg.solve(information, score)) < 1e-4)


def test_constant_background_is_an_unbiased_robust_poisson_mean():
    rng = np.random.default_rng(5)
    estimates = []
    for _ in range(200):
        values, use, _, _, _, ux, uy, uz, _ = _background_sample(rng, np.array([np.log(3.0), 0, 0, 0]), n=500)
        _, beta, *_ = _fit(values, use, ux, uy, uz, 1)
        estimates.append(np.exp(beta[0]))
    # Cantoni–Ronchetti's correction makes the Huber estimate consistent for Poisson data
    assert np.mean(estimates) == pytest.approx(3.0, abs=4 * np.std(estimates) / np.sqrt(200))


def test_constant_model_on_a_gradient_is_biased_where_the_sample_is_uneven():
    """Why loglinear3d: background voxels only on one side of a gradient bias a constant."""
    rng = np.random.default_rng(7)
    true = np.array([np.log(20.0), 0.3, 0.0, 0.0])
    values, use, bx, by, bz, ux, uy, uz, _ = _background_sample(rng, true, n=8000)
    one_side = use & (ux[bx] > 0.2)
    _, constant, *_ = _fit(values, one_side, ux, uy, uz, 1)
    _, loglinear, *_ = _fit(values, one_side, ux, uy, uz, 4)
    centre = 20.0
    assert abs(np.exp(constant[0]) - centre) > 2.0
    assert np.exp(loglinear[0]) == pytest.approx(centre, rel=0.02)


@pytest.mark.parametrize("sigma_cells", [1.0, 1.222, 1.5])
def test_core_gaussian_width_of_a_cell_averaged_gaussian(sigma_cells):
    step = 1e-4
    sigma = sigma_cells * step
    pixel_area = (0.3 * step) ** 2
    # cell averages of a Gaussian blurred by a pixel (variance w²/12), sampled finely
    blurred = math.sqrt(sigma**2 + pixel_area / 12)
    fine = np.linspace(-0.5, 0.5, 41)[:-1] + 1 / 80
    c = (np.arange(kernels.GRID) - kernels.GRID_HALF)
    u = (c[:, None] + fine[None, :]).ravel() * step
    g1 = np.exp(-0.5 * (u / blurred) ** 2).reshape(kernels.GRID, -1).mean(axis=1)
    density = g1[:, None] * g1[None, :]
    # heavy tails beyond the core do not move the estimate
    r2 = (c[:, None] ** 2 + c[None, :] ** 2) * step**2
    density = density + 0.002 * np.exp(-np.sqrt(r2) / (3 * sigma))
    estimate = _core_gaussian_width(density, step, sigma, pixel_area)
    assert estimate == pytest.approx(sigma, rel=0.03)


def test_foreground_masks_are_the_pixels_with_a_corner_inside_the_ellipse():
    # a detector looking straight down the beam: (c1, c2) ≈ angles, so the foreground of a
    # reflection at the origin with e1 = x, e2 = y is a disc of radius δb·distance in mm
    distance = 100.0
    origin = np.array([-1.0, -1.0, distance])  # pixel (0, 0) corner; the beam hits (1 mm, 1 mm)
    fast, slow = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    pixel = 0.05
    bbox = np.array([[0, 40, 0, 40, 0, 3]], dtype=np.int64)
    e1, e2 = np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]])
    delta_b = 0.3 / distance  # 0.3 mm = 6 px
    masks, offsets = kernels.foreground_masks(bbox, e1, e2, origin, fast, slow, pixel, pixel, delta_b)
    mask = masks[offsets[0]:offsets[1]].reshape(40, 40)
    corners = (np.arange(41) * pixel - 1.0)
    cx, cy = np.meshgrid(corners, corners)
    inside = (cx**2 + cy**2) / (cx**2 + cy**2 + distance**2) <= delta_b**2
    expected = inside[:-1, :-1] | inside[1:, :-1] | inside[:-1, 1:] | inside[1:, 1:]
    np.testing.assert_array_equal(mask, expected)
    count = kernels.paint_foreground((3, 40, 40), 0, bbox, masks, offsets)
    assert np.array_equal(count[1] > 0, expected) and count.max() == 1
