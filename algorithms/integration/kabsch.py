"""The XDS/Kabsch reflection-centred frame (Kabsch 2010, Acta Cryst. D66, 133–144).

For a reflection with diffracted beam s1: e1 = unit(s1 × s0), e2 = unit(s1 × e1),
e3 = unit(s1 + s0) and ζ = m2·e1 with m2 the lab rotation axis. A nearby beam direction s′
(|s′| = |s1|) has c1 = e1·(s′ − s1)/|s1|, c2 = e2·(s′ − s1)/|s1| (≈ angles, rad); an angle φ′
has c3 = ζ(φ′ − φ).
"""
from __future__ import annotations

import numpy as np


def kabsch_frame(s1: np.ndarray, s0: np.ndarray, axis_lab: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return e1, e2, e3 (each (n, 3)) and ζ (n,) for diffracted beams ``s1`` (n, 3)."""
    s1 = np.atleast_2d(s1)
    e1 = np.cross(s1, s0)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(s1, e1)
    e2 /= np.linalg.norm(e2, axis=1, keepdims=True)
    e3 = s1 + s0
    e3 /= np.linalg.norm(e3, axis=1, keepdims=True)
    zeta = e1 @ axis_lab
    return e1, e2, e3, zeta


def lorentz_polarisation(s1: np.ndarray, s0: np.ndarray, axis_lab: np.ndarray, polarization_normal: np.ndarray,
                         polarization_fraction: float, apply_polarisation: bool) -> np.ndarray:
    """DIALS' ``lp`` = L/P with L = |s1·(ê × s0)|/(|s1||s0|) (the inverse Lorentz factor) and the
    X-ray polarisation factor P (omitted for electrons, which are not polarised).

    Multiplying a recorded intensity by ``lp`` corrects it.
    """
    s1 = np.atleast_2d(s1)
    n1 = np.linalg.norm(s1, axis=1)
    L = np.abs(s1 @ np.cross(axis_lab, s0)) / (n1 * np.linalg.norm(s0))
    if not apply_polarisation:
        return L
    s1_unit = s1 / n1[:, None]
    cos2t = s1_unit @ (s0 / np.linalg.norm(s0))
    f = polarization_fraction
    n = polarization_normal / np.linalg.norm(polarization_normal)
    P = (1 - 2 * f) * (1 - (s1_unit @ n) ** 2) + f * (1 + cos2t**2)
    return L / P
