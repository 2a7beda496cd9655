"""The physical scaling model of all datasets as one parameter vector (DIALS/Aimless physical model).

Inverse scale factor of observation l in dataset k: g = C_k(x_s) · exp(B_k(x_d)/(2d²)) · A_k(s0c, s1c),
C and B Gaussian smoothers along the rotation (:mod:`smoother`), A the spherical-harmonic absorption
surface (:mod:`absorption`, only for wedges > 60° under ``absorption_correction = auto``). Each term
is linear in its parameters, so C, B and A − 1 are sparse design matrices times the parameter vector,
and dg/dp is those matrices with rows scaled by g/C, g/(2d²) and g/A. Restraints (added to the
target): decay_restraint·ΣB² and surface_weight·ΣP². Wedges under 1° get DIALS' KB model instead
(``model = auto``): one scale and one B per dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from algorithms.errors import DataError
from algorithms.scaling.absorption import absorption_basis, n_absorption_parameters
from algorithms.scaling.data import ScalingData
from algorithms.scaling.smoother import SmootherAxis, auto_intervals_deg


@dataclass
class DatasetModelLayout:
    """Where one dataset's parameters live in the global vector."""

    scale_axis: SmootherAxis
    decay_axis: SmootherAxis | None
    scale_slice: slice
    decay_slice: slice
    absorption_slice: slice

    @property
    def all_slice(self) -> slice:
        return slice(self.scale_slice.start, max(self.scale_slice.stop, self.decay_slice.stop, self.absorption_slice.stop))


@dataclass
class ModelOptions:
    model: str = "auto"  # auto (KB for wedges < 1°, else physical) | physical | KB
    scale_interval: float | None = None
    decay_interval: float | None = None
    decay_correction: bool = True
    absorption_correction: bool | None = None  # None = auto (wedge > 60°)
    lmax: int = 4
    decay_restraint: float = 0.1
    surface_weight: float = 5e5


class PhysicalModel:
    """Design matrices, parameter layout and restraints for all datasets together."""

    def __init__(self, data: ScalingData, options: ModelOptions):
        n = len(data)
        self.d = data.d
        self.layouts: list[DatasetModelLayout] = []
        offset = 0
        for k, scan in enumerate(data.scans):
            if self.is_kb(options, scan.wedge_deg):
                # KB model: one scale and one B for the whole dataset (a smoother with a single value).
                scale_axis = SmootherAxis(n_values=1, rot_interval_deg=scan.wedge_deg, norm_factor=0.0)
                decay_axis = scale_axis if options.decay_correction else None
                absorption = False
            else:
                auto_scale, auto_decay = auto_intervals_deg(scan.wedge_deg)
                scale_axis = SmootherAxis.from_interval(scan.wedge_deg, scan.oscillation_width_deg,
                                                        options.scale_interval or auto_scale)
                decay_axis = (SmootherAxis.from_interval(scan.wedge_deg, scan.oscillation_width_deg,
                                                         options.decay_interval or auto_decay)
                              if options.decay_correction else None)
                absorption = (options.absorption_correction if options.absorption_correction is not None
                              else scan.wedge_deg > 60.0) and data.s0c is not None and data.s1c is not None
            scale_slice = slice(offset, offset + scale_axis.n_values)
            offset = scale_slice.stop
            decay_slice = slice(offset, offset + (decay_axis.n_values if decay_axis else 0))
            offset = decay_slice.stop
            absorption_slice = slice(offset, offset + (n_absorption_parameters(options.lmax) if absorption else 0))
            offset = absorption_slice.stop
            self.layouts.append(DatasetModelLayout(scale_axis, decay_axis, scale_slice, decay_slice, absorption_slice))
        self.n_parameters = offset
        shape = (n, offset)
        self.scale_design = sparse.csr_matrix(shape)
        self.decay_design = sparse.csr_matrix(shape)
        self.absorption_design = sparse.csr_matrix(shape)
        for k, layout in enumerate(self.layouts):
            rows = np.nonzero(data.dataset == k)[0]
            z = data.z_obs[rows]
            self.scale_design = self.scale_design + layout.scale_axis.design(z, rows, layout.scale_slice.start, shape)
            if layout.decay_axis is not None:
                self.decay_design = self.decay_design + layout.decay_axis.design(z, rows, layout.decay_slice.start, shape)
            n_abs = layout.absorption_slice.stop - layout.absorption_slice.start
            if n_abs:
                basis = absorption_basis(data.s0c[rows], data.s1c[rows], options.lmax)
                columns = layout.absorption_slice.start + np.arange(n_abs)
                self.absorption_design = self.absorption_design + sparse.csr_matrix(
                    (basis.ravel(), (np.repeat(rows, n_abs), np.tile(columns, len(rows)))), shape=shape)
        self.scale_design_t = self.scale_design.T.tocsr()
        self.decay_design_t = self.decay_design.T.tocsr()
        self.absorption_design_t = self.absorption_design.T.tocsr()
        self.restraint_weights = np.zeros(offset)
        for layout in self.layouts:
            self.restraint_weights[layout.decay_slice] = options.decay_restraint
            self.restraint_weights[layout.absorption_slice] = options.surface_weight

    @staticmethod
    def is_kb(options: ModelOptions, wedge_deg: float) -> bool:
        """DIALS' model = auto: the physical model unless the wedge is under 1° (then KB)."""
        if options.model not in ("auto", "physical", "KB"):
            raise DataError(f"scaling: model={options.model!r} is not one of auto, physical, KB")
        return options.model == "KB" or (options.model == "auto" and wedge_deg < 1.0)

    def initial_parameters(self) -> np.ndarray:
        p = np.zeros(self.n_parameters)
        for layout in self.layouts:
            p[layout.scale_slice] = 1.0
        return p

    def components(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """C, exp(B/2d²) and A for every observation."""
        scale = self.scale_design @ p
        decay = np.exp((self.decay_design @ p) / (2.0 * self.d**2))
        absorption = 1.0 + self.absorption_design @ p
        return scale, decay, absorption

    def inverse_scale(self, p: np.ndarray) -> np.ndarray:
        scale, decay, absorption = self.components(p)
        return scale * decay * absorption

    def derivative_factors(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """g and the row factors g/C, g/(2d²), g/A that turn the design matrices into dg/dp."""
        scale, decay, absorption = self.components(p)
        g = scale * decay * absorption
        return g, decay * absorption, g / (2.0 * self.d**2), scale * decay

    def jacobian(self, factors: tuple) -> sparse.csr_matrix:
        """dg/dp (n_obs × n_parameters), sparse, from :meth:`derivative_factors`."""
        _, f_scale, f_decay, f_abs = factors
        return (sparse.diags(f_scale) @ self.scale_design + sparse.diags(f_decay) @ self.decay_design
                + sparse.diags(f_abs) @ self.absorption_design).tocsr()

    def gradient_of_sum(self, factors: tuple, per_observation: np.ndarray) -> np.ndarray:
        """Σ_l v_l · dg_l/dp without forming the Jacobian (``factors`` from :meth:`derivative_factors`)."""
        _, f_scale, f_decay, f_abs = factors
        return (self.scale_design_t @ (per_observation * f_scale) + self.decay_design_t @ (per_observation * f_decay)
                + self.absorption_design_t @ (per_observation * f_abs))

    def sum_of_squared_derivatives(self, factors: tuple, per_observation: np.ndarray) -> np.ndarray:
        """Σ_l v_l · (dg_l/dp)² (a parameter enters one design matrix only), without the Jacobian."""
        _, f_scale, f_decay, f_abs = factors
        return (self.scale_design_t.power(2) @ (per_observation * f_scale**2)
                + self.decay_design_t.power(2) @ (per_observation * f_decay**2)
                + self.absorption_design_t.power(2) @ (per_observation * f_abs**2))

    def restraint(self, p: np.ndarray) -> tuple[float, np.ndarray]:
        return float(np.sum(self.restraint_weights * p * p)), 2.0 * self.restraint_weights * p
