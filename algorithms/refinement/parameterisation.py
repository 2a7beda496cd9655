"""Model parameterisations for geometry refinement (DIALS' conventions and parameter names).

Each parameterisation maps its parameter values to a model state and returns the analytic
derivative of that state with respect to every parameter (angles in mrad):

- :class:`BeamParameterisation` — s0 = ν·Mu2·Mu1·ŝ0₀ (Mu1 about dir1 ⟂ s0 in the spindle–beam
  plane, Mu2 about dir2 = unit(s0 × ê) normal to it).
- :class:`OrientationParameterisation` — U = Φ3(ẑ)·Φ2(ŷ)·Φ1(x̂)·U₀.
- :class:`DetectorParameterisation` — single panel: Dist, Shift1, Shift2, Tau1..3;
  dorg = T321·(P0 + s1 d1₀ + s2 d2₀) − T32·P0 + P0 with P0 = Dist·n̂₀.
- :class:`GoniometerParameterisation` — S = Γ2·Γ1·S₀.
The unit cell lives in :mod:`algorithms.refinement.unit_cell`.

Reference: Waterman et al. (2016) Acta Cryst. D72, 558–575 (DIALS refinement).
"""
from __future__ import annotations

import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Beam, Detector, Goniometer, rotation_matrix
from algorithms.refinement.rotations import MRAD, skew, unit


def _rot(axis: np.ndarray, angle_mrad: float) -> np.ndarray:
    return rotation_matrix(axis, angle_mrad * MRAD)


class BeamParameterisation:
    names = ["Mu1", "Mu2", "nu"]

    def __init__(self, beam: Beam, goniometer: Goniometer):
        s0 = beam.s0
        axis = goniometer.rotation_axis_lab
        self.s0_unit = unit(s0)
        self.dir2 = unit(np.cross(s0, axis))
        self.dir1 = unit(np.cross(self.dir2, s0))
        self.initial_values = np.array([0.0, 0.0, float(np.linalg.norm(s0))])

    def compose(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mu1, mu2, nu = values
        Mu1, Mu2 = _rot(self.dir1, mu1), _rot(self.dir2, mu2)
        direction = Mu2 @ Mu1 @ self.s0_unit
        ds0 = np.array(
            [
                nu * Mu2 @ skew(self.dir1) @ Mu1 @ self.s0_unit * MRAD,
                nu * skew(self.dir2) @ direction * MRAD,
                direction,
            ]
        )
        return nu * direction, ds0

    @staticmethod
    def fixed(fix: tuple[str, ...]) -> np.ndarray:
        _check_fix("beam", fix, {"all", "in_spindle_plane", "out_spindle_plane", "wavelength"})
        if "all" in fix:
            return np.ones(3, bool)
        return np.array(["in_spindle_plane" in fix, "out_spindle_plane" in fix, "wavelength" in fix])


class OrientationParameterisation:
    names = ["phi1", "phi2", "phi3"]
    axes = np.eye(3)

    def __init__(self, U: np.ndarray):
        self.U0 = np.asarray(U, dtype=float)
        self.initial_values = np.zeros(3)

    def compose(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """U and dU/dp (3, 3, 3); vectorised: values (..., 3) → U (..., 3, 3), dU (..., 3, 3, 3)."""
        values = np.asarray(values, dtype=float)
        P1, P2, P3 = (rotation_matrix(a, values[..., k] * MRAD) for k, a in enumerate(self.axes))
        K1, K2, K3 = (skew(a) * MRAD for a in self.axes)
        P21U0 = P2 @ P1 @ self.U0
        U = P3 @ P21U0
        dU = np.stack([P3 @ P2 @ K1 @ P1 @ self.U0, P3 @ K2 @ P21U0, K3 @ U], axis=-3)
        return U, dU


class DetectorParameterisation:
    names = ["Dist", "Shift1", "Shift2", "Tau1", "Tau2", "Tau3"]

    def __init__(self, detector: Detector):
        self.d1 = detector.fast_axis.copy()
        self.d2 = detector.slow_axis.copy()
        self.dn = unit(np.cross(self.d1, self.d2))
        width_mm, height_mm = detector.image_size_mm
        # the panel origin relative to its centre, in the panel frame
        self.offset = np.array([-0.5 * width_mm, -0.5 * height_mm])
        centre = detector.origin - self.offset[0] * self.d1 - self.offset[1] * self.d2
        dist = float(centre @ self.dn)
        shift = centre - dist * self.dn
        self.initial_values = np.array([dist, shift @ self.d1, shift @ self.d2, 0.0, 0.0, 0.0])

    def compose(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """D = [d1 d2 o] and dD/dp (6, 3, 3)."""
        dist, shift1, shift2, tau1, tau2, tau3 = values
        T1, T2, T3 = _rot(self.dn, tau1), _rot(self.d1, tau2), _rot(self.d2, tau3)
        T32 = T3 @ T2
        T321 = T32 @ T1
        P0 = dist * self.dn
        dsv = P0 + shift1 * self.d1 + shift2 * self.d2
        dorg = T321 @ dsv - T32 @ P0 + P0

        def frame(T321_, dorg_):
            d1, d2 = T321_ @ self.d1, T321_ @ self.d2
            return np.column_stack([d1, d2, dorg_ + self.offset[0] * d1 + self.offset[1] * d2])

        D = frame(T321, dorg)
        zero = np.zeros((3, 3))
        dT32 = [zero, T3 @ skew(self.d1) @ T2 * MRAD, skew(self.d2) @ T32 * MRAD]
        dT321 = [T32 @ skew(self.dn) @ T1 * MRAD, dT32[1] @ T1, dT32[2] @ T1]
        dD = np.zeros((6, 3, 3))
        dD[0, :, 2] = T321 @ self.dn - T32 @ self.dn + self.dn
        dD[1, :, 2] = T321 @ self.d1
        dD[2, :, 2] = T321 @ self.d2
        for k in range(3):
            dD[3 + k] = frame(dT321[k], dT321[k] @ dsv - dT32[k] @ P0)
        return D, dD

    @staticmethod
    def fixed(fix: tuple[str, ...]) -> np.ndarray:
        _check_fix("detector", fix, {"all", "position", "orientation", "distance"})
        if "all" in fix:
            return np.ones(6, bool)
        fixed = np.zeros(6, bool)
        if "position" in fix:
            fixed[[0, 1, 2]] = True
        if "orientation" in fix:
            fixed[[3, 4, 5]] = True
        if "distance" in fix:  # tilts about in-plane axes change the distance too
            fixed[[0, 4, 5]] = True
        return fixed


class GoniometerParameterisation:
    names = ["Gamma1", "Gamma2"]

    def __init__(self, goniometer: Goniometer, beam: Beam):
        axis = goniometer.rotation_axis_lab
        self.dir2 = unit(np.cross(axis, unit(beam.s0)))
        self.dir1 = unit(np.cross(self.dir2, axis))
        self.S0 = goniometer.setting_rotation.copy()
        self.initial_values = np.zeros(2)

    def compose(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        G1, G2 = _rot(self.dir1, values[0]), _rot(self.dir2, values[1])
        S = G2 @ G1 @ self.S0
        dS = np.array([G2 @ skew(self.dir1) @ G1 @ self.S0 * MRAD, skew(self.dir2) @ S * MRAD])
        return S, dS

    @staticmethod
    def fixed(fix: tuple[str, ...]) -> np.ndarray:
        _check_fix("goniometer", fix, {"all", "in_beam_plane", "out_beam_plane"})
        if "all" in fix:
            return np.ones(2, bool)
        return np.array(["in_beam_plane" in fix, "out_beam_plane" in fix])


def crystal_fixed(fix: tuple[str, ...]) -> tuple[bool, bool]:
    """(orientation fixed, cell fixed) from crystal.fix."""
    _check_fix("crystal", fix, {"all", "cell", "orientation"})
    return ("all" in fix or "orientation" in fix), ("all" in fix or "cell" in fix)


def _check_fix(model: str, fix: tuple[str, ...], allowed: set[str]) -> None:
    unknown = [f for f in fix if f not in allowed]
    if unknown:
        raise DataError(
            f"refinement.parameterisation.{model}.fix: unknown value(s) {', '.join(unknown)}; "
            f"choose from {', '.join(sorted(allowed))} (or None to refine everything)"
        )
