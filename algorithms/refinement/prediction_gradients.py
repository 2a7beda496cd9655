"""Predicted (x, y, φ) of indexed reflections and their analytic derivatives.

For q = F·A·h (φ-axis frame), the lab reciprocal vector at angle φ is r = S·R(ê, φ)·q and
s1 = s0 + r. φ solves |s1| = |s0|; the observed ``entering`` flag picks the crossing and φ is
moved by whole turns next to the observed angle. x, y come from v = D⁻¹·s1 (x = v₀/v₂, y = v₁/v₂).

Derivatives for a parameter p (at fixed φ: dr = dS·S⁻¹·r + S·R·dq):
    dφ  = −(s1·dr + r·ds0) / (s1·(ê_lab × r))        (differentiating s1·s1 = s0·s0)
    ds1 = ds0 + dr + (ê_lab × r)·dφ
    dv  = D⁻¹·(ds1 − dD·v),  dx = (dv₀ − x·dv₂)/v₂,  dy = (dv₁ − y·dv₂)/v₂
(Sauter et al. 2006, J. Appl. Cryst. 39, 799; Waterman et al. 2016, Acta Cryst. D72, 558.)
Everything is vectorised over reflections (n) and parameters (P).
"""
from __future__ import annotations

from dataclasses import dataclass

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


def centroid_gradients(q: np.ndarray, pred: PredictedCentroids, state: GeometryState, deriv: StateDerivatives):
    """d(x, y, φ)/dp, each of shape (n, P)."""
    S = state.setting_rotation
    axis_lab = S @ state.axis
    r, s1, v = pred.r, pred.s1, pred.v
    # derivative of r at fixed φ
    rotated_dq = rotate_vectors(state.axis, pred.phi_rad, deriv.dq) @ S.T  # (P, n, 3)
    dS_Sinv = deriv.dS @ np.linalg.inv(S)  # (P, 3, 3)
    dr = rotated_dq + np.einsum("pij,nj->pni", dS_Sinv, r)
    e_cross_r = np.cross(axis_lab, r)  # (n, 3)
    numerator = np.einsum("nk,pnk->pn", s1, dr) + deriv.ds0 @ r.T  # (P, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        dphi = -numerator / np.sum(s1 * e_cross_r, axis=1)
    ds1 = deriv.ds0[:, None, :] + dr + e_cross_r[None] * dphi[..., None]
    D_inv = np.linalg.inv(state.d_matrix)
    dv = (ds1 - np.einsum("pij,nj->pni", deriv.dD, v)) @ D_inv.T
    with np.errstate(divide="ignore", invalid="ignore"):
        dx = (dv[..., 0] - pred.x_mm * dv[..., 2]) / v[:, 2]
        dy = (dv[..., 1] - pred.y_mm * dv[..., 2]) / v[:, 2]
    return dx.T, dy.T, dphi.T
