"""Smooth scale and B-factor terms along the rotation (DIALS physical model, after Aimless).

Parameter counts from the wedge W and the interval I (DIALS' rules, I + 10⁻⁵ to avoid ties):
W ≤ I: 2 parameters (rot_int = W); W < 2I: 3 (rot_int = W/2); else n_bins = max(⌊W/I⌋ + 1, 3),
rot_int = W/n_bins and n_bins + 2 parameters. The normalised rotation coordinate is
x = (z − 0.5)·0.999·Δφ/rot_int on (0, n_intervals) with n_intervals = n − 1 (n ≤ 3) or n − 2; values sit at
0, 1(, 2) or at −0.5, 0.5, …; a value at x is the Gaussian-weighted mean of the min(3, n) nearest
parameters, w = exp(−((x − pos)/σ)²), σ = 0.65 + 0.05·(n_average − 2).
Default intervals (deg) by wedge: < 10 → scale 2, decay 3; < 25 → 4, 5; < 90 → 8, 10; else 15, 20.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

# DIALS measures the rotation coordinate from the centre of the first image (z = 0.5): with this
# origin the stored quartz model reproduces DIALS' inverse scale factors to 3·10⁻⁵ (median), with
# z itself only to 5·10⁻³ (tests/algorithms/test_scaling_dials.py).
Z_ORIGIN = 0.5


def auto_intervals_deg(wedge_deg: float) -> tuple[float, float]:
    """(scale_interval, decay_interval) for ``scale_interval = decay_interval = auto``."""
    if wedge_deg < 10:
        return 2.0, 3.0
    if wedge_deg < 25:
        return 4.0, 5.0
    if wedge_deg < 90:
        return 8.0, 10.0
    return 15.0, 20.0


@dataclass
class SmootherAxis:
    """A 1-D Gaussian smoother over one dataset's rotation."""

    n_values: int
    rot_interval_deg: float
    norm_factor: float  # x per image (z units)

    @classmethod
    def from_interval(cls, wedge_deg: float, oscillation_width_deg: float, interval_deg: float) -> "SmootherAxis":
        interval = interval_deg + 1e-5
        if wedge_deg <= interval:
            n, rot_int = 2, wedge_deg
        elif wedge_deg < 2 * interval:
            n, rot_int = 3, wedge_deg / 2
        else:
            n_bins = max(int(wedge_deg / interval) + 1, 3)
            n, rot_int = n_bins + 2, wedge_deg / n_bins
        return cls(n_values=n, rot_interval_deg=rot_int, norm_factor=0.999 * oscillation_width_deg / rot_int)

    @property
    def positions(self) -> np.ndarray:
        if self.n_values < 4:
            return np.arange(self.n_values, dtype=float)
        return np.arange(self.n_values, dtype=float) - 0.5

    def weights(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Column indices (n, k) and normalised weights (n, k) of the values used at each z."""
        x = (np.asarray(z, float) - Z_ORIGIN) * self.norm_factor
        n_average = min(3, self.n_values)
        sigma = 0.65 + 0.05 * (n_average - 2)
        if self.n_values <= 3:
            columns = np.broadcast_to(np.arange(self.n_values), (len(x), self.n_values))
        else:
            nearest = np.rint(x + 0.5).astype(np.int64)
            first = np.clip(nearest - 1, 0, self.n_values - 3)
            columns = first[:, None] + np.arange(3)[None, :]
        w = np.exp(-(((x[:, None] - self.positions[columns]) / sigma) ** 2))
        return columns, w / w.sum(axis=1, keepdims=True)

    def design(self, z: np.ndarray, rows: np.ndarray, column_offset: int, shape: tuple[int, int]) -> sparse.csr_matrix:
        """Sparse (n_obs_total × n_params_total) weights for observations ``rows`` at ``z``."""
        columns, w = self.weights(z)
        k = columns.shape[1]
        return sparse.csr_matrix((w.ravel(), (np.repeat(rows, k), (columns + column_offset).ravel())), shape=shape)
