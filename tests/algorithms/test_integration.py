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


def _fit(values, use, ux, uy, uz, n_params, shape=None):
    ex, ey, ez = np.empty(len(ux)), np.empty(len(uy)), np.empty(len(uz))
    beta, information = np.zeros(4), np.zeros((4, 4))
    root_shape = np.ones(len(values)) if shape is None else np.sqrt(shape)
    iterations = kernels.robust_loglinear_background((values / root_shape).astype(np.float32), use, root_shape, ux, uy,
                                                     uz, n_params, 1.345, ex, ey, ez, beta, information)
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


def test_a_known_shape_lets_the_glm_follow_a_curved_background():
    """Near the beam the background falls as a power of the radius: across a shoebox it halves,
    with a curvature no log-linear model has. Given the shape S (the image's ring means), the
    GLM μ = S·exp(β·u) recovers β and the level under the foreground; without it the level
    there, interpolated from the background around, is biased."""
    rng = np.random.default_rng(2)
    nx, ny, nz = 24, 24, 6
    bz, by, bx = (a.ravel() for a in np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij"))
    ux, uy, uz = (kernels.box_coordinates(m) for m in (nx, ny, nz))
    radius = np.hypot(bx + 0.5 + 6.0, by + 0.5 - 12.0)  # the beam 6 px left of the box
    shape = 1800.0 * (1.0 + radius / 20.0) ** -1.8
    true = np.array([0.05, 0.0, 0.02, -0.03])
    mu = shape * np.exp(true[0] + true[1] * ux[bx] + true[2] * uy[by] + true[3] * uz[bz])
    values = rng.poisson(mu).astype(np.float32)
    foreground = np.hypot(bx - 11.5, by - 11.5) < 6
    use = ~foreground
    _, beta, ex, ey, ez = _fit(values, use, ux, uy, uz, 4, shape)
    np.testing.assert_allclose(beta, true, atol=0.01)
    level = (ex[bx] * ey[by] * ez[bz] * shape)[foreground].sum()
    assert level == pytest.approx(mu[foreground].sum(), rel=0.002)
    _, _, ex, ey, ez = _fit(values, use, ux, uy, uz, 4)
    # measured: 4.5 % low, 18 000 counts a sum would gain
    assert abs((ex[bx] * ey[by] * ez[bz])[foreground].sum() / mu[foreground].sum() - 1) > 0.03


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


def _reference_frames(rng, scan, n=300, sigma_m_deg=1.0, n_sigma=3.0):
    """Rocking curves of ``n`` references (random centres and ζ) recorded frame by frame with
    Poisson noise: the predicted columns and ref_frames that integration gives the check."""
    from scipy.special import erf

    phi_c = np.radians(rng.uniform(scan.oscillation[0] + 5, scan.oscillation[0] + scan.num_images * scan.oscillation[1] - 5, n))
    zeta = rng.uniform(0.3, 1.0, n) * rng.choice([-1, 1], n)
    half = np.radians(n_sigma * sigma_m_deg) / np.abs(zeta)
    z0 = np.floor(scan.array_index_from_angle(np.degrees(phi_c - half))).astype(int)
    z1 = np.ceil(scan.array_index_from_angle(np.degrees(phi_c + half))).astype(int)
    width = int((z1 - z0).max())
    intensity = rng.uniform(2000, 20000, n)
    frames = np.zeros((n, width))
    k = 1.0 / (math.sqrt(2) * math.radians(sigma_m_deg))
    for f in range(width):
        a = np.radians(scan.angle_from_array_index(z0 + f))
        b = np.radians(scan.angle_from_array_index(z0 + f + 1))
        mass = 0.5 * np.abs(erf(zeta * (b - phi_c) * k) - erf(zeta * (a - phi_c) * k))
        frames[:, f] = np.where(z0 + f < z1, rng.poisson(intensity * mass) + rng.normal(0, 30, n), 0.0)
    bbox = np.zeros((n, 6), int)
    bbox[:, 4], bbox[:, 5] = z0, z1
    xyzcal = np.zeros((n, 3))
    xyzcal[:, 2] = phi_c
    return {"bbox": bbox, "zeta": zeta, "xyzcal.mm": xyzcal}, frames


def test_images_whose_reference_signal_is_foreign_are_found():
    """A scrambled image puts foreign counts into every box that spans it, one without
    diffraction takes a reference's share away; clean images, whose references follow their
    rocking curves, are never flagged."""
    from algorithms.geometry.models import Scan
    from algorithms.integration.integrate import images_with_foreign_signal

    rng = np.random.default_rng(4)
    scan = Scan((1, 60), (0.0, 0.9))
    predicted, frames = _reference_frames(rng, scan)
    rows = np.arange(len(frames))
    clean = images_with_foreign_signal(scan, predicted, {"ref_frames": frames}, rows, 1.0)
    assert len(clean) == 0
    bbox = predicted["bbox"]
    corrupted = frames.copy()
    for image, junk in ((20, "scrambled"), (41, "blank")):
        on = (bbox[:, 4] <= image) & (bbox[:, 5] > image)
        column = image - bbox[on, 4]
        if junk == "scrambled":  # background-level pixels from far away, with a few bright ones
            corrupted[on, column] = rng.exponential(2000.0, on.sum())
        else:
            corrupted[on, column] = rng.normal(0, 30, on.sum())
    found = images_with_foreign_signal(scan, predicted, {"ref_frames": corrupted}, rows, 1.0)
    np.testing.assert_array_equal(found, [20, 41])
