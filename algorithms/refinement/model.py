"""The parameterised experiment: every model's parameters in one vector, the state they give,
and the state derivatives that :mod:`prediction_gradients` chains to (x, y, φ).

Parameter order (DIALS'): Beam, Crystal orientation, Crystal unit cell, Detector, Goniometer.
Static crystal: A = U·B. Scan-varying crystal (§5.6 of algorithms.md): every orientation and
unit-cell parameter becomes ``n_values`` smoother values; the model is evaluated at the centre
of each 1° block of observed φ, and a reflection uses its block's A.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from algorithms.geometry.models import Experiment
from algorithms.refinement.parameterisation import (
    BeamParameterisation,
    DetectorParameterisation,
    GoniometerParameterisation,
    OrientationParameterisation,
)
from algorithms.refinement.prediction_gradients import GeometryState, StateDerivatives
from algorithms.refinement.smoother import GaussianSmoother
from algorithms.refinement.unit_cell import MetricTensorParameterisation

BLOCK_WIDTH_DEG = 1.0


@dataclass
class ParameterGroup:
    model: str  # "Beam", "Crystal orientation", "Crystal unit cell", "Detector", "Goniometer"
    names: list[str]
    values: np.ndarray
    fixed: np.ndarray
    scan_varying: bool = False

    @property
    def size(self) -> int:
        return len(self.values)


class ParameterisedModel:
    """``fixed`` maps each group name to its fixed mask (a bool broadcasts over the group)."""

    def __init__(self, experiment: Experiment, fixed: dict[str, np.ndarray | bool], scan_varying: bool = False,
                 interval_width_degrees: float = 36.0):
        self.experiment = experiment
        crystal = experiment.crystal
        self.beam = BeamParameterisation(experiment.beam, experiment.goniometer)
        self.cell = MetricTensorParameterisation(crystal.B, crystal.space_group)
        self.orientation = OrientationParameterisation(crystal.U)
        self.detector = DetectorParameterisation(experiment.detector)
        self.goniometer = GoniometerParameterisation(experiment.goniometer, experiment.beam)
        self.scan_varying = scan_varying
        scan = experiment.scan
        if scan_varying:
            width = abs(scan.oscillation_range_deg[1] - scan.oscillation_range_deg[0])
            self.smoother = GaussianSmoother(scan.array_range, width, interval_width_degrees)
            nv = self.smoother.num_values
        groups = [("Beam", self.beam.names, self.beam.initial_values, fixed["Beam"], False)]
        for label, param in (("Crystal orientation", self.orientation), ("Crystal unit cell", self.cell)):
            fixed_local = np.broadcast_to(np.asarray(fixed[label], bool), (len(param.names),))
            if scan_varying:
                names = [f"{n}_sample{j}" for n in param.names for j in range(nv)]
                values = np.repeat(param.initial_values, nv)
                groups.append((label, names, values, np.repeat(fixed_local, nv), True))
            else:
                groups.append((label, list(param.names), param.initial_values.copy(), fixed_local, False))
        groups.append(("Detector", self.detector.names, self.detector.initial_values, fixed["Detector"], False))
        groups.append(("Goniometer", self.goniometer.names, self.goniometer.initial_values, fixed["Goniometer"], False))
        self.groups = [ParameterGroup(m, list(n), np.array(v, float), np.array(f, bool), sv) for m, n, v, f, sv in groups]

    # -- the parameter vector ---------------------------------------------------------------
    def _offsets(self) -> list[int]:
        return list(np.cumsum([0] + [g.size for g in self.groups]))

    @property
    def free_mask(self) -> np.ndarray:
        return np.concatenate([~g.fixed for g in self.groups])

    @property
    def free_names(self) -> list[str]:
        prefix = {"Beam": "Beam1", "Crystal orientation": "Crystal1", "Crystal unit cell": "Crystal1",
                  "Detector": "Detector1", "Goniometer": "Goniometer1"}
        return [prefix[g.model] + n for g in self.groups for n, f in zip(g.names, g.fixed) if not f]

    def full_values(self, x: np.ndarray | None = None) -> np.ndarray:
        full = np.concatenate([g.values for g in self.groups])
        if x is not None:
            full[self.free_mask] = x
        return full

    def free_values(self) -> np.ndarray:
        return self.full_values()[self.free_mask]

    def set_free_values(self, x: np.ndarray) -> None:
        full = self.full_values(x)
        off = self._offsets()
        for k, g in enumerate(self.groups):
            g.values = full[off[k]:off[k + 1]].copy()

    def group_slices(self) -> dict[str, slice]:
        off = self._offsets()
        return {g.model: slice(off[k], off[k + 1]) for k, g in enumerate(self.groups)}

    def group(self, model: str) -> ParameterGroup:
        return next(g for g in self.groups if g.model == model)

    # -- blocks for scan-varying crystals ---------------------------------------------------
    def block_centres(self, phi_obs_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(block index per observation, block centres in image units)."""
        scan = self.experiment.scan
        z0, z1 = scan.array_range
        width = abs(scan.oscillation_range_deg[1] - scan.oscillation_range_deg[0])
        n_blocks = max(int(round(width / BLOCK_WIDTH_DEG)), 1)
        z = scan.array_index_from_angle(np.degrees(phi_obs_rad))
        block = np.clip(((z - z0) / (z1 - z0) * n_blocks).astype(int), 0, n_blocks - 1)
        centres = z0 + (np.arange(n_blocks) + 0.5) * (z1 - z0) / n_blocks
        return block, centres

    # -- crystal state ----------------------------------------------------------------------
    def crystal_at(self, full: np.ndarray, t: np.ndarray | None = None):
        """A and dA/d(local params) (3 orientation + k cell), static or at image positions t."""
        sl = self.group_slices()
        o_vals, c_vals = full[sl["Crystal orientation"]], full[sl["Crystal unit cell"]]
        if not self.scan_varying:
            return self._compose_crystal(o_vals, c_vals)
        w = self.smoother.weights(t)  # (m, nv)
        nv = self.smoother.num_values
        o_local = w @ o_vals.reshape(-1, nv).T  # (m, 3)
        c_local = w @ c_vals.reshape(-1, nv).T
        A, dA = self._compose_crystal(o_local, c_local)
        return A, dA, w

    def _compose_crystal(self, o_vals, c_vals):
        """A = U·B and dA/d(local params) (…, 3 + k, 3, 3), vectorised over leading axes."""
        U, dU = self.orientation.compose(o_vals)
        B, dB = self.cell.compose(c_vals)
        return U @ B, np.concatenate([dU @ B[..., None, :, :], U[..., None, :, :] @ dB], axis=-3)

    def state(self, full: np.ndarray) -> tuple[GeometryState, np.ndarray, np.ndarray, np.ndarray]:
        """Geometry state and local derivatives ds0 (3, 3), dS (2, 3, 3), dD (6, 3, 3)."""
        sl = self.group_slices()
        s0, ds0 = self.beam.compose(full[sl["Beam"]])
        D, dD = self.detector.compose(full[sl["Detector"]])
        S, dS = self.goniometer.compose(full[sl["Goniometer"]])
        g = self.experiment.goniometer
        return GeometryState(s0, S, g.rotation_axis, g.fixed_rotation, D), ds0, dS, dD

    def evaluate(self, full: np.ndarray, hkl: np.ndarray, phi_obs: np.ndarray, with_derivatives: bool = True):
        """GeometryState, q = F·A·h per reflection and (optionally) StateDerivatives over the
        free parameters."""
        state, ds0_l, dS_l, dD_l = self.state(full)
        F = state.fixed_rotation
        h = hkl.astype(float)
        n = len(h)
        if self.scan_varying:
            block, centres = self.block_centres(phi_obs)
            A_b, dA_b, w_b = self.crystal_at(full, centres)
            q = ((F @ A_b)[block] @ h[:, :, None])[:, :, 0]
        else:
            A, dA = self.crystal_at(full)
            q = h @ (F @ A).T
        if not with_derivatives:
            return state, q, None
        sl = self.group_slices()
        n_full = len(full)
        ds0 = np.zeros((n_full, 3))
        dS = np.zeros((n_full, 3, 3))
        dD = np.zeros((n_full, 3, 3))
        dq = np.zeros((n_full, n, 3))
        ds0[sl["Beam"]] = ds0_l
        dD[sl["Detector"]] = dD_l
        dS[sl["Goniometer"]] = dS_l
        crystal_rows = np.r_[sl["Crystal orientation"], sl["Crystal unit cell"]]
        if self.scan_varying:
            dq_local = np.moveaxis(((F @ dA_b)[block] @ h[:, None, :, None])[..., 0], 1, 0)  # (L, n, 3)
            nv = self.smoother.num_values
            w = w_b[block]  # (n, nv)
            for l in range(dq_local.shape[0]):
                for j in range(nv):
                    dq[crystal_rows[l * nv + j]] = dq_local[l] * w[:, j:j + 1]
        else:
            dq[crystal_rows] = h @ np.swapaxes(F @ dA, 1, 2)
        free = self.free_mask
        return state, q, StateDerivatives(ds0[free], dS[free], dq[free], dD[free])

    # -- results ----------------------------------------------------------------------------
    def apply(self, experiment: Experiment) -> Experiment:
        """A copy of the experiment carrying the models at the current parameter values."""
        out = experiment.copy()
        full = self.full_values()
        state, _, _, _ = self.state(full)
        out.beam.s0 = state.s0
        D = state.d_matrix
        out.detector.fast_axis, out.detector.slow_axis, out.detector.origin = D[:, 0].copy(), D[:, 1].copy(), D[:, 2].copy()
        out.goniometer.setting_rotation = state.setting_rotation.copy()
        if self.scan_varying:
            z0, z1 = experiment.scan.array_range
            A_points, _, _ = self.crystal_at(full, np.arange(z0, z1 + 1, dtype=float))
            out.crystal.A_at_scan_points = A_points
        else:
            out.crystal.A, _ = self.crystal_at(full)
            out.crystal.A_at_scan_points = None
        return out
