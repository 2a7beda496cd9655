"""Plain numpy/scipy.ndimage version of the same spot finder, for tests and benchmarks.

Written the obvious way — window sums by separable correlation, erosion by a chessboard
distance transform, 3D labelling by ``scipy.ndimage.label``, per-spot sums by ``np.bincount`` —
so that it shares no code with the numba kernels it checks (threshold.py, labelling.py,
centroids.py). Window sums are exact for integer counts (float64 sums of integers).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from algorithms.spotfinding.centroids import PIXEL_VARIANCE
from algorithms.spotfinding.threshold import DispersionParameters


def _window_sum(values: np.ndarray, half_x: int, half_y: int) -> np.ndarray:
    """Sums over the (2·half_y+1)×(2·half_x+1) window, clipped at the image edge."""
    ones_y = np.ones(2 * half_y + 1)
    ones_x = np.ones(2 * half_x + 1)
    rows = ndimage.correlate1d(values, ones_y, axis=0, mode="constant", cval=0.0)
    return ndimage.correlate1d(rows, ones_x, axis=1, mode="constant", cval=0.0)


def reference_threshold(image: np.ndarray, mask: np.ndarray, parameters: DispersionParameters = DispersionParameters(),
                        trusted_range: tuple[float, float] = (-np.inf, np.inf)) -> np.ndarray:
    """Strong-pixel mask of one image (gain map = the scalar gain, pedestal 0, panel gain 1)."""
    c = np.asarray(image, dtype=np.float64)
    valid = np.asarray(mask, bool) & (c > trusted_range[0]) & (c < trusted_range[1])
    used = valid & (c < 2.0**24)
    ky, kx = parameters.kernel_size
    g = parameters.gain_value
    n = _window_sum(used.astype(np.float64), kx, ky)
    s = _window_sum(np.where(used, c, 0.0), kx, ky)
    q = _window_sum(np.where(used, c * c, 0.0), kx, ky)
    with np.errstate(invalid="ignore", divide="ignore"):
        dispersed = (n * q - s * s - g * s * (n - 1)) > g * s * parameters.sigma_background * np.sqrt(2.0 * (n - 1))
    statistics_ok = (n >= parameters.min_local_count) & (s >= 0)
    dispersed &= valid & statistics_ok
    above = c > parameters.global_threshold
    if not parameters.extended:
        with np.errstate(invalid="ignore"):
            peak = n * c - s > parameters.sigma_strong * np.sqrt(g * s * n)
        return dispersed & peak & above
    # masked pixels are not dispersed: they erode like background (DIALS 3.5)
    distance = ndimage.distance_transform_cdt(dispersed, metric="chessboard")
    core = dispersed & (distance >= min(kx, ky))
    background = used & ~core
    nb = _window_sum(background.astype(np.float64), kx + 2, ky + 2)
    sb = _window_sum(np.where(background, c, 0.0), kx + 2, ky + 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(nb >= 2, sb / nb, 0.0)
    return valid & core & above & (sb >= 0) & (c >= mean + parameters.sigma_strong * np.sqrt(g * mean))


def reference_spots(images: np.ndarray, first_z: int, mask: np.ndarray,
                    parameters: DispersionParameters = DispersionParameters(),
                    trusted_range: tuple[float, float] = (-np.inf, np.inf)) -> dict:
    """All spots of a stack (n_images, slow, fast): labels in raster order of first pixels.

    Returns a dict of arrays: n_pixels, bbox, centroid, centroid_variance, intensity, peak,
    plus strong_per_image.
    """
    strong = np.stack([reference_threshold(im, mask, parameters, trusted_range) for im in images])
    labels, n = ndimage.label(strong, structure=ndimage.generate_binary_structure(3, 1))
    z, y, x = np.nonzero(strong)  # raster order
    lab = labels[z, y, x] - 1
    # ndimage numbers components in raster order of their first pixel, as the numba labeller
    w = images[z, y, x].astype(np.float64)
    coords = np.stack([x + 0.5, y + 0.5, z + first_z + 0.5], axis=1)
    sum_w = np.bincount(lab, w, n)
    sum_w2 = np.bincount(lab, w * w, n)
    centroid = np.stack([np.bincount(lab, w * coords[:, a], n) for a in range(3)], axis=1) / sum_w[:, None]
    spread = np.stack([np.bincount(lab, w * (coords[:, a] - centroid[lab, a]) ** 2, n) for a in range(3)], axis=1)
    denominator = sum_w**2 - sum_w2
    with np.errstate(invalid="ignore", divide="ignore"):
        unbiased = np.where(denominator[:, None] > 0, spread * sum_w[:, None] / denominator[:, None], 0.0)
    variance = unbiased / sum_w[:, None] + PIXEL_VARIANCE
    slices = ndimage.find_objects(labels)
    bbox = np.array([[s[2].start, s[2].stop, s[1].start, s[1].stop, s[0].start + first_z, s[0].stop + first_z] for s in slices], int).reshape(-1, 6)
    single = bbox[:, 5] - bbox[:, 4] == 1
    centroid[single, 2] = bbox[single, 4] + 0.5
    variance[single, 2] = PIXEL_VARIANCE
    # brightest voxel, the first in raster order on ties (pixels are in raster order already)
    first_brightest = np.lexsort((np.arange(len(w)), -w, lab))
    starts = np.searchsorted(lab[first_brightest], np.arange(n))
    at = first_brightest[starts]
    peak = np.stack([x[at], y[at], z[at] + first_z], axis=1)
    return {
        "n_pixels": np.bincount(lab, minlength=n),
        "bbox": bbox,
        "centroid": centroid,
        "centroid_variance": variance,
        "intensity": sum_w,
        "peak": peak,
        "strong_per_image": strong.reshape(len(images), -1).sum(axis=1),
    }
