"""Least-squares engines: Levenberg–Marquardt (DIALS' ``LevMar``) and Gauss–Newton.

Both minimise F = ½·rᵀr of weighted residuals r (observations and restraints) using the
normal matrix N = JᵀJ and gradient g = Jᵀr. LM (Madsen, Nielsen & Tingleff 2004, "Methods for
non-linear least squares problems", §3.2): μ₀ = 10⁻³·max diag N; step (N + μI)δ = −g; gain
ratio ρ = ΔF / (½δ·(μδ − g)); accept if ρ > 0 with μ ← μ·max(1/3, 1 − (2ρ − 1)³), ν ← 2, else
μ ← μν, ν ← 2ν. Refinement stops when every RMSD changes by less than 10⁻⁴ of its value
("RMSD no longer decreasing"), when the step vanishes, or at the iteration limit.
Parameter covariance = N⁻¹ · χ²/(m − P).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RMSD_TOLERANCE = 1.0e-4


@dataclass
class Evaluation:
    weighted_residuals: np.ndarray  # (m,)
    weighted_jacobian: np.ndarray  # (m, P)
    rmsds: np.ndarray  # (3,) unweighted RMSD x (mm), y (mm), φ (rad)
    nref: int


@dataclass
class EngineResult:
    x: np.ndarray
    evaluation: Evaluation
    history: list[Evaluation]
    termination: str
    covariance: np.ndarray


def _rmsds_converged(history: list[Evaluation]) -> bool:
    if len(history) < 2:
        return False
    new, old = history[-1].rmsds, history[-2].rmsds
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.where(new > 0, np.abs(new - old) / new, 0.0)
    return bool(np.all(change < RMSD_TOLERANCE))


def _covariance(ev: Evaluation) -> np.ndarray:
    J, r = ev.weighted_jacobian, ev.weighted_residuals
    m, p = J.shape
    reduced_chi2 = float(r @ r) / max(m - p, 1)
    return np.linalg.pinv(J.T @ J) * reduced_chi2


def _step_too_small(delta: np.ndarray, x: np.ndarray) -> bool:
    return float(np.linalg.norm(delta)) <= 1e-12 * (float(np.linalg.norm(x)) + 1e-12)


def minimise(
    evaluate: Callable[[np.ndarray], Evaluation], x0: np.ndarray, engine: str = "LevMar", max_iterations: int = 100
) -> EngineResult:
    if engine not in ("LevMar", "GaussNewton"):
        raise ValueError(f"unknown refinery.engine '{engine}'; choose LevMar or GaussNewton")
    x = np.asarray(x0, dtype=float).copy()
    ev = evaluate(x)
    history = [ev]
    termination = "Reached maximum number of iterations"
    if x.size == 0:
        return EngineResult(x, ev, history, "No free parameters", np.zeros((0, 0)))
    N = ev.weighted_jacobian.T @ ev.weighted_jacobian
    g = ev.weighted_jacobian.T @ ev.weighted_residuals
    mu, nu = 1e-3 * float(np.max(np.diag(N))), 2.0
    lm = engine == "LevMar"
    for _ in range(max_iterations):
        matrix = N + mu * np.eye(len(x)) if lm else N
        try:
            delta = np.linalg.solve(matrix, -g)
        except np.linalg.LinAlgError:
            delta = np.linalg.lstsq(matrix, -g, rcond=None)[0]
        if _step_too_small(delta, x):
            termination = "Step too small"
            break
        try:
            trial = evaluate(x + delta)
        except np.linalg.LinAlgError:  # e.g. a step to a metric tensor that is not positive definite
            trial = None
        if trial is None and not lm:
            termination = "Step to an invalid model"
            break
        if lm:
            if trial is None:
                rho = -1.0
            else:
                actual = 0.5 * (ev.weighted_residuals @ ev.weighted_residuals - trial.weighted_residuals @ trial.weighted_residuals)
                expected = 0.5 * float(delta @ (mu * delta - g))
                rho = actual / expected if expected > 0 else -1.0
            if rho <= 0:
                mu *= nu
                nu *= 2.0
                if nu >= 8192:
                    termination = "Step too small"
                    break
                continue
            mu *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            nu = 2.0
        x, ev = x + delta, trial
        history.append(ev)
        N = ev.weighted_jacobian.T @ ev.weighted_jacobian
        g = ev.weighted_jacobian.T @ ev.weighted_residuals
        if _rmsds_converged(history):
            termination = "RMSD no longer decreasing"
            break
    return EngineResult(x, ev, history, termination, _covariance(ev))
