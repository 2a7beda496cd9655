"""Absorption surface of the physical model: real spherical harmonics of the crystal-frame beam directions.

A = 1 + Σ_{l=1..lmax} Σ_{m=−l..l} P_lm · ½[Y_lm(s0c) + Y_lm(s1c)], with real harmonics
m < 0: √2(−1)^m Im Y_l|m|; m = 0: Re Y_l0; m > 0: √2(−1)^m Re Y_lm (Aimless/DIALS convention).
"""
from __future__ import annotations

import numpy as np
from scipy import special


def n_absorption_parameters(lmax: int) -> int:
    return (lmax + 1) ** 2 - 1


def real_spherical_harmonics(directions: np.ndarray, lmax: int) -> np.ndarray:
    """(n, (lmax+1)²−1) values for l = 1..lmax, m = −l..l of unit vectors ``directions``."""
    v = np.asarray(directions, float)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    theta = np.arccos(np.clip(v[:, 2], -1.0, 1.0))
    phi = np.mod(np.arctan2(v[:, 1], v[:, 0]), 2 * np.pi)
    columns = []
    for l in range(1, lmax + 1):
        for m in range(-l, l + 1):
            y = special.sph_harm_y(l, abs(m), theta, phi)
            if m < 0:
                columns.append(np.sqrt(2) * (-1) ** m * y.imag)
            elif m == 0:
                columns.append(y.real)
            else:
                columns.append(np.sqrt(2) * (-1) ** m * y.real)
    return np.stack(columns, axis=1)


def absorption_basis(s0c: np.ndarray, s1c: np.ndarray, lmax: int) -> np.ndarray:
    """½[Y(s0c) + Y(s1c)] for each observation."""
    return 0.5 * (real_spherical_harmonics(s0c, lmax) + real_spherical_harmonics(s1c, lmax))
