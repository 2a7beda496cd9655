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
over those images are not below the background. Given each pixel's ring about the beam, each
ring's sigma-clipped mean statistic is first taken off its pixels: a background feature with the
beam's symmetry (a diffuse solvent ring 10–15 pixels wide, the curvature of the inelastic peak)
is higher at its crest than the window mean and lower on its flanks, and would otherwise put
spots all along the crest and hide them on the flanks (the ring-wise background of DIALS'
``radial_profile`` threshold serves the same end). Dividing by each ring's spread as well took
too many real reflections with the false ones (cRED lysozyme: 1544 spots the reference cell
indexes instead of 2217).

:func:`weak_spot_pixels_into` gives one image's strong pixels; labelling.py labels them in 3D;
:func:`segment_by_prominence` splits each component at the significant peaks of the statistic
(the smoothing joins reflections that follow each other on the same pixels a few images apart);
spots.py makes the segments the spots, and keeps the per-pixel test's spots where the filter has
none: a segment holds a reflection's whole rocking curve, where a per-image test keeps the
images on which it stands out (pieces of a reflection near the rotation axis, one component for
a lattice row's neighbours).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

BRIGHT_SIGMAS = 3.0  # pixels this far above the first background estimate leave the second
RING_CLIP_SIGMAS = 3.0  # pixels whose statistic is this far from their ring's mean leave the next pass
RING_MIN_PIXELS = 500  # pixels a ring's mean statistic is taken over (neighbouring rings pooled)


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
        if self.min_prominence < 0:
            raise ValueError(f"min_prominence={self.min_prominence}: give a value ≥ 0 (σ of the statistic)")
        if not 0 <= self.relative_prominence < 1:
            raise ValueError(f"relative_prominence={self.relative_prominence}: give a fraction in [0, 1)")

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


@numba.njit(cache=True, nogil=True)
def _convolve_x(image, taps, out):
    """out[y, x] = Σ_k taps[k]·image[y, x + k − h] (zero outside); inner loops run along rows
    without branches, so that they vectorise."""
    ny, nx = image.shape
    h = len(taps) // 2
    row = np.empty(nx)
    for y in range(ny):
        row[:] = 0.0  # a buffer of its own: no aliasing with image, so the loop vectorises
        for k in range(len(taps)):
            t = taps[k]
            shift = k - h
            lo, hi = max(0, -shift), min(nx, nx - shift)
            target, source = row[lo:hi], image[y, lo + shift:hi + shift]
            for i in range(hi - lo):
                target[i] += t * source[i]
        out[y, :] = row


@numba.njit(cache=True, nogil=True)
def _convolve_y(image, taps, out):
    """out[y, x] = Σ_k taps[k]·image[y + k − h, x] (zero outside), row by row (contiguous)."""
    ny, nx = image.shape
    h = len(taps) // 2
    for y in range(ny):
        for x in range(nx):
            out[y, x] = 0.0
        for k in range(max(0, h - y), min(len(taps), ny + h - y)):
            t = taps[k]
            source = y + k - h
            for x in range(nx):
                out[y, x] += t * image[source, x]


@numba.njit(cache=True, nogil=True)
def _separable_xy(image, taps, scratch, out):
    """out = image convolved with ``taps`` along x, then along y (zero outside the image)."""
    _convolve_x(image, taps, scratch)
    _convolve_y(scratch, taps, out)


@numba.njit(cache=True, nogil=True)
def _running_max(image, half, scratch, out):
    """out = the maximum of ``image`` over the (2·half + 1)² window around each pixel (within
    the image): along x, then along y, both row by row."""
    ny, nx = image.shape
    row = np.empty(nx)
    for y in range(ny):
        row[:] = image[y]
        for shift in range(-half, half + 1):
            lo, hi = max(0, -shift), min(nx, nx - shift)
            target, source = row[lo:hi], image[y, lo + shift:hi + shift]
            for i in range(hi - lo):
                target[i] = max(target[i], source[i])
        scratch[y, :] = row
    for y in range(ny):
        for x in range(nx):
            out[y, x] = scratch[y, x]
        for source in range(max(0, y - half), min(ny, y + half + 1)):
            for x in range(nx):
                out[y, x] = max(out[y, x], scratch[source, x])


@numba.njit(cache=True, nogil=True)
def static_weights_into(static_mask, taps_xy, work):
    """The filter's x-y weights of the static mask, Σp and Σp² over the usable pixels around
    each pixel, into ``work[9]`` and ``work[10]`` (once per chunk: on images whose z taps reach
    no untrusted pixel, the weights are these times the z taps' sums)."""
    ny, nx = static_mask.shape
    for y in range(ny):
        for x in range(nx):
            work[0, y, x] = 1.0 if static_mask[y, x] else 0.0
    _separable_xy(work[0], taps_xy, work[5], work[9])
    _separable_xy(work[0], taps_xy * taps_xy, work[5], work[10])


@numba.njit(cache=True, nogil=True)
def _window_sums(a, b, half, out_a, out_b):
    """out_a, out_b = the sums of ``a`` and ``b`` over the (2·half + 1)² window around each pixel
    (within the image): a running sum of rows along y, then prefix sums along x (the two arrays'
    chains interleaved, since each is a chain of dependent additions)."""
    ny, nx = a.shape
    running_a = np.zeros(nx)
    running_b = np.zeros(nx)
    for y in range(min(half, ny)):
        running_a += a[y]
        running_b += b[y]
    for y in range(ny):
        if y + half < ny:
            running_a += a[y + half]
            running_b += b[y + half]
        if y > half:
            running_a -= a[y - half - 1]
            running_b -= b[y - half - 1]
        out_a[y, :] = running_a
        out_b[y, :] = running_b
    prefix_a = np.empty(nx + 1)
    prefix_b = np.empty(nx + 1)
    prefix_a[0] = prefix_b[0] = 0.0
    for y in range(ny):
        for x in range(nx):
            prefix_a[x + 1] = prefix_a[x] + out_a[y, x]
            prefix_b[x + 1] = prefix_b[x] + out_b[y, x]
        for x in range(nx):
            hi, lo = min(x + half + 1, nx), max(x - half, 0)
            out_a[y, x] = prefix_a[hi] - prefix_a[lo]
            out_b[y, x] = prefix_b[hi] - prefix_b[lo]


@numba.njit(cache=True, nogil=True)
def _ring_mean_statistic(value, ring, n_rings):
    """Mean of the statistic over each ring's usable pixels (``value`` finite), sigma-clipped at
    RING_CLIP_SIGMAS standard deviations (at least 1) so that spots do not count, pooled with
    neighbouring rings until RING_MIN_PIXELS pixels: how far a background feature with the
    beam's symmetry (a diffuse ring, the inelastic peak's curvature), which the window mean
    cannot follow, shifts the statistic along it."""
    sums = np.zeros(n_rings)
    squares = np.zeros(n_rings)
    counts = np.zeros(n_rings)
    mean = np.zeros(n_rings)
    spread = np.full(n_rings, np.inf)
    ny, nx = value.shape
    for _ in range(3):
        sums[:] = 0.0
        squares[:] = 0.0
        counts[:] = 0.0
        for y in range(ny):
            for x in range(nx):
                k = ring[y, x]
                v = value[y, x]
                if k >= 0 and np.isfinite(v) and abs(v - mean[k]) <= RING_CLIP_SIGMAS * spread[k]:
                    sums[k] += v
                    squares[k] += v * v
                    counts[k] += 1.0
        for k in range(n_rings):
            total, total_squares, n, half = sums[k], squares[k], counts[k], 0
            while n < RING_MIN_PIXELS and (k - half > 0 or k + half < n_rings - 1):
                half += 1
                for j in (k - half, k + half):
                    if 0 <= j < n_rings:
                        total += sums[j]
                        total_squares += squares[j]
                        n += counts[j]
            if n > 1.0:
                mean[k] = total / n
                spread[k] = max(math.sqrt(max(total_squares / n - mean[k] * mean[k], 0.0)), 1.0)
            else:
                mean[k] = 0.0
                spread[k] = 1.0
    return mean


@numba.njit(cache=True, nogil=True)
def weak_spot_pixels_into(stack, z, usable_images, taps_xy, taps_z, static_mask, trusted_low, trusted_high, pedestal,
                          panel_gain, gain_map, ring, n_rings, background_half_width, sigma_strong, strong, strong_list,
                          work):
    """Strong pixels of image ``z`` of ``stack`` (n_images, slow, fast: the images the z taps
    reach that exist and are ``usable_images`` are used; corrupted ones would spoil their
    neighbours) into ``strong`` and, in raster order, ``strong_list``; returns their number.
    With ``n_rings`` > 0 (``ring``: each pixel's ring about the beam, −1 for none) each ring's
    mean statistic is taken off its pixels (:func:`_ring_mean_statistic`). ``work`` is a (13, slow,
    fast) float64 scratch array (labelling.py keeps one per thread) whose ``work[9]`` and
    ``work[10]`` hold :func:`static_weights_into`'s weights; ``work[5]`` holds the image's
    statistic on return."""
    n_images, ny, nx = stack.shape
    hz = len(taps_z) // 2
    filtered_z, weight_z, weight2_z, frame_sum, frame_count, scratch, filtered, weight, weight2 = (
        work[0], work[1], work[2], work[3], work[4], work[5], work[6], work[7], work[8])
    n_untrusted = 0  # usable pixels the z taps reach whose counts are outside the trusted range
    # row by row, taps outer, into rows of their own (work's planes may alias), selects instead of
    # short-circuit branches: the x loops vectorise
    f, w, w2, frame_s, frame_n = np.empty(nx), np.empty(nx), np.empty(nx), np.empty(nx), np.empty(nx)
    for y in range(ny):
        f[:] = 0.0
        w[:] = 0.0
        w2[:] = 0.0
        frame_s[:] = 0.0
        frame_n[:] = 0.0
        use = static_mask[y]
        for k in range(max(0, hz - z), min(len(taps_z), n_images + hz - z)):
            if not usable_images[z + k - hz]:
                continue
            t = taps_z[k]
            row = stack[z + k - hz, y]
            for x in range(nx):
                raw = row[x]
                trusted = (trusted_low < raw) & (raw < trusted_high)
                ok = use[x] & trusted
                c = (raw - pedestal) / panel_gain if ok else 0.0
                f[x] += t * c
                w[x] += t if ok else 0.0
                w2[x] += t * t if ok else 0.0
                frame_s[x] += c
                frame_n[x] += 1.0 if ok else 0.0
                n_untrusted += use[x] & (not trusted)
        filtered_z[y, :] = f
        weight_z[y, :] = w
        weight2_z[y, :] = w2
        frame_sum[y, :] = frame_s
        frame_count[y, :] = frame_n
    _separable_xy(filtered_z, taps_xy, scratch, filtered)
    z_sum = 1.0  # the weights are z_sum·weight and z_sum2·weight2
    z_sum2 = 1.0
    if n_untrusted == 0:  # the static mask's weights times the z taps' sums
        z_sum = 0.0
        z_sum2 = 0.0
        for k in range(max(0, hz - z), min(len(taps_z), n_images + hz - z)):
            if not usable_images[z + k - hz]:
                continue
            z_sum += taps_z[k]
            z_sum2 += taps_z[k] * taps_z[k]
        weight, weight2 = work[9], work[10]
    else:
        _separable_xy(weight_z, taps_xy, scratch, weight)
        _separable_xy(weight2_z, taps_xy * taps_xy, scratch, weight2)
    # the background per voxel: window means of the frame sums, twice (cores out the second time)
    masked_sum, masked_count, window_sum, window_count, statistic = work[0], work[1], work[2], work[11], work[5]
    masked_sum[:, :] = frame_sum
    masked_count[:, :] = frame_count
    for background_pass in range(2):
        _window_sums(masked_sum, masked_count, background_half_width, window_sum, window_count)
        if background_pass == 0:  # spot cores leave the second estimate
            for y in range(ny):
                for x in range(nx):
                    n_window = window_count[y, x]
                    mean = window_sum[y, x] / max(n_window, 1.0)
                    own = frame_sum[y, x] - frame_count[y, x] * mean
                    limit = BRIGHT_SIGMAS * math.sqrt(gain_map[y, x] * max(frame_count[y, x] * mean, 1.0))
                    core = (frame_count[y, x] > 0.0) & (n_window >= 1.0) & (own > limit)
                    masked_sum[y, x] = 0.0 if core else frame_sum[y, x]
                    masked_count[y, x] = 0.0 if core else frame_count[y, x]
    image = stack[z]
    every = work[12]  # the statistic of every usable pixel, for the rings' means (with rings only)
    for y in range(ny):
        for x in range(nx):
            n_window = window_count[y, x]
            mean = window_sum[y, x] / max(n_window, 1.0)
            own = frame_sum[y, x] - frame_count[y, x] * mean
            raw = image[y, x]
            usable = (frame_count[y, x] > 0.0) & (n_window >= 1.0) & (trusted_low < raw) & (raw < trusted_high)
            expected = mean * z_sum * weight[y, x]
            value = (filtered[y, x] - expected) / math.sqrt(gain_map[y, x] * max(mean * z_sum2 * weight2[y, x], 1e-6))
            statistic[y, x] = value if usable & (own >= 0.0) else -np.inf
            if n_rings > 0:
                every[y, x] = value if usable else np.nan
    if n_rings > 0:
        ring_mean = _ring_mean_statistic(every, ring, n_rings)
        for y in range(ny):
            for x in range(nx):
                if ring[y, x] >= 0:
                    statistic[y, x] -= ring_mean[ring[y, x]]
    peak, scratch = work[1], work[2]
    # a pixel is strong where the statistic reaches the threshold and half its nearby maximum: a
    # footprint the size of the filtered spot whatever its brightness, so that neighbours stay apart
    _running_max(statistic, len(taps_xy) // 2, scratch, peak)
    n_strong = 0
    for y in range(ny):
        for x in range(nx):
            v = statistic[y, x]
            strong[y, x] = v >= sigma_strong and v >= 0.5 * peak[y, x]
            if strong[y, x]:
                strong_list[n_strong] = y * nx + x
                n_strong += 1
    return n_strong


@numba.njit(cache=True, nogil=True)
def _neighbour_table(z, y, x, n_slow, n_fast):
    """Each pixel's 6 neighbours (−x, +x, −y, +y, −z, +z) as pixel indices, −1 where not a
    pixel; one pass in raster order with a map of the last pixel seen at each position."""
    n = len(z)
    table = np.full((n, 6), -1, np.int64)
    last = np.full((n_slow, n_fast), -1, np.int64)
    for i in range(n):
        for direction in (0, 2, 4):  # −x and −y on this image, −z: the same position on the last
            yy = y[i] - (direction == 2)
            xx = x[i] - (direction == 0)
            if yy >= 0 and xx >= 0:
                j = last[yy, xx]
                if j >= 0 and z[j] == z[i] - (direction == 4):
                    table[i, direction] = j
                    table[j, direction + 1] = i
        last[y[i], x[i]] = i
    return table


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
    neighbours = _neighbour_table(z, y, x, n_slow, n_fast)
    order = np.argsort(-score)  # deterministic for the same pixels, so chunk-independent like the rest
    return _segment_by_prominence(neighbours, score.astype(np.float64), order, float(min_prominence),
                                  float(relative_prominence))


@numba.njit(cache=True, nogil=True)
def _segment_by_prominence(neighbours, score, order, min_prominence, relative_prominence):
    n = len(score)
    parent = np.arange(n)
    done = np.zeros(n, np.bool_)
    roots = np.empty(6, np.int64)
    for p in order:  # highest score first
        n_roots = 0
        for direction in range(6):
            q = neighbours[p, direction]
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
    root = np.empty(n, np.int64)
    for i in range(n):
        r = i
        while parent[r] != r:
            r = parent[r]
        root[i] = r
    label, new_of_root = renumber_by_first_appearance(root, n)
    return label, int(new_of_root.max() + 1) if n else 0


@numba.njit(cache=True, nogil=True)
def renumber_by_first_appearance(label, n_labels):
    """Labels 0 … n_labels−1 renumbered in order of first appearance in ``label`` (labels that do
    not appear get −1): the new labels and the new number of each old one."""
    new_of_old = np.full(n_labels, -1, np.int32)
    new = np.empty(len(label), np.int32)
    n_new = 0
    for i in range(len(label)):
        if new_of_old[label[i]] < 0:
            new_of_old[label[i]] = n_new
            n_new += 1
        new[i] = new_of_old[label[i]]
    return new, new_of_old
