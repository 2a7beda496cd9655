"""Geometry refinement of one rotation experiment against indexed spot centroids (dials.refine).

Residuals Δx, Δy (mm) and Δφ (rad) with weights 1/variance, analytic derivatives
(:mod:`prediction_gradients`), parameterisations in DIALS' names (:mod:`parameterisation`,
:mod:`unit_cell`), outlier rejection once after the first prediction (:mod:`outliers`),
auto-reduction, unit-cell ``tie_to_target`` restraints and LM/Gauss–Newton (:mod:`engine`).
With ``scan_varying=True`` one static macro-cycle runs first, then the scan-varying one (as
dials.refine's ``scan_varying=Auto``); restraints act only on the static cell.
Reference: Waterman et al. (2016) Acta Cryst. D72, 558–575.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from algorithms.errors import DataError
from algorithms.geometry.models import Experiment
from algorithms.reflection_table import ReflectionTable
from algorithms.refinement.engine import Evaluation, minimise
from algorithms.refinement.model import ParameterisedModel
from algorithms.refinement.outliers import reject_outliers
from algorithms.refinement.parameterisation import (
    BeamParameterisation,
    DetectorParameterisation,
    GoniometerParameterisation,
    crystal_fixed,
)
from algorithms.refinement.prediction_gradients import GeometryState, centroid_gradients, predict_centroids
from algorithms.refinement.reflection_manager import entering_flags, observed_s1, sample_rows, usable_rows
from algorithms.refinement.rotations import xyz_angles_from_rotation
from algorithms.refinement.unit_cell import b_from_metric, cell_from_metric


@dataclass
class RefinementOptions:
    beam_fix: tuple[str, ...] = ("in_spindle_plane", "wavelength")  # DIALS beam.fix; "all"
    crystal_fix: tuple[str, ...] = ()  # "cell", "orientation", "all"
    detector_fix: tuple[str, ...] = ()  # "distance" (Dist, Tau2, Tau3), "orientation", "position", "all"
    goniometer_fix: tuple[str, ...] = ("all",)  # () == None frees both Gamma angles; "in_beam_plane", "out_beam_plane"
    outlier_algorithm: str = "mcd"  # "tukey", "mcd", "null"
    outlier_iqr_multiplier: float = 1.5  # Tukey fences (dials.index's candidate refinement: 3.0)
    outlier_block_width_deg: float | None = 18.0  # φ blocks judged separately; None = one block
    max_iterations: int = 100
    reflections_per_degree: float | None = None  # None = all
    close_to_spindle_cutoff: float = 0.02
    unit_cell_restraints: list[tuple[tuple[float, ...], tuple[float, ...]]] = field(default_factory=list)  # tie_to_target (values, sigmas)
    scan_varying: bool = False
    interval_width_degrees: float = 36.0
    auto_reduction_action: str = "fail"  # "fix"; "remove" acts as "fix" (one experiment: no other reflections to keep)
    min_nref_per_parameter: int = 5
    engine: str = "LevMar"  # "GaussNewton"


@dataclass
class RefinementResult:
    experiment: Experiment  # refined copy (A_at_scan_points if scan-varying)
    used_in_refinement: np.ndarray  # bool per input row
    centroid_outlier: np.ndarray  # bool per input row
    xyzcal_mm: np.ndarray  # (n, 3) for every input row with a valid index (nan otherwise)
    xyzcal_px: np.ndarray
    rmsds: dict  # x_px, y_px, z_images, x_mm, y_mm, phi_deg, nref
    history: list[dict]  # step, nref, rmsd_x_mm, rmsd_y_mm, rmsd_phi_deg, macrocycle
    termination: str
    parameter_names: list[str]
    parameter_values: np.ndarray
    parameter_esds: np.ndarray
    cell_esds: tuple[float, ...] | None  # a, b, c, α, β, γ
    scan_varying_model: dict | None = None  # per scan point: z, phi_deg, unit_cell, volume, orientation_deg
    residual_summaries: list[dict] = field(default_factory=list)  # per macro-cycle, at the first prediction


class IndexedPredictions(NamedTuple):
    xyzcal_mm: np.ndarray  # (n, 3) x_mm, y_mm, φ_rad
    s1: np.ndarray  # (n, 3)
    xyzcal_px: np.ndarray  # (n, 3) x_px, y_px, z (0-based array index)
    valid: np.ndarray  # (n,) bool: a crossing with the requested entering flag hits the panel plane


# ------------------------------------------------------------------------------- prediction


def _static_state(experiment: Experiment) -> GeometryState:
    g = experiment.goniometer
    return GeometryState(experiment.beam.s0, g.setting_rotation, g.rotation_axis, g.fixed_rotation, experiment.detector.d_matrix)


def _A_at_z(crystal, scan, z: np.ndarray) -> np.ndarray:
    """Scan-varying A linearly interpolated between scan points (image boundaries)."""
    points = crystal.A_at_scan_points
    t = np.clip(np.asarray(z, float) - scan.array_range[0], 0.0, len(points) - 1.0)
    i = np.minimum(np.floor(t).astype(int), len(points) - 2)
    f = (t - i)[:, None, None]
    return points[i] * (1.0 - f) + points[i + 1] * f


def predict_for_indexed(experiment: Experiment, miller_index: np.ndarray, entering: np.ndarray, phi_obs: np.ndarray) -> IndexedPredictions:
    """Predicted centroids of indexed reflections, taking the Ewald-sphere crossing with the
    observation's entering flag, nearest (by whole turns) to the observed φ (rad).

    With ``crystal.A_at_scan_points`` the A of the predicted angle is used (interpolated between
    scan points, iterated to self-consistency), otherwise the static A.
    """
    hkl = np.atleast_2d(np.asarray(miller_index)).astype(float)
    entering = np.asarray(entering, bool)
    phi = np.asarray(phi_obs, float).copy()
    state = _static_state(experiment)
    crystal, scan, F = experiment.crystal, experiment.scan, experiment.goniometer.fixed_rotation
    if crystal.A_at_scan_points is None:
        pred = predict_centroids(hkl @ (F @ crystal.A).T, state, entering, phi)
    else:
        for _ in range(4):  # converges to far below 0.01 px in a couple of passes
            A = _A_at_z(crystal, scan, scan.array_index_from_angle(np.degrees(phi)))
            pred = predict_centroids(np.einsum("ij,njk,nk->ni", F, A, hkl), state, entering, phi)
            phi = np.where(pred.valid, pred.phi_rad, phi)
    px = np.asarray(experiment.detector.pixel_size)
    xyz_mm = np.column_stack([pred.x_mm, pred.y_mm, pred.phi_rad])
    xyz_px = np.column_stack([xyz_mm[:, :2] / px, scan.array_index_from_angle(np.degrees(pred.phi_rad))])
    xyz_mm[~pred.valid] = np.nan
    xyz_px[~pred.valid] = np.nan
    return IndexedPredictions(xyz_mm, pred.s1, xyz_px, pred.valid)


# ------------------------------------------------------------------------------- restraints


class CellRestraints:
    """tie_to_target pseudo-observations (p_k(G*) − target_k)/σ_k on the free cell parameters."""

    def __init__(self, model: ParameterisedModel, restraints, free_columns: np.ndarray):
        self.model = model
        self.free_columns = free_columns  # positions of the free cell parameters in x
        group = model.group("Crystal unit cell")
        self.free_local = ~group.fixed
        targets = []
        for values, sig in restraints:
            values, sig = np.asarray(values, float), np.asarray(sig, float)
            if values.shape != (6,) or sig.shape != (6,):
                raise DataError("refinement unit_cell.restraints.tie_to_target: give 6 values (a,b,c,alpha,beta,gamma) and 6 sigmas")
            jac = model.cell.cell_jacobian(group.values)[:, self.free_local]
            scale = np.max(np.abs(jac)) if jac.size else 0.0
            keep = []
            for k in np.argsort(sig, kind="stable"):  # stronger restraints first
                if sig[k] <= 0 or scale == 0 or np.max(np.abs(jac[k])) < 1e-9 * scale:
                    continue  # disabled, or fixed by symmetry
                if any(np.allclose(jac[k], jac[j], rtol=1e-6, atol=1e-12 * scale) for j in keep):
                    continue  # equal to a stronger one by symmetry (a = b …)
                keep.append(k)
            for k in sorted(keep):
                targets.append((k, values[k], sig[k]))
        self.terms = targets

    def __len__(self) -> int:
        return len(self.terms)

    def residuals_and_jacobian(self, full: np.ndarray, n_free: int):
        sl = self.model.group_slices()["Crystal unit cell"]
        values = full[sl]
        cell = self.model.cell.cell(values)
        jac_cell = self.model.cell.cell_jacobian(values)[:, self.free_local]
        r = np.array([(cell[k] - t) / s for k, t, s in self.terms])
        J = np.zeros((len(self.terms), n_free))
        for row, (k, _, s) in enumerate(self.terms):
            J[row, self.free_columns] = jac_cell[k] / s
        return r, J


# ------------------------------------------------------------------------------- macro-cycle


@dataclass
class _Observations:
    hkl: np.ndarray
    entering: np.ndarray
    obs: np.ndarray
    var: np.ndarray


def _fixed_masks(options: RefinementOptions) -> dict[str, np.ndarray | bool]:
    """Fixed masks per parameter group; a fix option of None means nothing fixed (DIALS' None)."""
    def names(fix) -> tuple[str, ...]:
        return (fix,) if isinstance(fix, str) else tuple(fix or ())

    orientation_fixed, cell_fixed = crystal_fixed(names(options.crystal_fix))
    return {
        "Beam": BeamParameterisation.fixed(names(options.beam_fix)),
        "Crystal orientation": np.full(3, orientation_fixed),
        "Crystal unit cell": cell_fixed,  # broadcast over the space group's cell parameters
        "Detector": DetectorParameterisation.fixed(names(options.detector_fix)),
        "Goniometer": GoniometerParameterisation.fixed(names(options.goniometer_fix)),
    }


class _Macrocycle:
    """One refinement run: first prediction, outlier rejection, working-set sampling,
    auto-reduction, restraints, then the engine."""

    def __init__(self, experiment: Experiment, data: _Observations, rows: np.ndarray, options: RefinementOptions, scan_varying: bool):
        self.model = ParameterisedModel(experiment, _fixed_masks(options), scan_varying, options.interval_width_degrees)
        self.data, self.options, self.experiment = data, options, experiment
        self.rows = rows
        self.restraints = None
        self.outliers = np.zeros(0, int)
        self.residual_summary: dict = {}

    def evaluate(self, x: np.ndarray, with_jacobian: bool = True) -> tuple[Evaluation, np.ndarray, np.ndarray]:
        """Weighted residuals (x block, y block, φ block, restraints) and Jacobian of the working
        rows, their unweighted residuals (n, 3) and which predictions are valid."""
        rows = self.rows
        d = self.data
        full = self.model.full_values(x)
        state, q, deriv = self.model.evaluate(full, d.hkl[rows], d.obs[rows, 2], with_jacobian)
        pred = predict_centroids(q, state, d.entering[rows], d.obs[rows, 2])
        calc = np.column_stack([pred.x_mm, pred.y_mm, pred.phi_rad])
        delta = calc - d.obs[rows]
        valid = pred.valid & np.all(np.isfinite(delta), axis=1)
        delta[~valid] = 0.0
        sqrt_w = np.sqrt(1.0 / d.var[rows]) * valid[:, None]
        weighted = (delta * sqrt_w).T.ravel()
        n_free = len(x)
        if with_jacobian and n_free:
            dx, dy, dphi = centroid_gradients(q, pred, state, deriv)
            jac = np.concatenate([np.nan_to_num(dx) * sqrt_w[:, :1], np.nan_to_num(dy) * sqrt_w[:, 1:2], np.nan_to_num(dphi) * sqrt_w[:, 2:]])
        else:
            jac = np.zeros((weighted.size, n_free))
        if self.restraints is not None and len(self.restraints):
            r_res, J_res = self.restraints.residuals_and_jacobian(full, n_free)
            weighted = np.concatenate([weighted, r_res])
            jac = np.concatenate([jac, J_res])
        nref = int(valid.sum())
        rmsds = np.sqrt(np.sum(delta**2, axis=0) / max(nref, 1))
        return Evaluation(weighted, jac, rmsds, nref), delta, valid

    def reject_outliers(self) -> None:
        x0 = self.model.free_values()
        _, delta, valid = self.evaluate(x0, with_jacobian=False)
        rows = self.rows[valid]
        outlier = reject_outliers(delta[valid], self.data.obs[rows, 2], self.options.outlier_algorithm,
                                  block_width_deg=self.options.outlier_block_width_deg,
                                  iqr_multiplier=self.options.outlier_iqr_multiplier)
        self.outliers = rows[outlier]
        # the working set is sampled after outlier rejection, as in DIALS' ReflectionManager
        scan = self.experiment.scan
        width_deg = abs(scan.oscillation_range_deg[1] - scan.oscillation_range_deg[0])
        self.rows = sample_rows(rows[~outlier], width_deg, self.options.reflections_per_degree)
        kept = np.isin(rows, self.rows)
        self.residual_summary = _residual_summary(delta[valid][kept], self.data.var[rows[kept]])

    def auto_reduce(self) -> None:
        action, per_param = self.options.auto_reduction_action, self.options.min_nref_per_parameter
        if action not in ("fail", "fix", "remove"):
            raise DataError(f"refinement auto_reduction.action={action}: choose fail, fix or remove")
        nref = len(self.rows)
        for group in self.model.groups:
            if group.scan_varying:
                block, centres = self.model.block_centres(self.data.obs[self.rows, 2])
                w = self.model.smoother.weights(centres)[block]
                nv = self.model.smoother.num_values
                for j in range(nv):
                    members = np.arange(j, group.size, nv)
                    n_free = int(np.sum(~group.fixed[members]))
                    count = int(np.sum(w[:, j] > 0))
                    if n_free and count < per_param * n_free:
                        self._too_few(group.model + f" (sample {j})", count, n_free, action)
                        group.fixed[members] = True
            else:
                n_free = int(np.sum(~group.fixed))
                if n_free and nref < per_param * n_free:
                    self._too_few(group.model, nref, n_free, action)
                    group.fixed[:] = True

    def _too_few(self, model: str, nref: int, n_free: int, action: str) -> None:
        if action == "fail":
            raise DataError(
                f"refinement: only {nref} reflections for the {n_free} free {model} parameters "
                f"(min_nref_per_parameter={self.options.min_nref_per_parameter}); fix parameters "
                f"(e.g. detector.fix=all, crystal.fix=cell) or set auto_reduction.action=fix"
            )

    def setup_restraints(self) -> None:
        if self.model.scan_varying or not self.options.unit_cell_restraints:
            return
        free = self.model.free_mask
        sl = self.model.group_slices()["Crystal unit cell"]
        free_positions = np.cumsum(free) - 1
        cols = free_positions[sl][free[sl]]
        self.restraints = CellRestraints(self.model, self.options.unit_cell_restraints, cols)

    def run(self):
        self.reject_outliers()
        self.auto_reduce()
        self.setup_restraints()
        x0 = self.model.free_values()
        result = minimise(lambda x: self.evaluate(x)[0], x0, self.options.engine, self.options.max_iterations)
        self.model.set_free_values(result.x)
        return result


def _residual_summary(delta: np.ndarray, variance: np.ndarray) -> dict:
    """DIALS' "Summary statistics for N observations matched to predictions": Min, Q1, Med,
    Q3, Max of the residuals and weights of the working set at the first prediction."""
    def five(values):
        return [float(v) for v in np.percentile(values, [0, 25, 50, 75, 100])] if len(values) else [float("nan")] * 5

    weights = 1.0 / variance
    return {
        "nref": len(delta),
        "Xc - Xo (mm)": five(delta[:, 0]),
        "Yc - Yo (mm)": five(delta[:, 1]),
        "Phic - Phio (deg)": five(np.degrees(delta[:, 2])),
        "X weights": five(weights[:, 0]),
        "Y weights": five(weights[:, 1]),
        "Phi weights": five(weights[:, 2]),
    }


# ------------------------------------------------------------------------------- entry point


def _observations(experiment: Experiment, reflections: ReflectionTable) -> _Observations:
    hkl = np.asarray(reflections["miller_index"]).astype(int).reshape(-1, 3)
    obs = np.asarray(reflections["xyzobs.mm.value"], float).reshape(-1, 3)
    var = np.asarray(reflections["xyzobs.mm.variance"], float).reshape(-1, 3)
    if "entering" in reflections:
        entering = np.asarray(reflections["entering"], bool)
    else:
        entering = entering_flags(experiment, observed_s1(experiment, np.nan_to_num(obs[:, :2])))
    return _Observations(hkl, entering, obs, var)


def _cell_covariance(model: ParameterisedModel, covariance: np.ndarray):
    """esds of (a, b, c, α, β, γ) and the 9×9 covariance of B's elements."""
    group = model.group("Crystal unit cell")
    free = model.free_mask
    sl = model.group_slices()["Crystal unit cell"]
    positions = (np.cumsum(free) - 1)[sl][free[sl]]
    if positions.size == 0:
        return None, None
    cov = covariance[np.ix_(positions, positions)]
    jac_cell = model.cell.cell_jacobian(group.values)[:, ~group.fixed]
    esds = np.sqrt(np.maximum(np.diag(jac_cell @ cov @ jac_cell.T), 0.0))
    _, dB = model.cell.compose(group.values)
    jac_B = dB[~group.fixed].reshape(-1, 9).T
    return tuple(float(e) for e in esds), jac_B @ cov @ jac_B.T


def scan_varying_summary(refined: Experiment, static_U: np.ndarray) -> dict:
    """Cell and orientation (rotations about x, y, z relative to the static U) at the scan points."""
    scan = refined.scan
    z = np.arange(scan.array_range[0], scan.array_range[1] + 1, dtype=float)
    A = refined.crystal.A_at_scan_points
    g_star = np.einsum("nji,njk->nik", A, A)  # AᵀA = BᵀB
    cells = np.array([cell_from_metric(g) for g in g_star])
    U = np.array([a @ np.linalg.inv(b_from_metric(g)) for a, g in zip(A, g_star)])
    relative = U @ static_U.T
    return {
        "z": z,
        "phi_deg": scan.angle_from_array_index(z),
        "unit_cell": cells,
        "volume": 1.0 / np.sqrt(np.linalg.det(g_star)),
        "orientation_deg": np.degrees(xyz_angles_from_rotation(relative)),
    }


def refine(experiment: Experiment, reflections: ReflectionTable, options: RefinementOptions | None = None) -> RefinementResult:
    """Refine the experiment's models against the indexed reflections (see module docstring)."""
    options = options or RefinementOptions()
    if options.outlier_algorithm not in ("tukey", "mcd", "null"):
        raise DataError(f"refinement outlier.algorithm={options.outlier_algorithm}: choose tukey, mcd or null")
    if options.engine not in ("LevMar", "GaussNewton"):
        raise DataError(f"refinement refinery.engine={options.engine}: choose LevMar or GaussNewton")
    if experiment.crystal is None or experiment.goniometer is None or experiment.scan is None:
        raise DataError("refinement needs an experiment with a crystal, a goniometer and a scan (index it first)")
    data = _observations(experiment, reflections)
    n = len(data.hkl)
    scan = experiment.scan
    rows = np.nonzero(usable_rows(experiment, reflections, options.close_to_spindle_cutoff))[0]
    if len(rows) == 0:
        raise DataError("refinement: no usable indexed reflections (check miller_index, id and xyzobs.mm.value)")

    history: list[dict] = []
    current = experiment
    stages = [False, True] if options.scan_varying else [False]
    cell_esds, B_cov, static_U = None, None, None
    residual_summaries = []
    for macrocycle, scan_varying in enumerate(stages):
        cycle = _Macrocycle(current, data, rows, options, scan_varying)
        result = cycle.run()
        residual_summaries.append(cycle.residual_summary)
        for ev in result.history:
            history.append({"macrocycle": macrocycle, "step": len([h for h in history if h["macrocycle"] == macrocycle]),
                            "nref": ev.nref, "rmsd_x_mm": float(ev.rmsds[0]), "rmsd_y_mm": float(ev.rmsds[1]),
                            "rmsd_phi_deg": float(np.degrees(ev.rmsds[2]))})
        current = cycle.model.apply(current)
        if not scan_varying:
            cell_esds, B_cov = _cell_covariance(cycle.model, result.covariance)
            current.crystal.B_covariance = B_cov
            static_U = current.crystal.U

    used = np.zeros(n, bool)
    used[cycle.rows] = True
    outlier = np.zeros(n, bool)
    outlier[cycle.outliers] = True
    valid_index = np.any(data.hkl != 0, axis=1)
    if "id" in reflections:
        valid_index &= np.asarray(reflections["id"]) >= 0
    xyzcal_mm = np.full((n, 3), np.nan)
    xyzcal_px = np.full((n, 3), np.nan)
    phi_near = np.where(np.isfinite(data.obs[:, 2]), data.obs[:, 2], np.radians(scan.oscillation_range_deg[0]))
    pred = predict_for_indexed(current, data.hkl[valid_index], data.entering[valid_index], phi_near[valid_index])
    xyzcal_mm[valid_index], xyzcal_px[valid_index] = pred.xyzcal_mm, pred.xyzcal_px

    final = result.evaluation
    px = experiment.detector.pixel_size
    rmsds = {
        "x_mm": float(final.rmsds[0]), "y_mm": float(final.rmsds[1]), "phi_deg": float(np.degrees(final.rmsds[2])),
        "x_px": float(final.rmsds[0] / px[0]), "y_px": float(final.rmsds[1] / px[1]),
        "z_images": float(np.degrees(final.rmsds[2]) / abs(scan.oscillation[1])), "nref": final.nref,
    }
    return RefinementResult(
        experiment=current,
        used_in_refinement=used,
        centroid_outlier=outlier,
        xyzcal_mm=xyzcal_mm,
        xyzcal_px=xyzcal_px,
        rmsds=rmsds,
        history=history,
        termination=result.termination,
        parameter_names=cycle.model.free_names,
        parameter_values=result.x,
        parameter_esds=np.sqrt(np.maximum(np.diag(result.covariance), 0.0)),
        cell_esds=cell_esds,
        scan_varying_model=scan_varying_summary(current, static_U) if options.scan_varying else None,
        residual_summaries=residual_summaries,
    )
