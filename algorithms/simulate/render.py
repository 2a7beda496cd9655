"""Images from observations: Gaussian spots, inelastic + flat background, Poisson counts and
deliberate corruption.

The spot kernel adds each observation's expected counts on each image it covers over a box of
±5σ around its position, the Gaussian sampled at pixel centres (sub-sampled for spots narrower
than ~1 px, so that the sum over the box is the spot's counts to < 10⁻⁴ and the centroid is
unbiased). Background around the beam follows the radial fall-off of inelastic scattering seen
in real Timepix ED images (≈ (1 + r/r₀)^−1.8, measured on the cRED lysozyme frames), on a flat
floor. Counts are Poisson draws of the expected image.
"""
from __future__ import annotations

import math

import numba
import numpy as np

from algorithms.simulate.observations import Observations
from algorithms.simulate.spec import SimulationSpec

BOX_SIGMAS = 5.0  # the Gaussian beyond holds < 10⁻⁵
STREAK_COUNTS = 400.0  # counts per pixel added along a corrupting streak
STREAK_HALF_WIDTH_PX = 1.5
MAX_COUNT = 65535


@numba.njit(cache=True, nogil=True)
def add_gaussian_spots(images, x, y, covariance, first_image, offsets, counts):
    """Add spots into ``images`` (n_images, n_slow, n_fast) in place.

    Observation i sits at (x[i], y[i]) px with covariance (xx, xy, yy); its counts on image
    ``first_image[i] + k`` (0-based; may lie outside the stack, then skipped) are
    ``counts[offsets[i] + k]``.
    """
    n_images, n_slow, n_fast = images.shape
    for i in range(len(x)):
        cxx, cxy, cyy = covariance[i, 0], covariance[i, 1], covariance[i, 2]
        det = cxx * cyy - cxy * cxy
        if det <= 0.0:
            continue
        ixx, ixy, iyy = cyy / det, -cxy / det, cxx / det
        x0 = max(int(math.floor(x[i] - BOX_SIGMAS * math.sqrt(cxx))), 0)
        x1 = min(int(math.floor(x[i] + BOX_SIGMAS * math.sqrt(cxx))) + 1, n_fast)
        y0 = max(int(math.floor(y[i] - BOX_SIGMAS * math.sqrt(cyy))), 0)
        y1 = min(int(math.floor(y[i] + BOX_SIGMAS * math.sqrt(cyy))) + 1, n_slow)
        if x0 >= x1 or y0 >= y1:
            continue
        # smallest standard deviation → sub-samples per pixel edge (aliasing error ~exp(−2π²σ²n²))
        smallest_var = 0.5 * (cxx + cyy) - math.sqrt(0.25 * (cxx - cyy) ** 2 + cxy * cxy)
        n_sub = min(8, max(1, int(math.ceil(0.8 / math.sqrt(max(smallest_var, 1e-6))))))
        norm = 1.0 / (2.0 * math.pi * math.sqrt(det) * n_sub * n_sub)
        weights = np.zeros((y1 - y0, x1 - x0))
        for iy in range(y0, y1):
            for ix in range(x0, x1):
                total = 0.0
                for sy in range(n_sub):
                    dy = iy + (sy + 0.5) / n_sub - y[i]
                    for sx in range(n_sub):
                        dx = ix + (sx + 0.5) / n_sub - x[i]
                        total += math.exp(-0.5 * (ixx * dx * dx + 2.0 * ixy * dx * dy + iyy * dy * dy))
                weights[iy - y0, ix - x0] = total * norm
        for k in range(offsets[i], offsets[i + 1]):
            image = first_image[i] + k - offsets[i]
            if image < 0 or image >= n_images:
                continue
            c = counts[k]
            for iy in range(y0, y1):
                for ix in range(x0, x1):
                    images[image, iy, ix] += c * weights[iy - y0, ix - x0]


def expected_spot_images(observations: Observations, n_images: int, image_size: tuple[int, int]) -> np.ndarray:
    """Expected spot counts only, float64 (n_images, n_slow, n_fast)."""
    n_fast, n_slow = image_size
    images = np.zeros((n_images, n_slow, n_fast))
    add_gaussian_spots(
        images,
        np.ascontiguousarray(observations.xyz_px[:, 0]),
        np.ascontiguousarray(observations.xyz_px[:, 1]),
        np.ascontiguousarray(observations.spot_covariance_px),
        (observations.partial_first_image - 1).astype(np.int64),
        observations.partial_offsets.astype(np.int64),
        observations.counts_per_image(),
    )
    return images


def background_image(spec: SimulationSpec, beam_centre_px: tuple[float, float]) -> np.ndarray:
    """Expected background per pixel per image: flat + inelastic peak around the beam."""
    n_fast, n_slow = spec.image_size
    y, x = np.mgrid[0:n_slow, 0:n_fast] + 0.5
    r = np.hypot(x - beam_centre_px[0], y - beam_centre_px[1])
    return spec.background_flat + spec.inelastic_peak * (1.0 + r / spec.inelastic_radius_px) ** (-spec.inelastic_power)


def _streak(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A bright straight line through a random point of the central half, at a random angle."""
    n_slow, n_fast = shape
    y, x = np.mgrid[0:n_slow, 0:n_fast] + 0.5
    cx, cy = rng.uniform(0.25, 0.75) * n_fast, rng.uniform(0.25, 0.75) * n_slow
    angle = rng.uniform(0.0, np.pi)
    distance = np.abs((x - cx) * np.sin(angle) - (y - cy) * np.cos(angle))
    return np.where(distance <= STREAK_HALF_WIDTH_PX, STREAK_COUNTS, 0.0)


@numba.njit(cache=True, nogil=True)
def poisson_counts(expected, seed):
    """Poisson draws of an expected image, clipped to the detector's counting range.

    numba's generator is per thread; seeding it here, per image, makes the draw independent
    of which worker thread runs it.
    """
    np.random.seed(seed)
    out = np.empty(expected.shape, np.uint16)
    flat_in, flat_out = expected.ravel(), out.ravel()
    for i in range(flat_in.size):
        flat_out[i] = min(np.random.poisson(max(flat_in[i], 0.0)), MAX_COUNT)
    return out


def finish_images(
    spots: np.ndarray,
    background: np.ndarray,
    corrupted_images: dict,
    poisson: bool,
    rng: np.random.Generator,
) -> np.ndarray:
    """Background + spots, Poisson counts (if asked) and corruption, image by image.

    Corruption kinds (1-based image numbers in ``corrupted_images``): ``noise`` — the spots are
    missing (background only); ``scrambled`` — the pixels are randomly permuted; ``streak`` — a
    bright line crosses the image. Returns uint16 counts with ``poisson``, else float64
    expected values (no rounding, for exact tests).
    """
    out = np.empty(spots.shape, dtype=np.uint16 if poisson else np.float64)
    image_seeds = rng.integers(0, 2**31 - 1, size=spots.shape[0])
    for index in range(spots.shape[0]):  # one whole image at a time
        kind = corrupted_images.get(index + 1)
        expected = background if kind == "noise" else background + spots[index]
        if kind == "streak":
            expected = expected + _streak(expected.shape, rng)
        image = poisson_counts(expected, image_seeds[index]) if poisson else expected
        if kind == "scrambled":
            image = rng.permutation(image.ravel()).reshape(image.shape)
        out[index] = image
    return out
