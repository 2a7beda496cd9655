"""Basis-vector search by 1D FFTs of rlp projections (DIALS ``indexing.method=fft1d``).

For a direction n̂ along a real-space lattice vector t, the projections r·n̂ of all rlps fall on
a comb of period 1/|t|; the 1D FFT of the projection density then peaks at the frequency |t|.
Directions are spread over a hemisphere (spacing ≤ 0.029 rad, ~7 500 directions) and the
strongest periodicities between min_cell and max_cell give candidate vectors t = |t|·n̂, which
go through the same grouping/multiple removal as the 3D search.
(Steller, Bolotovsky & Rossmann 1997, J. Appl. Cryst. 30, 1036–1040; Sauter et al. 2004,
J. Appl. Cryst. 37, 399–409.)
"""
from __future__ import annotations

import numpy as np
import scipy.fft

from algorithms.indexing.fft3d import MIN_CELL, group_and_filter_vectors

DIRECTION_SPACING_RAD = 0.029
N_BEST_DIRECTIONS = 30


def hemisphere_directions(spacing_rad: float = DIRECTION_SPACING_RAD) -> np.ndarray:
    """Nearly uniform unit vectors over the z ≥ 0 hemisphere (Fibonacci lattice)."""
    n = int(np.ceil(2.0 * np.pi / spacing_rad**2))
    i = np.arange(n) + 0.5
    z = 1.0 - i / n  # uniform in z over (0, 1]
    azimuth = np.pi * (1.0 + 5.0**0.5) * i
    r = np.sqrt(1.0 - z * z)
    return np.column_stack([r * np.cos(azimuth), r * np.sin(azimuth), z])


def fft1d_candidate_vectors(
    rlp: np.ndarray,
    d_spacings: np.ndarray,
    max_cell: float,
    min_cell: float = MIN_CELL,
    n_best_directions: int = N_BEST_DIRECTIONS,
    spacing_rad: float = DIRECTION_SPACING_RAD,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Candidate direct-space vectors (Å) from 1D FFTs over hemisphere directions, strongest first.

    Returns (vectors, weights, info) like :func:`fft3d_candidate_vectors`.
    """
    d_min = float(np.min(d_spacings))
    directions = hemisphere_directions(spacing_rad)
    projections = rlp @ directions.T  # (n_spots, n_directions)
    extent = 1.0 / d_min
    # bins fine enough for periods 1/max_cell (8 bins per period); FFT frequency k ↔ |t| = k/(2·extent)
    n_bins = int(2 ** np.ceil(np.log2(16.0 * extent * max_cell)))
    bin_width = 2.0 * extent / n_bins
    bins = np.clip(((projections + extent) / bin_width).astype(np.int64), 0, n_bins - 1)
    flat = bins + n_bins * np.arange(len(directions))[None, :]
    density = np.bincount(flat.ravel(), minlength=n_bins * len(directions)).reshape(len(directions), n_bins)
    amplitude = np.abs(scipy.fft.rfft(density.astype(np.float32), axis=1))
    # The projections' overall envelope puts power at low frequencies in every direction; a
    # lattice periodicity is power that only some directions have, so compare each frequency
    # with its median over all directions.
    amplitude /= np.maximum(np.median(amplitude, axis=0), 1e-12)[None, :]
    lengths = np.arange(amplitude.shape[1]) / (2.0 * extent)
    usable = (lengths > min_cell) & (lengths < 2.0 * max_cell)  # as the 3D search
    amplitude[:, ~usable] = 0.0
    best_k = np.argmax(amplitude, axis=1)
    best_amplitude = amplitude[np.arange(len(directions)), best_k]
    chosen = np.argsort(-best_amplitude, kind="stable")[: max(n_best_directions * 10, 1)]
    vectors = directions[chosen] * lengths[best_k[chosen]][:, None]
    weights = best_amplitude[chosen]
    vectors, weights = group_and_filter_vectors(vectors, weights, max_cell, min_cell)
    return vectors[: max(n_best_directions, 3) * 3], weights[: max(n_best_directions, 3) * 3], {
        "d_min": d_min, "n_points": n_bins, "n_centroids": len(rlp), "n_directions": len(directions)}
