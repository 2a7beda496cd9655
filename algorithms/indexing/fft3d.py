"""Basis-vector search by 3D FFT of the reciprocal-lattice points (DIALS ``indexing.method=fft3d``).

The rlps (φ = 0 frame) are put on a centred N³ reciprocal-space grid (assigned, not summed,
with a Debye–Waller-like weight), Fourier transformed, and the real-space |F|² — a
Patterson-like map whose peaks are the direct lattice vectors — is searched for peaks by
flood fill with periodic boundaries.  The peak centres become candidate basis vectors after
wrapping, length limits, grouping of near-identical vectors and removal of integer multiples.

References: Bricogne (1986) in Proc. EEC Cooperative Workshop on Position-Sensitive Detector
Software; Campbell (1998) J. Appl. Cryst. 31, 407–413; Gildea et al. (2014) Acta Cryst. D70,
2652–2666 (DIALS' fft3d); Sauter et al. (2004) J. Appl. Cryst. 37, 399–409.

The grid is real, so ``scipy.fft.rfftn`` (complex64) gives the half-spectrum; |F|² is
centrosymmetric and the peak search reads the missing half by that symmetry instead of
building it.
"""
from __future__ import annotations

import numba
import numpy as np
import scipy.fft

from algorithms.errors import DataError

RMSD_CUTOFF = 15.0
PEAK_VOLUME_CUTOFF = 0.15
MIN_CELL = 3.0


def nearest_5_smooth(n: int) -> int:
    """The smallest m ≥ n whose prime factors are all ≤ 5 (a fast FFT length)."""
    m = max(int(n), 1)
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def fft_d_min(max_cell: float, n_points: int, d_spacings: np.ndarray) -> float:
    """DIALS' "Setting d_min": the grid must resolve twice the longest vector (cell ≥ 2.5·max_cell)."""
    return float(max(5.0 * max_cell / n_points, np.min(d_spacings)))


def fill_reciprocal_grid(
    rlp: np.ndarray, n_points: int, d_min: float, b_iso: float | None = None
) -> tuple[np.ndarray, int]:
    """The centred N³ grid with exp(−B|r|²/4) at each rlp with d ≥ d_min (assigned, not summed).

    B defaults to −4·d_min²·ln(0.05), so the weight is 0.05 at the resolution limit.
    Returns (grid float32, number of non-zero voxels).
    """
    if b_iso is None:
        b_iso = -4.0 * d_min**2 * np.log(0.05)
    spacing = 2.0 / (n_points * d_min)
    r2 = np.sum(rlp * rlp, axis=1)
    keep = r2 <= 1.0 / d_min**2 * (1 + 1e-12)
    index = np.rint(rlp[keep] / spacing).astype(np.int64) + n_points // 2
    inside = np.all((index >= 0) & (index < n_points), axis=1)
    grid = np.zeros((n_points,) * 3, dtype=np.float32)
    grid[tuple(index[inside].T)] = np.exp(-b_iso * r2[keep][inside] / 4.0)
    n_voxels = len(np.unique(np.ravel_multi_index(tuple(index[inside].T), grid.shape)))
    return grid, n_voxels


@numba.njit(cache=True, nogil=True)
def _power_and_moments(spectrum):
    """|F|² of the half spectrum and the mean and rms deviation over the full (symmetric) grid."""
    nx, ny, nz_half = spectrum.shape
    n = nx  # cubic grid
    power = np.empty(spectrum.shape, dtype=np.float32)
    total = 0.0
    total2 = 0.0
    for i in range(nx):
        for j in range(ny):
            for k in range(nz_half):
                v = spectrum[i, j, k]
                p = v.real * v.real + v.imag * v.imag
                power[i, j, k] = p
                weight = 1.0 if (k == 0 or 2 * k == n) else 2.0
                total += weight * p
                total2 += weight * p * p
    count = float(n) ** 3
    mean = total / count
    variance = max(total2 / count - mean * mean, 0.0)
    return power, mean, np.sqrt(variance)


@numba.njit(cache=True, nogil=True)
def _voxels_at_or_above(power, threshold):
    """(m, 3) indices of the stored half-grid voxels with value ≥ threshold."""
    count = 0
    for value in power.ravel():
        if value >= threshold:
            count += 1
    out = np.empty((count, 3), dtype=np.int64)
    m = 0
    nx, ny, nz = power.shape
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                if power[i, j, k] >= threshold:
                    out[m, 0] = i
                    out[m, 1] = j
                    out[m, 2] = k
                    m += 1
    return out


@numba.njit(cache=True, nogil=True)
def _value(power, n, i, j, k):
    if k < power.shape[2]:
        return power[i, j, k]
    return power[(n - i) % n, (n - j) % n, n - k]


@numba.njit(cache=True, nogil=True)
def _flood_fill(power, threshold, seeds):
    """6-connected regions with value ≥ threshold on the periodic full grid, grown from ``seeds``
    (all above-threshold voxels of the stored half, in full-grid coordinates).

    Returns (volumes, centres) with centres in unwrapped grid coordinates (may lie outside [0, N)).
    """
    n = power.shape[0]
    visited = np.zeros((n, n, n), dtype=np.uint8)
    capacity = 1024
    stack = np.empty((capacity, 3), dtype=np.int64)
    volumes = []
    centres = []
    for s in range(seeds.shape[0]):
        i0 = seeds[s, 0]
        j0 = seeds[s, 1]
        k0 = seeds[s, 2]
        if visited[i0, j0, k0]:
            continue
        visited[i0, j0, k0] = 1
        stack[0, 0] = i0
        stack[0, 1] = j0
        stack[0, 2] = k0
        top = 1
        count = 0
        si = 0.0
        sj = 0.0
        sk = 0.0
        while top > 0:
            top -= 1
            ui = stack[top, 0]
            uj = stack[top, 1]
            uk = stack[top, 2]
            count += 1
            si += ui
            sj += uj
            sk += uk
            for d in range(6):
                vi = ui
                vj = uj
                vk = uk
                if d == 0:
                    vi += 1
                elif d == 1:
                    vi -= 1
                elif d == 2:
                    vj += 1
                elif d == 3:
                    vj -= 1
                elif d == 4:
                    vk += 1
                else:
                    vk -= 1
                wi = vi % n
                wj = vj % n
                wk = vk % n
                if visited[wi, wj, wk]:
                    continue
                if _value(power, n, wi, wj, wk) < threshold:
                    continue
                visited[wi, wj, wk] = 1
                if top == stack.shape[0]:
                    bigger = np.empty((2 * stack.shape[0], 3), dtype=np.int64)
                    bigger[:top] = stack[:top]
                    stack = bigger
                stack[top, 0] = vi
                stack[top, 1] = vj
                stack[top, 2] = vk
                top += 1
        volumes.append(count)
        centres.append((si / count, sj / count, sk / count))
    out_volumes = np.empty(len(volumes), dtype=np.int64)
    out_centres = np.empty((len(volumes), 3), dtype=np.float64)
    for m in range(len(volumes)):
        out_volumes[m] = volumes[m]
        out_centres[m, 0] = centres[m][0]
        out_centres[m, 1] = centres[m][1]
        out_centres[m, 2] = centres[m][2]
    return out_volumes, out_centres


def patterson_peaks(
    grid: np.ndarray, rmsd_cutoff: float = RMSD_CUTOFF, peak_volume_cutoff: float = PEAK_VOLUME_CUTOFF, workers: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Peaks of |FFT(grid)|²: (fractional centres wrapped to (−0.5, 0.5], volumes in voxels)."""
    n = grid.shape[0]
    spectrum = scipy.fft.rfftn(grid, workers=workers)
    power, mean, rms = _power_and_moments(spectrum)
    threshold = np.float32(mean + rmsd_cutoff * rms) if rms > 0 else np.float32(np.inf)
    half_seeds = _voxels_at_or_above(power, threshold)
    mirrored = (-half_seeds) % n  # the centrosymmetric partners, which lie in the other half
    volumes, centres = _flood_fill(power, threshold, np.vstack([half_seeds, mirrored]).astype(np.int64))
    if len(volumes) < 4:
        raise DataError(
            f"the FFT found only {len(volumes)} peaks (need 4): too few or too disordered spots to index; "
            "check the geometry (beam centre, distance, rotation axis) or lower the spot-finding threshold"
        )
    q1, q3 = np.percentile(volumes, [25, 75])
    ordinary = volumes[volumes <= q3 + 5.0 * (q3 - q1)]
    keep = volumes > peak_volume_cutoff * ordinary.max()
    fractional = centres[keep] / n
    fractional -= np.ceil(fractional - 0.5)  # wrap into (−0.5, 0.5]
    return fractional, volumes[keep]


def _pairwise_angles_deg(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip(unit @ unit.T, -1.0, 1.0)))


def group_and_filter_vectors(
    vectors: np.ndarray, volumes: np.ndarray, max_cell: float, min_cell: float = MIN_CELL
) -> tuple[np.ndarray, np.ndarray]:
    """DIALS' post-processing of peak vectors: length limits, grouping, multiples removal, sorting.

    Scanning by increasing length, a vector within 10 % in length and 5° in direction (or
    anti-parallel within 5°, then negated) of a group's first member joins that group; a group
    is represented by its mean, weighted by its largest volume.  A vector that is nearly an
    integer multiple (|n − round(n)| < 0.2, within 5°) of a shorter kept vector with a larger
    peak is removed.  Returns the survivors sorted by volume, largest first.
    """
    lengths = np.linalg.norm(vectors, axis=1)
    keep = (lengths > min_cell) & (lengths < 2.0 * max_cell)
    order = np.argsort(lengths[keep], kind="stable")
    vectors, volumes, lengths = vectors[keep][order], volumes[keep][order], lengths[keep][order]
    if len(vectors) == 0:
        return np.zeros((0, 3)), np.zeros(0)
    angles = _pairwise_angles_deg(vectors)
    similar_length = np.abs(lengths[:, None] - lengths[None, :]) <= 0.1 * np.maximum(lengths[:, None], lengths[None, :])
    parallel = similar_length & (angles < 5.0)
    antiparallel = similar_length & (angles > 175.0)
    group_of = np.full(len(vectors), -1)
    references: list[int] = []
    for i in range(len(vectors)):
        for g, r in enumerate(references):
            if parallel[i, r] or antiparallel[i, r]:
                group_of[i] = g
                break
        else:
            group_of[i] = len(references)
            references.append(i)
    signs = np.where(antiparallel[np.arange(len(vectors)), np.asarray(references)[group_of]], -1.0, 1.0)
    n_groups = len(references)
    means = np.zeros((n_groups, 3))
    np.add.at(means, group_of, vectors * signs[:, None])
    means /= np.bincount(group_of, minlength=n_groups)[:, None]
    group_volumes = np.zeros(n_groups)
    np.maximum.at(group_volumes, group_of, volumes)

    mean_lengths = np.linalg.norm(means, axis=1)
    order = np.argsort(mean_lengths, kind="stable")
    means, group_volumes, mean_lengths = means[order], group_volumes[order], mean_lengths[order]
    angles = _pairwise_angles_deg(means)
    ratio = mean_lengths[:, None] / mean_lengths[None, :]  # [v, u] = |v| / |u|
    near_multiple = ((angles < 5.0) | (angles > 175.0)) & (np.abs(ratio - np.rint(ratio)) < 0.2)
    stronger = group_volumes[None, :] >= group_volumes[:, None]  # u's peak at least as large
    kept = np.zeros(n_groups, bool)
    for v in range(n_groups):
        kept[v] = not np.any(kept[:v] & near_multiple[v, :v] & stronger[v, :v])
    by_volume = np.argsort(-group_volumes[kept], kind="stable")
    return means[kept][by_volume], group_volumes[kept][by_volume]


def fft3d_candidate_vectors(
    rlp: np.ndarray,
    d_spacings: np.ndarray,
    max_cell: float,
    n_points: int = 256,
    d_min: float | None = None,
    b_iso: float | None = None,
    rmsd_cutoff: float = RMSD_CUTOFF,
    peak_volume_cutoff: float = PEAK_VOLUME_CUTOFF,
    min_cell: float = MIN_CELL,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Candidate direct-space basis vectors (Å, φ = 0 frame) by 3D FFT, sorted by peak volume.

    Returns (vectors (n, 3), volumes (n,), info) with info = {"d_min", "n_points",
    "n_centroids"} as DIALS logs them ("Setting d_min", "Number of centroids used").
    """
    n_points = nearest_5_smooth(n_points)
    if d_min is None:
        d_min = fft_d_min(max_cell, n_points, d_spacings)
    grid, n_centroids = fill_reciprocal_grid(rlp, n_points, d_min, b_iso)
    fractional, volumes = patterson_peaks(grid, rmsd_cutoff, peak_volume_cutoff, workers)
    cell_edge = n_points * d_min / 2.0
    vectors, volumes = group_and_filter_vectors(fractional * cell_edge, volumes, max_cell, min_cell)
    return vectors, volumes, {"d_min": d_min, "n_points": n_points, "n_centroids": n_centroids}
