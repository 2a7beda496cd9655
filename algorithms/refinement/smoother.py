"""Gaussian smoother for scan-varying parameters (DIALS ``GaussianSmoother``).

A scan-varying parameter is a set of values at "smoother points" spread over the scan's array
range (image units). n_intervals = max(int(range_deg / interval_width_deg), 1); the number of
values is 2, 3 or n_intervals + 2; positions are 0, 1 (, 2) or −0.5, 0.5, … in units of the
spacing range/n_intervals. The value at t is the Gaussian-weighted mean of the ``naverage =
min(3, n_values)`` nearest values, w_i = exp(−((z − pos_i)/σ)²), σ = 0.65 + 0.05·(naverage − 2).
(Waterman et al. 2016, Acta Cryst. D72, 558–575, scan-varying refinement.)
"""
from __future__ import annotations

import numpy as np


class GaussianSmoother:
    def __init__(self, array_range: tuple[float, float], range_deg: float, interval_width_deg: float):
        self.t0, t1 = float(array_range[0]), float(array_range[1])
        n_intervals = max(int(abs(range_deg) / interval_width_deg), 1)
        self.spacing = (t1 - self.t0) / n_intervals
        if n_intervals == 1:
            self.positions = np.array([0.0, 1.0])
        elif n_intervals == 2:
            self.positions = np.array([0.0, 1.0, 2.0])
        else:
            self.positions = np.arange(n_intervals + 2) - 0.5
        self.naverage = min(3, len(self.positions))
        self.sigma = 0.65 + 0.05 * (self.naverage - 2)

    @property
    def num_values(self) -> int:
        return len(self.positions)

    def weights(self, t: np.ndarray) -> np.ndarray:
        """Normalised weights (m, n_values) of every smoother value at image positions t (m,)."""
        z = (np.atleast_1d(np.asarray(t, dtype=float)) - self.t0) / self.spacing
        distance = np.abs(z[:, None] - self.positions[None, :])
        nearest = np.argsort(distance, axis=1, kind="stable")[:, : self.naverage]
        w = np.zeros_like(distance)
        rows = np.arange(len(z))[:, None]
        w[rows, nearest] = np.exp(-((distance[rows, nearest] / self.sigma) ** 2))
        return w / w.sum(axis=1, keepdims=True)
