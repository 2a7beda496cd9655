"""Small rotation helpers shared by the parameterisations and the prediction gradients.

``skew(u)`` is the matrix K with K·v = u × v, so that d/dθ R(u, θ) = K(u)·R(u, θ) for the
right-handed rotation R of :func:`algorithms.geometry.models.rotation_matrix`.
"""
from __future__ import annotations

import numpy as np

MRAD = 1.0e-3  # angle parameters are in milliradians, as in DIALS


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def skew(u) -> np.ndarray:
    u = np.asarray(u, dtype=float)
    return np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])


def rotate_vectors(axis: np.ndarray, phi_rad: np.ndarray, v: np.ndarray) -> np.ndarray:
    """R(axis, φ_n)·v_n for unit ``axis``, angles (n,) and vectors (..., n, 3) (Rodrigues)."""
    c = np.cos(phi_rad)[:, None]
    s = np.sin(phi_rad)[:, None]
    along = (v @ axis)[..., None] * axis
    return v * c + (v @ skew(axis).T) * s + along * (1.0 - c)


def xyz_angles_from_rotation(R: np.ndarray) -> np.ndarray:
    """Angles (rad) (φ1, φ2, φ3) with R = Rz(φ3)·Ry(φ2)·Rx(φ1); R of shape (..., 3, 3).

    This is the decomposition dials.plot_scan_varying_model uses for orientation plots.
    """
    R = np.asarray(R, dtype=float)
    phi2 = np.arcsin(np.clip(-R[..., 2, 0], -1.0, 1.0))
    phi1 = np.arctan2(R[..., 2, 1], R[..., 2, 2])
    phi3 = np.arctan2(R[..., 1, 0], R[..., 0, 0])
    return np.stack([phi1, phi2, phi3], axis=-1)
