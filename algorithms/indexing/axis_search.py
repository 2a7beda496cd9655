"""A cheap score of a trial rotation axis: how sharply the spots' reciprocal-lattice points form a
lattice when they are rotated back about that axis.

With the right axis the rlps of a sweep lie on a lattice, and the Fourier transform of their
density (the Patterson-like map of the 3D FFT basis-vector search, Bricogne 1986; Campbell
1998; Gildea et al. 2014) has sharp peaks at the short direct-lattice vectors.  A wrong axis
rotates each spot's rlp by an error that grows with its rotation angle and resolution, which
smears the lattice and the peaks.  The score is the mean of the strongest non-origin peaks of
|F|² on a small grid relative to the origin peak (the number of occupied voxels squared), so it
needs neither indexing nor refinement and does not depend on the probe or the detector.  It is
a coarse criterion (peaks some degrees wide); the axis is then refined by indexing.

The grid's real-space box must hold the short lattice vectors for the rounding of rlps to
voxels to keep the peaks coherent: its edge is ``n_points·d_min/2``, and ``d_min`` is chosen
so that the box is at least ``box_over_max_cell`` × max_cell / 1.3 (about the longest cell edge).
"""
from __future__ import annotations

import numpy as np
import scipy.fft

N_POINTS = 64
N_PEAKS = 20
SPOT_D_PERCENTILE = 5.0
BOX_OVER_LONGEST_EDGE = 1.0
MAX_CELL_MULTIPLIER = 1.3  # DIALS' max_cell = 1.3 × the longest neighbour distance


def rlps_about_axis(s_lab: np.ndarray, phi_rad: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """The scattering vectors ``s_lab`` (n, 3) rotated by −φ about the unit ``axis`` (lab frame)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    cos, sin = np.cos(phi_rad)[:, None], -np.sin(phi_rad)[:, None]
    along = (s_lab @ axis)[:, None] * axis
    return s_lab * cos + np.cross(axis, s_lab) * sin + along * (1.0 - cos)


def sharpness_d_min(d: np.ndarray, max_cell: float, n_points: int = N_POINTS) -> float:
    """The grid resolution: as fine as the spots allow (their 5th percentile of d) while the
    real-space box (n_points·d_min/2) still holds a vector as long as the longest cell edge."""
    longest_edge = max_cell / MAX_CELL_MULTIPLIER
    return float(max(np.percentile(d, SPOT_D_PERCENTILE), 2.0 * BOX_OVER_LONGEST_EDGE * longest_edge / n_points))


def lattice_sharpness(rlp: np.ndarray, d_min: float, n_points: int = N_POINTS, n_peaks: int = N_PEAKS) -> float:
    """Mean of the ``n_peaks`` strongest non-origin values of |F|² of the rlps with d ≥ d_min put
    on an n³ grid (spacing 2/(n·d_min), assigned not summed), over the origin value."""
    r2 = np.sum(rlp * rlp, axis=1)
    spacing = 2.0 / (n_points * d_min)
    index = np.rint(rlp[r2 <= 1.0 / d_min**2] / spacing).astype(np.int64) % n_points  # periodic: no centring needed
    grid = np.zeros((n_points,) * 3, dtype=np.float32)
    grid[index[:, 0], index[:, 1], index[:, 2]] = 1.0
    spectrum = scipy.fft.rfftn(grid, workers=1)
    power = spectrum.real**2 + spectrum.imag**2
    origin = float(power[0, 0, 0])
    if origin == 0.0:
        return 0.0
    for i in (-1, 0, 1):  # the origin peak and its immediate neighbours
        for j in (-1, 0, 1):
            power[i, j, :2] = 0.0
    strongest = np.partition(power.ravel(), power.size - n_peaks)[-n_peaks:]
    return float(np.mean(strongest) / origin)


def axis_sharpness(s_lab: np.ndarray, phi_rad: np.ndarray, axes: np.ndarray, d_min: float,
                   n_points: int = N_POINTS) -> np.ndarray:
    """:func:`lattice_sharpness` of the spots for each trial axis (m, 3)."""
    return np.array([lattice_sharpness(rlps_about_axis(s_lab, phi_rad, axis), d_min, n_points) for axis in axes])
