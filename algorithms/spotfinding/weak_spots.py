"""Weak spots spread over several images: a 3D matched filter.

Electron-diffraction rocking curves spread a reflection over 6–14 images and its spot over a
few dozen pixels of each: one whose summed I/σ is 5 has I/σ ≈ 2 on its best image and well
under 1 per pixel, below any per-pixel, per-image test (DIALS' dispersion algorithms). The
optimal statistic for a spot of known profile p on a Poisson background b is its weighted sum
Σ p·c (North 1963, RCA Lab. Tech. Rep. PTR-6C; the matched filter): here a Gaussian of
``sigma_px`` in x and y and ``sigma_images`` in z, truncated at ±2σ, applied separably. For
each voxel of image z the filtered counts F are compared with what the background alone gives,
b·Σp, in units of its Poisson standard deviation √(g·b·Σp²) (g the gain); b is the mean count
per voxel over a (2W+1)² window of the images the filter spans, its brightest pixels (those
3σ above a first estimate: spot cores) left out. A pixel is strong if that statistic reaches
``sigma_strong`` and half the largest within the filter's half-length around it (a footprint
the size of the filtered spot however bright, so that neighbours stay apart), and its own counts
over those images are not below the background.

:func:`weak_spot_pixels_into` gives one image's strong pixels; labelling.py labels them in 3D;
:func:`segment_by_prominence` splits each component at the significant peaks of the statistic
(the smoothing joins reflections that follow each other on the same pixels a few images apart),
and spots.py keeps the segments no per-pixel strong pixel belongs to or touches: bright spots
keep the compact footprints of DIALS' test, the filter only adds what that test cannot see.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

BRIGHT_SIGMAS = 3.0  # pixels this far above the first background estimate leave the second


@dataclass(frozen=True)
class WeakSpotParameters:
    """``spotfinder.threshold.weak_spots.*``: the filter's Gaussian (σ in pixels and images), the
    background window's half-width (pixels), the threshold (σ of the filtered counts) and the
    prominence a peak needs to be a spot of its own (:func:`segment_by_prominence`)."""

    sigma_px: float = 2.0
    sigma_images: float = 1.0
    background_half_width: int = 10
    sigma_strong: float = 5.0
    min_prominence: float = 1.0
    relative_prominence: float = 0.1

    def __post_init__(self):
        if self.sigma_px <= 0 or self.sigma_images <= 0:
            raise ValueError("the filter's sigma_px and sigma_images must be > 0")
        if self.background_half_width < 2 * self.sigma_px:
            raise ValueError(f"background_half_width {self.background_half_width} must be at least 2·sigma_px")
        if self.sigma_strong <= 0:
            raise ValueError("sigma_strong must be > 0")
        if self.min_prominence < 0 or not 0 <= self.relative_prominence < 1:
            raise ValueError("min_prominence must be ≥ 0 and relative_prominence in [0, 1)")

    @property
    def halo_images(self) -> int:
        """Images a chunk needs on each side of its own: the z filter's half-length."""
        return len(gaussian_taps(self.sigma_images)) // 2


def gaussian_taps(sigma: float) -> np.ndarray:
    """A Gaussian of ``sigma`` sampled at integer offsets −h … h, h = ⌈2σ⌉ (unnormalised: the
    statistic divides by the taps' own sums)."""
    half = max(1, int(math.ceil(2.0 * sigma)))
    offsets = np.arange(-half, half + 1)
    return np.exp(-0.5 * (offsets / sigma) ** 2)


@numba.njit(cache=True, nogil=True, inline="always")
def _box(sat, y0, y1, x0, x1):
    return sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]


@numba.njit(cache=True, nogil=True)
def _convolve_rows(image, taps, out):
    """out[y, x] = Σ_k taps[k]·image[y, x + k − h] (zero outside)."""
    ny, nx = image.shape
    h = len(taps) // 2
    for y in range(ny):
        for x in range(nx):
            s = 0.0
            for k in range(len(taps)):
                xx = x + k - h
                if 0 <= xx < nx:
                    s += taps[k] * image[y, xx]
            out[y, x] = s


@numba.njit(cache=True, nogil=True)
def _separable_xy(image, taps, scratch, out):
    """out = image convolved with ``taps`` along x, then along y (zero outside the image)."""
    _convolve_rows(image, taps, scratch)
    _convolve_rows(scratch.T, taps, out.T)


@numba.njit(cache=True, nogil=True)
def _max_along_rows(image, half, out):
    """out[y, x] = the maximum of image[y, x − half … x + half] (within the image)."""
    ny, nx = image.shape
    for y in range(ny):
        for x in range(nx):
            out[y, x] = image[y, x]
        for shift in range(-half, half + 1):
            for x in range(max(0, -shift), min(nx, nx - shift)):
                out[y, x] = max(out[y, x], image[y, x + shift])


@numba.njit(cache=True, nogil=True)
def _running_max(image, half, scratch, out):
    """out = the maximum of ``image`` over the (2·half + 1)² window around each pixel."""
    _max_along_rows(image, half, scratch)
    _max_along_rows(scratch.T, half, out.T)


@numba.njit(cache=True, nogil=True)
def _background_tables(frame_sum, frame_count, bright, sat_sum, sat_count):
    ny, nx = frame_sum.shape
    for y in range(ny):
        row_s = 0.0
        row_n = 0.0
        for x in range(nx):
            if not bright[y, x]:
                row_s += frame_sum[y, x]
                row_n += frame_count[y, x]
            sat_sum[y + 1, x + 1] = sat_sum[y, x + 1] + row_s
            sat_count[y + 1, x + 1] = sat_count[y, x + 1] + row_n


@numba.njit(cache=True, nogil=True)
def weak_spot_pixels_into(stack, z, taps_xy, taps_z, static_mask, trusted_low, trusted_high, pedestal, panel_gain,
                          gain_map, background_half_width, sigma_strong, strong, strong_list, work):
    """Strong pixels of image ``z`` of ``stack`` (n_images, slow, fast: the images the z taps
    reach that exist are used) into ``strong`` and, in raster order, ``strong_list``; returns
    their number. ``work`` is a (9, slow, fast) float64 scratch array (labelling.py keeps one per
    thread); ``work[5]`` holds the image's statistic on return."""
    n_images, ny, nx = stack.shape
    hz = len(taps_z) // 2
    filtered_z, weight_z, weight2_z, frame_sum, frame_count, scratch, filtered, weight, weight2 = (
        work[0], work[1], work[2], work[3], work[4], work[5], work[6], work[7], work[8])
    for y in range(ny):
        for x in range(nx):
            f = 0.0
            w = 0.0
            w2 = 0.0
            s = 0.0
            n = 0.0
            if static_mask[y, x]:
                for k in range(len(taps_z)):
                    zz = z + k - hz
                    if 0 <= zz < n_images:
                        raw = stack[zz, y, x]
                        if trusted_low < raw < trusted_high:
                            c = raw if pedestal == 0.0 and panel_gain == 1.0 else (raw - pedestal) / panel_gain
                            t = taps_z[k]
                            f += t * c
                            w += t
                            w2 += t * t
                            s += c
                            n += 1.0
            filtered_z[y, x] = f
            weight_z[y, x] = w
            weight2_z[y, x] = w2
            frame_sum[y, x] = s
            frame_count[y, x] = n
    _separable_xy(filtered_z, taps_xy, scratch, filtered)
    _separable_xy(weight_z, taps_xy, scratch, weight)
    _separable_xy(weight2_z, taps_xy * taps_xy, scratch, weight2)
    # the background per voxel: window means of the frame sums, twice (cores out the second time)
    bright = np.zeros((ny, nx), np.bool_)
    sat_sum = np.zeros((ny + 1, nx + 1))
    sat_count = np.zeros((ny + 1, nx + 1))
    big = background_half_width
    n_strong = 0
    statistic = work[5]  # (the scratch of the filters above is free again)
    statistic[:, :] = -np.inf
    peak = work[1]  # weight_z, no longer needed
    scratch = work[2]  # weight2_z, no longer needed
    half_width_max = len(taps_xy) // 2
    for background_pass in range(2):
        _background_tables(frame_sum, frame_count, bright, sat_sum, sat_count)
        for y in range(ny):
            oy0, oy1 = max(0, y - big), min(ny, y + big + 1)
            for x in range(nx):
                if background_pass == 1:
                    strong[y, x] = False
                if frame_count[y, x] == 0.0:
                    continue
                ox0, ox1 = max(0, x - big), min(nx, x + big + 1)
                n_window = _box(sat_count, oy0, oy1, ox0, ox1)
                if n_window < 1.0:
                    continue
                mean = _box(sat_sum, oy0, oy1, ox0, ox1) / n_window
                g = gain_map[y, x]
                own = frame_sum[y, x] - frame_count[y, x] * mean
                if background_pass == 0:
                    bright[y, x] = own > BRIGHT_SIGMAS * math.sqrt(g * max(frame_count[y, x] * mean, 1.0))
                    continue
                raw = stack[z, y, x]
                if own >= 0.0 and trusted_low < raw < trusted_high:
                    variance = g * max(mean * weight2[y, x], 1e-6)
                    statistic[y, x] = (filtered[y, x] - mean * weight[y, x]) / math.sqrt(variance)
    # a pixel is strong where the statistic reaches the threshold and half its nearby maximum: a
    # footprint the size of the filtered spot whatever its brightness, so that neighbours stay apart
    _running_max(statistic, half_width_max, scratch, peak)
    for y in range(ny):
        for x in range(nx):
            v = statistic[y, x]
            if v >= sigma_strong and v >= 0.5 * peak[y, x]:
                strong[y, x] = True
                strong_list[n_strong] = y * nx + x
                n_strong += 1
    return n_strong


@numba.njit(cache=True, nogil=True)
def _index_of(linear, target):
    """Index of ``target`` in the sorted ``linear``, −1 if absent."""
    k = np.searchsorted(linear, target)
    if k < len(linear) and linear[k] == target:
        return k
    return -1


def segment_by_prominence(z: np.ndarray, y: np.ndarray, x: np.ndarray, score: np.ndarray, n_slow: int, n_fast: int,
                          min_prominence: float, relative_prominence: float) -> tuple[np.ndarray, int]:
    """Split pixels (raster order) into one segment per significant peak of ``score``.

    The filter's smoothing joins reflections that follow each other on nearly the same pixels a
    few images apart (a lattice row crossing the Ewald sphere), and one component then has one
    centroid between them. Pixels are flooded from the highest score down (6-connectivity);
    where two segments meet, the lower one survives only if its peak rises above the meeting
    point by at least max(``min_prominence``, ``relative_prominence`` × its peak) — topological
    persistence (Edelsbrunner, Letscher & Zomorodian 2002, Discrete Comput. Geom. 28, 511), i.e.
    a watershed whose basins shallower than noise are merged. Returns each pixel's segment,
    numbered in order of first pixel, and the number of segments."""
    linear = (z.astype(np.int64) * n_slow + y) * n_fast + x
    return _segment_by_prominence(linear, x, y, score.astype(np.float64), n_slow, n_fast, float(min_prominence),
                                  float(relative_prominence))


@numba.njit(cache=True, nogil=True)
def _segment_by_prominence(linear, x, y, score, n_slow, n_fast, min_prominence, relative_prominence):
    n = len(linear)
    parent = np.arange(n)
    done = np.zeros(n, np.bool_)
    roots = np.empty(6, np.int64)
    plane = n_slow * n_fast
    for p in np.argsort(-score, kind="mergesort"):
        n_roots = 0
        for axis in range(6):
            if axis == 0 and x[p] == 0 or axis == 1 and x[p] == n_fast - 1:
                continue
            if axis == 2 and y[p] == 0 or axis == 3 and y[p] == n_slow - 1:
                continue
            step = (1, n_fast, plane)[axis // 2]
            q = _index_of(linear, linear[p] + step if axis % 2 else linear[p] - step)
            if q < 0 or not done[q]:
                continue
            r = q
            while parent[r] != r:
                parent[r] = parent[parent[r]]
                r = parent[r]
            new = True
            for k in range(n_roots):
                new &= roots[k] != r
            if new:
                roots[n_roots] = r
                n_roots += 1
        done[p] = True
        if n_roots == 0:
            continue  # a new peak: p is its own root
        highest = roots[0]
        for k in range(1, n_roots):
            if score[roots[k]] > score[highest]:
                highest = roots[k]
        for k in range(n_roots):
            r = roots[k]
            # a lower peak whose rise above this saddle is noise-sized joins the higher one
            if r != highest and score[r] - score[p] < max(min_prominence, relative_prominence * score[r]):
                parent[r] = highest
        parent[p] = highest
    label = np.full(n, -1, np.int32)
    root_label = np.full(n, -1, np.int32)
    n_labels = 0
    for i in range(n):  # segments numbered in order of their first pixel
        r = i
        while parent[r] != r:
            r = parent[r]
        if root_label[r] < 0:
            root_label[r] = n_labels
            n_labels += 1
        label[i] = root_label[r]
    return label, n_labels
