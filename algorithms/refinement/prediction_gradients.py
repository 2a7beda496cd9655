"""Predicted (x, y, φ) of indexed reflections and their analytic derivatives.

For q = F·A·h (φ-axis frame), the lab reciprocal vector at angle φ is r = S·R(ê, φ)·q and
s1 = s0 + r. φ solves |s1| = |s0|; the observed ``entering`` flag picks the crossing and φ is
moved by whole turns next to the observed angle. x, y come from v = D⁻¹·s1 (x = v₀/v₂, y = v₁/v₂).

Derivatives for a parameter p (at fixed φ: dr = dS·S⁻¹·r + S·R·dq):
    dφ  = −(s1·dr + r·ds0) / (s1·(ê_lab × r))        (differentiating s1·s1 = s0·s0)
    ds1 = ds0 + dr + (ê_lab × r)·dφ
    dv  = D⁻¹·(ds1 − dD·v),  dx = (dv₀ − x·dv₂)/v₂,  dy = (dv₁ − y·dv₂)/v₂
(Sauter et al. 2006, J. Appl. Cryst. 39, 799; Waterman et al. 2016, Acta Cryst. D72, 558.)
Predictions are vectorised numpy; the derivatives are a numba kernel over reflections.
"""
from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from algorithms.geometry.prediction import rotation_angles
from algorithms.refinement.rotations import rotate_vectors

TWO_PI = 2.0 * np.pi


@dataclass
class GeometryState:
    """Lab-frame models at the current parameter values."""

    s0: np.ndarray  # (3,)
    setting_rotation: np.ndarray  # S (3, 3)
    axis: np.ndarray  # datum ê (3,)
    fixed_rotation: np.ndarray  # F (3, 3)
    d_matrix: np.ndarray  # D = [d1 d2 o] (3, 3)


@dataclass
class StateDerivatives:
    """Derivatives of the state for P parameters (zeros where a parameter does not act)."""

    ds0: np.ndarray  # (P, 3)
    dS: np.ndarray  # (P, 3, 3)
    dq: np.ndarray  # (P, n, 3): d(F·A·h)
    dD: np.ndarray  # (P, 3, 3)


@dataclass
class PredictedCentroids:
    x_mm: np.ndarray
    y_mm: np.ndarray
    phi_rad: np.ndarray
    s1: np.ndarray
    valid: np.ndarray
    r: np.ndarray  # lab reciprocal vectors at φ
    v: np.ndarray  # D⁻¹·s1


def choose_crossing(q: np.ndarray, state: GeometryState, entering: np.ndarray, phi_near: np.ndarray):
    """φ (rad) of the crossing with the requested entering flag, nearest to ``phi_near`` by turns."""
    S = state.setting_rotation
    s0_axis_frame = np.linalg.solve(S, state.s0)
    phi1, phi2, ok = rotation_angles(q, s0_axis_frame, state.axis)
    # entering = s1·(s0 × ê_lab) < 0, i.e. in the axis frame s1'·(s0' × ê) < 0 with s1' = s0' + R q
    normal = np.cross(s0_axis_frame, state.axis)
    r1 = rotate_vectors(state.axis, phi1, q)
    enters1 = (r1 @ normal) < 0  # s0'·normal = 0
    phi = np.where(enters1 == entering, phi1, phi2)
    phi = phi + TWO_PI * np.round((phi_near - phi) / TWO_PI)
    return phi, ok


def predict_centroids(q: np.ndarray, state: GeometryState, entering: np.ndarray, phi_near: np.ndarray) -> PredictedCentroids:
    phi, ok = choose_crossing(q, state, entering, phi_near)
    r = rotate_vectors(state.axis, phi, q) @ state.setting_rotation.T
    s1 = state.s0 + r
    v = s1 @ np.linalg.inv(state.d_matrix).T
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = v[:, 0] / v[:, 2], v[:, 1] / v[:, 2]
    valid = ok & (v[:, 2] > 0)
    return PredictedCentroids(x, y, phi, s1, valid, r, v)


@numba.njit(cache=True, nogil=True)
def _gradients_kernel(q_dq, phi, r, s1, v, valid, axis, S, axis_lab, ds0, dS_Sinv, D_inv, dD, out):
    """Per reflection i and parameter p: out[:, i, p] = d(x, y, φ)/dp (formulas in the module
    docstring); q_dq[p, i] is d(F·A·h)/dp in the φ-axis frame. Rows without a valid prediction
    stay zero. Explicit 3-vector loops keep the kernel free of allocations."""
    n_par, n = q_dq.shape[0], q_dq.shape[1]
    K = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    R = np.empty((3, 3))
    M = np.empty((3, 3))
    exr = np.empty(3)
    dr = np.empty(3)
    w = np.empty(3)
    for i in range(n):
        if not valid[i]:
            continue
        c, s = np.cos(phi[i]), np.sin(phi[i])
        # M = S·R(ê, φ) with Rodrigues' R = I cos φ + K sin φ + êêᵀ(1 − cos φ)
        for a in range(3):
            for b in range(3):
                R[a, b] = (c if a == b else 0.0) + K[a, b] * s + axis[a] * axis[b] * (1.0 - c)
        for a in range(3):
            for b in range(3):
                M[a, b] = S[a, 0] * R[0, b] + S[a, 1] * R[1, b] + S[a, 2] * R[2, b]
        exr[0] = axis_lab[1] * r[i, 2] - axis_lab[2] * r[i, 1]
        exr[1] = axis_lab[2] * r[i, 0] - axis_lab[0] * r[i, 2]
        exr[2] = axis_lab[0] * r[i, 1] - axis_lab[1] * r[i, 0]
        denominator = s1[i, 0] * exr[0] + s1[i, 1] * exr[1] + s1[i, 2] * exr[2]
        if denominator == 0.0:  # tangent to the Ewald sphere: φ is not differentiable
            continue
        x, y = v[i, 0] / v[i, 2], v[i, 1] / v[i, 2]
        for p in range(n_par):
            numerator = 0.0
            for a in range(3):
                dr[a] = (M[a, 0] * q_dq[p, i, 0] + M[a, 1] * q_dq[p, i, 1] + M[a, 2] * q_dq[p, i, 2]
                         + dS_Sinv[p, a, 0] * r[i, 0] + dS_Sinv[p, a, 1] * r[i, 1] + dS_Sinv[p, a, 2] * r[i, 2])
                numerator += s1[i, a] * dr[a] + r[i, a] * ds0[p, a]
            dphi = -numerator / denominator
            for a in range(3):
                w[a] = (ds0[p, a] + dr[a] + exr[a] * dphi
                        - (dD[p, a, 0] * v[i, 0] + dD[p, a, 1] * v[i, 1] + dD[p, a, 2] * v[i, 2]))
            dv0 = D_inv[0, 0] * w[0] + D_inv[0, 1] * w[1] + D_inv[0, 2] * w[2]
            dv1 = D_inv[1, 0] * w[0] + D_inv[1, 1] * w[1] + D_inv[1, 2] * w[2]
            dv2 = D_inv[2, 0] * w[0] + D_inv[2, 1] * w[1] + D_inv[2, 2] * w[2]
            out[0, i, p] = (dv0 - x * dv2) / v[i, 2]
            out[1, i, p] = (dv1 - y * dv2) / v[i, 2]
            out[2, i, p] = dphi


def centroid_gradients(q: np.ndarray, pred: PredictedCentroids, state: GeometryState, deriv: StateDerivatives):
    """d(x, y, φ)/dp, each of shape (n, P)."""
    S = state.setting_rotation
    n_par, n = deriv.dq.shape[0], len(q)
    out = np.zeros((3, n, n_par))
    if n_par and n:
        _gradients_kernel(
            np.ascontiguousarray(deriv.dq), pred.phi_rad, pred.r, pred.s1, pred.v, pred.valid, state.axis, S, S @ state.axis,
            np.ascontiguousarray(deriv.ds0), np.ascontiguousarray(deriv.dS @ np.linalg.inv(S)),
            np.linalg.inv(state.d_matrix), np.ascontiguousarray(deriv.dD), out,
        )
    return out[0], out[1], out[2]
