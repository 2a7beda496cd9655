"""Strong-pixel thresholds: DIALS' ``dispersion`` and ``dispersion_extended`` algorithms.

Both compare each pixel with the statistics of a local window computed from summed-area tables
(integral images) over the masked-in pixels, so the cost per pixel is constant whatever the
window size; windows are clipped at the image edge (fewer pixels there).

- ``dispersion`` (classic; Leslie 1999, Acta Cryst. D55, 1696; DIALS: Winter et al. 2018,
  Acta Cryst. D74, 85): a pixel is strong if the index of dispersion D = s²/μ of its 7×7 window
  exceeds the Poisson expectation g·(1 + σ_b·√(2/(n−1))) and the pixel exceeds the window mean by
  σ_s·√(g·μ).
- ``dispersion_extended`` (Parkhurst et al. 2016, J. Appl. Cryst. 49, 1912; DIALS' default): the
  dispersion test alone marks "dispersed" regions (masked pixels are not dispersed, as in DIALS 3.5), the
  regions are eroded by min(kernel_size) in the chessboard metric to remove the halo the window
  adds, and the eroded core pixels are compared with the mean of an 11×11 window over the
  remaining (background) pixels.

The kernels are numba functions that release the GIL; :func:`threshold_image_into` works on one
image with caller-supplied work buffers so a chunk of images reuses them (see labelling.py).
Formulas and defaults: algorithms.md §3.2.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

# DIALS leaves pixels at or above 2**24 out of the local statistics (they are not exact in float32).
_STATISTICS_MAX_VALUE = float(1 << 24)

ALGORITHMS = ("dispersion", "dispersion_extended")


@dataclass(frozen=True)
class DispersionParameters:
    """``spotfinder.threshold.dispersion.*`` with DIALS' defaults.

    ``kernel_size`` = half-widths (slow, fast) of the dispersion window (3, 3 → 7×7), in DIALS' order.
    ``min_local`` ≤ 0 means "the full window size". ``gain`` None means 1.
    """

    algorithm: str = "dispersion_extended"
    gain: float | None = None
    kernel_size: tuple[int, int] = (3, 3)
    sigma_background: float = 6.0
    sigma_strong: float = 3.0
    min_local: int = 2
    global_threshold: float = 0.0

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"threshold algorithm '{self.algorithm}' is not one of {', '.join(ALGORITHMS)}")
        if len(self.kernel_size) != 2 or min(self.kernel_size) < 1:
            raise ValueError(f"kernel_size must be two half-widths ≥ 1, got {self.kernel_size}")
        ky, kx = self.kernel_size
        if not (self.min_local <= 0 or 2 <= self.min_local <= (2 * kx + 1) * (2 * ky + 1)):
            raise ValueError(f"min_local must be ≤ 0 (the whole window) or 2…{(2 * kx + 1) * (2 * ky + 1)}, got {self.min_local}")
        if self.extended and self.global_threshold < 0:
            raise ValueError(f"global_threshold must be ≥ 0 for dispersion_extended, got {self.global_threshold}")
        if self.sigma_background < 0 or self.sigma_strong < 0:
            raise ValueError("sigma_background and sigma_strong must be ≥ 0")

    @property
    def gain_value(self) -> float:
        return 1.0 if self.gain is None else float(self.gain)

    @property
    def min_local_count(self) -> int:
        ky, kx = self.kernel_size
        return self.min_local if self.min_local > 0 else (2 * kx + 1) * (2 * ky + 1)

    @property
    def extended(self) -> bool:
        return self.algorithm == "dispersion_extended"


class ThresholdWork:
    """Reusable work buffers for one image size: the per-image mask, summed-area tables of
    (count, Σc, Σc²) over the valid pixels, per-pixel flags and pixel index lists."""

    def __init__(self, n_slow: int, n_fast: int):
        shape = (n_slow + 1, n_fast + 1)
        self.valid = np.empty((n_slow, n_fast), np.bool_)
        self.sat_count = np.zeros(shape, np.int32)  # row 0 and column 0 stay zero
        self.sat_sum = np.zeros(shape, np.float64)
        self.sat_sumsq = np.zeros(shape, np.float64)
        self.sat_core_count = np.zeros(shape, np.int32)
        self.sat_core_sum = np.zeros(shape, np.float64)
        self.row_hit = np.empty(n_fast, np.bool_)  # the dispersion test of one row
        self.flags = np.zeros((n_slow, n_fast), np.uint8)
        self.dispersed = np.empty(n_slow * n_fast, np.int64)
        self.core = np.empty(n_slow * n_fast, np.int64)

    def buffers(self) -> tuple:
        """The buffers in the order :func:`threshold_image_into` takes them."""
        return (self.valid, self.sat_count, self.sat_sum, self.sat_sumsq, self.sat_core_count, self.sat_core_sum,
                self.row_hit, self.flags, self.dispersed, self.core)


@numba.njit(cache=True, nogil=True, inline="always")
def _box(sat, y0, y1, x0, x1):
    """Sum over rows [y0, y1) and columns [x0, x1) from a summed-area table."""
    return sat[y1, x1] - sat[y0, x1] - sat[y1, x0] + sat[y0, x0]


@numba.njit(cache=True, nogil=True, inline="always")
def corrected_value(raw, y, x, pedestal, panel_gain):
    """c = (raw − pedestal)/gain as float64 (no arithmetic in the usual case pedestal 0, gain 1)."""
    if pedestal == 0.0 and panel_gain == 1.0:
        return np.float64(raw[y, x])
    return (raw[y, x] - pedestal) / panel_gain


@numba.njit(cache=True, nogil=True, inline="always")
def _prepare_row(y, raw, static_mask, trusted_low, trusted_high, pedestal, panel_gain, valid, sat_count, sat_sum, sat_sumsq):
    """Row y of the per-image mask (static mask ∧ trusted range, exclusive at both ends as in
    DIALS 3.5) and row y+1 of the summed-area tables of count, Σc and Σc² over the valid
    pixels below 2²⁴."""
    n_fast = raw.shape[1]
    row_n = 0
    row_s = 0.0
    row_q = 0.0
    for x in range(n_fast):
        v = raw[y, x]
        ok = static_mask[y, x] and v > trusted_low and v < trusted_high
        valid[y, x] = ok
        if ok:
            c = corrected_value(raw, y, x, pedestal, panel_gain)
            if c < _STATISTICS_MAX_VALUE:
                row_n += 1
                row_s += c
                row_q += c * c
        sat_count[y + 1, x + 1] = sat_count[y, x + 1] + row_n
        sat_sum[y + 1, x + 1] = sat_sum[y, x + 1] + row_s
        sat_sumsq[y + 1, x + 1] = sat_sumsq[y, x + 1] + row_q


@numba.njit(cache=True, nogil=True, inline="always")
def row_of(index, y, n_fast):
    """The row of raster index ``index`` given the row ``y`` of an earlier index of an ascending
    list: walking the rows costs less than a division per pixel."""
    while index >= (y + 1) * n_fast:
        y += 1
    return y


@numba.njit(cache=True, nogil=True, inline="always")
def _add_row(above, value, out):
    """out = above + value, element by element (equal-length slices)."""
    for i in range(len(out)):
        out[i] = above[i] + value


# flags: 0 background or masked, 1 dispersed, 2 dispersed and core along its row
_DISPERSED, _ROW_CORE = 1, 2


@numba.njit(cache=True, nogil=True, inline="always")
def _is_dispersed(valid, n, s, q, g, min_local, sigma_background):
    """The dispersion test of a valid pixel whose window holds n pixels with sums s = Σc and
    q = Σc²: enough pixels, s ≥ 0 and an index of dispersion above the Poisson expectation.
    Branch-free, so that a row of tests vectorises."""
    return valid & (n >= min_local) & (s >= 0) & (
        n * q - s * s - g * s * (n - 1) > g * s * sigma_background * np.sqrt(2.0 * (n - 1)))


@numba.njit(cache=True, nogil=True, inline="always")
def _dispersion_row(y, y0, y1, kernel_x, min_local, sigma_background, valid, gain_map, sat_count, sat_sum, sat_sumsq, hit):
    """``hit`` = the dispersion test of every pixel of row y (window rows [y0, y1)).

    Interior pixels, whose windows are not clipped, read the tables through slices indexed by
    the loop counter alone (x = kernel_x + i, columns [i, i + 2·kernel_x + 1)): numba then emits
    no wrap-around code for negative indices and the loop vectorises. The sums are formed in
    :func:`_box`'s order, so both loops give the same bits."""
    n_fast = hit.shape[0]
    width = 2 * kernel_x + 1
    m = max(n_fast - 2 * kernel_x, 0)
    n0, n1 = sat_count[y0], sat_count[y1]
    s0, s1 = sat_sum[y0], sat_sum[y1]
    q0, q1 = sat_sumsq[y0], sat_sumsq[y1]
    n0a, n0b, n1a, n1b = n0[:m], n0[width : width + m], n1[:m], n1[width : width + m]
    s0a, s0b, s1a, s1b = s0[:m], s0[width : width + m], s1[:m], s1[width : width + m]
    q0a, q0b, q1a, q1b = q0[:m], q0[width : width + m], q1[:m], q1[width : width + m]
    valid_in = valid[y, kernel_x : kernel_x + m]
    gain_in = gain_map[y, kernel_x : kernel_x + m]
    hit_in = hit[kernel_x : kernel_x + m]
    for i in range(m):
        n = n1b[i] - n0b[i] - n1a[i] + n0a[i]
        s = s1b[i] - s0b[i] - s1a[i] + s0a[i]
        q = q1b[i] - q0b[i] - q1a[i] + q0a[i]
        hit_in[i] = _is_dispersed(valid_in[i], n, s, q, gain_in[i], min_local, sigma_background)
    for x in range(n_fast):
        if kernel_x <= x < kernel_x + m:
            continue
        x0 = max(0, x - kernel_x)
        x1 = min(n_fast, x + kernel_x + 1)
        hit[x] = _is_dispersed(valid[y, x], _box(sat_count, y0, y1, x0, x1), _box(sat_sum, y0, y1, x0, x1),
                               _box(sat_sumsq, y0, y1, x0, x1), gain_map[y, x], min_local, sigma_background)


@numba.njit(cache=True, nogil=True)
def threshold_image_into(
    raw, static_mask, trusted_low, trusted_high, pedestal, panel_gain, gain_map,
    kernel_x, kernel_y, sigma_background, sigma_strong, min_local, global_threshold, extended,
    strong, strong_list,
    valid, sat_count, sat_sum, sat_sumsq, sat_core_count, sat_core_sum, row_hit, flags, dispersed_list, core_list,
):
    """Threshold one raw image; returns the number of strong pixels.

    Fills ``strong`` (bool, image shape), the first entries of ``strong_list`` with the strong
    pixels' raster indices (y·n_fast + x, ascending) and ``valid`` with the per-image mask; the
    arguments after ``strong_list`` are work buffers (:meth:`ThresholdWork.buffers`). Only the
    dispersion test and the core pixels' tables visit every pixel (both in loops that
    vectorise); the erosion and the final test visit the (few percent) dispersed pixels only.
    """
    n_slow, n_fast = raw.shape
    strong[:, :] = False
    flags[:, :] = 0
    n_strong = 0
    n_dispersed = 0
    # Pass 1: the dispersion test on the 7×7 window, kernel_y rows behind the summed-area
    # tables it reads (so that those rows are still in cache). Masked pixels are not dispersed
    # (DIALS 3.5), so they erode neighbouring spots as background does.
    for row in range(n_slow + kernel_y):
        if row < n_slow:
            _prepare_row(row, raw, static_mask, trusted_low, trusted_high, pedestal, panel_gain, valid,
                         sat_count, sat_sum, sat_sumsq)
        y = row - kernel_y
        if y < 0:
            continue
        y0 = max(0, y - kernel_y)
        y1 = min(n_slow, y + kernel_y + 1)
        _dispersion_row(y, y0, y1, kernel_x, min_local, sigma_background, valid, gain_map, sat_count, sat_sum, sat_sumsq,
                        row_hit)
        for x in range(n_fast):
            if not row_hit[x]:
                continue
            if extended:
                flags[y, x] = _DISPERSED
                dispersed_list[n_dispersed] = y * n_fast + x
                n_dispersed += 1
            else:
                x0 = max(0, x - kernel_x)
                x1 = min(n_fast, x + kernel_x + 1)
                n = _box(sat_count, y0, y1, x0, x1)
                s = _box(sat_sum, y0, y1, x0, x1)
                c = corrected_value(raw, y, x, pedestal, panel_gain)
                if c > global_threshold and n * c - s > sigma_strong * np.sqrt(gain_map[y, x] * s * n):
                    strong[y, x] = True
                    strong_list[n_strong] = y * n_fast + x
                    n_strong += 1
    if not extended:
        return n_strong

    # Pass 2: erosion. A dispersed pixel is "core" iff its chessboard distance to the nearest
    # non-dispersed pixel is ≥ e = min(kernel): no non-dispersed pixel in the (2e−1)² window
    # around it (clipped at the image edge, beyond which nothing counts as background). The
    # square erodes separably: first along rows, where the dispersed list (raster order) gives
    # each run of consecutive dispersed pixels, then along columns over the row-eroded flags.
    reach = min(kernel_x, kernel_y) - 1
    first_x = 0
    last_x = 0
    y = 0
    for i in range(n_dispersed):
        y = row_of(dispersed_list[i], y, n_fast)
        x = dispersed_list[i] - y * n_fast
        if i == 0 or x == 0 or dispersed_list[i] != dispersed_list[i - 1] + 1:
            # a new run: the pixel is not the right neighbour of the previous one in its row
            run_end = i + 1
            row_end = i + n_fast - x  # a run ends with its row
            while run_end < min(n_dispersed, row_end) and dispersed_list[run_end] == dispersed_list[run_end - 1] + 1:
                run_end += 1
            first_x = x
            last_x = x + run_end - 1 - i
        if (x - first_x >= reach or first_x == 0) and (last_x - x >= reach or last_x == n_fast - 1):
            flags[y, x] = _ROW_CORE
    n_core = 0
    y = 0
    for i in range(n_dispersed):
        y = row_of(dispersed_list[i], y, n_fast)
        x = dispersed_list[i] - y * n_fast
        is_core = True
        for yy in range(max(0, y - reach), min(n_slow, y + reach + 1)):
            if flags[yy, x] != _ROW_CORE:
                is_core = False
                break
        if is_core:
            core_list[n_core] = dispersed_list[i]
            n_core += 1

    # Pass 3: core pixels against the mean of the background (valid, not core) pixels of a
    # window two pixels wider: the valid-pixel sums minus those of the core pixels below 2²⁴,
    # from summed-area tables of the core pixels. A row of those tables is the row above plus
    # the row's running sums, which change only at the row's core pixels: it is filled stretch
    # by stretch between them (loops that vectorise) instead of pixel by pixel.
    j = 0
    y_core = row_of(core_list[0], 0, n_fast) if n_core > 0 else n_slow
    for y in range(n_slow):
        count_above, count_row = sat_core_count[y], sat_core_count[y + 1]
        sum_above, sum_row = sat_core_sum[y], sat_core_sum[y + 1]
        row_n = 0
        row_s = 0.0
        x_from = 0  # the row's table columns 1 … x_from are filled
        while j < n_core and y_core == y:
            x = core_list[j] - y * n_fast
            _add_row(count_above[x_from + 1 : x + 1], row_n, count_row[x_from + 1 : x + 1])
            _add_row(sum_above[x_from + 1 : x + 1], row_s, sum_row[x_from + 1 : x + 1])
            c = corrected_value(raw, y, x, pedestal, panel_gain)
            if c < _STATISTICS_MAX_VALUE:
                row_n += 1
                row_s += c
            x_from = x
            j += 1
            if j < n_core:
                y_core = row_of(core_list[j], y_core, n_fast)
        _add_row(count_above[x_from + 1 :], row_n, count_row[x_from + 1 :])
        _add_row(sum_above[x_from + 1 :], row_s, sum_row[x_from + 1 :])
    wx = kernel_x + 2
    wy = kernel_y + 2
    y = 0
    for i in range(n_core):
        y = row_of(core_list[i], y, n_fast)
        x = core_list[i] - y * n_fast
        c = corrected_value(raw, y, x, pedestal, panel_gain)
        if not c > global_threshold:
            continue
        y0 = max(0, y - wy)
        y1 = min(n_slow, y + wy + 1)
        x0 = max(0, x - wx)
        x1 = min(n_fast, x + wx + 1)
        n = _box(sat_count, y0, y1, x0, x1) - _box(sat_core_count, y0, y1, x0, x1)
        s = _box(sat_sum, y0, y1, x0, x1) - _box(sat_core_sum, y0, y1, x0, x1)
        if s < 0:
            continue
        mean = s / n if n >= 2 else 0.0
        if c >= mean + sigma_strong * np.sqrt(gain_map[y, x] * mean):
            strong[y, x] = True
            strong_list[n_strong] = core_list[i]
            n_strong += 1
    return n_strong


def dispersion_threshold_mask(
    image: np.ndarray,
    mask: np.ndarray,
    parameters: DispersionParameters = DispersionParameters(),
    gain_map: np.ndarray | None = None,
    trusted_range: tuple[float, float] = (-np.inf, np.inf),
    pedestal: float = 0.0,
    panel_gain: float = 1.0,
) -> np.ndarray:
    """Strong-pixel mask of one image (bool, same shape) with the chosen dispersion algorithm.

    ``mask`` is True for pixels to use (detector, user and resolution masks); pixels outside the
    exclusive ``trusted_range`` are masked too.
    """
    raw = np.ascontiguousarray(image, dtype=np.float64)
    n_slow, n_fast = raw.shape
    work = ThresholdWork(n_slow, n_fast)
    if gain_map is None:
        gain_map = np.full(raw.shape, parameters.gain_value)
    strong = np.empty(raw.shape, np.bool_)
    ky, kx = parameters.kernel_size
    threshold_image_into(
        raw, np.ascontiguousarray(mask, np.bool_), float(trusted_range[0]), float(trusted_range[1]),
        float(pedestal), float(panel_gain), np.ascontiguousarray(gain_map, np.float64), kx, ky,
        float(parameters.sigma_background), float(parameters.sigma_strong), parameters.min_local_count,
        float(parameters.global_threshold), parameters.extended, strong, np.empty(raw.size, np.int64),
        *work.buffers(),
    )
    return strong
