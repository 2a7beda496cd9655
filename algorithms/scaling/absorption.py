"""Absorption surface of the physical model: real spherical harmonics of the crystal-frame beam directions.

A = 1 + Σ_{l=1..lmax} Σ_{m=−l..l} P_lm · ½[Y_lm(s0c) + Y_lm(s1c)], with real harmonics
m < 0: √2(−1)^m Im Y_l|m|; m = 0: Re Y_l0; m > 0: √2(−1)^m Re Y_lm (Aimless/DIALS convention).
Crystal frame: s1 and the beam's sample→source direction rotated by −φ about the rotation axis, then
by the smallest rotation taking the axis onto z. With these conventions DIALS' stored quartz model
reproduces its inverse scale factors to 10⁻⁶ (tests/algorithms/test_scaling_dials.py).
"""
from __future__ import annotations

import numpy as np
from scipy import special

from algorithms.geometry.models import rotation_matrix


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


def axis_to_z_rotation(axis: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector ``axis`` onto (0, 0, 1)."""
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    z = np.array([0.0, 0.0, 1.0])
    normal = np.cross(a, z)
    sin_angle = np.linalg.norm(normal)
    if sin_angle < 1e-12:
        return np.eye(3) if a[2] > 0 else np.diag([1.0, -1.0, -1.0])
    return rotation_matrix(normal / sin_angle, np.arctan2(sin_angle, a @ z))


def crystal_frame_directions(s1: np.ndarray, phi_rad: np.ndarray, rotation_axis: np.ndarray,
                             beam_direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s0c, s1c): unit beam (sample→source) and diffracted directions in the crystal frame.

    ``beam_direction`` is dxtbx's Beam.direction (towards the source); φ is the observed rotation angle."""
    axis = np.asarray(rotation_axis, float) / np.linalg.norm(rotation_axis)
    s1_unit = np.asarray(s1, float) / np.linalg.norm(s1, axis=1, keepdims=True)
    beam = np.asarray(beam_direction, float) / np.linalg.norm(beam_direction)
    back = rotation_matrix(axis, -np.asarray(phi_rad, float))  # (n, 3, 3)
    align = axis_to_z_rotation(axis)
    s1c = np.einsum("ij,njk,nk->ni", align, back, s1_unit)
    s0c = np.einsum("ij,njk,k->ni", align, back, beam)
    return s0c, s1c
