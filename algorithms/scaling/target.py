"""Least-squares target of joint scaling and its two minimisers (DIALS dials.scale, §8.4 of the notes).

Φ = Σ_h Σ_l w_hl (I_hl − g_hl Ĩ_h)² + restraints, with the best estimate Ĩ_h = Σ w g I / Σ w g²
recomputed from the current g at every evaluation. Ĩ_h minimises Φ for fixed g, so ∂Φ/∂Ĩ_h = 0 and the
total gradient equals the partial one at fixed Ĩ (envelope theorem): −2 Σ w r Ĩ dg/dp is the *exact*
gradient including dĨ/dp. The full-matrix (Levenberg–Marquardt) round uses the exact Jacobian of
the residuals √w (I − gĨ), including g·dĨ_h/dp with dĨ_h/dp = Σ_m w_m (I_m − 2 Ĩ_h g_m) dg_m/dp / Σ w g²;
its normal matrix is assembled from sparse products without forming the dense Jacobian. Parameter
covariance = s²·N⁻¹ (s² = Φ/(n − p)) over the free parameters; ``fix_initial`` fixes the first scale
parameter of every dataset in that round.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import linalg, sparse

from algorithms.scaling.model import PhysicalModel


@dataclass
class ScalingTarget:
    model: PhysicalModel
    group: np.ndarray
    n_groups: int
    intensity: np.ndarray
    weight: np.ndarray  # 1/σ² for observations used in minimisation, 0 otherwise
    history: list = field(default_factory=list)

    def __post_init__(self):
        self.n_used = int(np.count_nonzero(self.weight))

    def best_estimates(self, g: np.ndarray) -> np.ndarray:
        wg = self.weight * g
        num = np.bincount(self.group, wg * self.intensity, self.n_groups)
        den = np.bincount(self.group, wg * g, self.n_groups)
        return np.divide(num, den, out=np.zeros(self.n_groups), where=den > 0)

    def value_and_gradient(self, p: np.ndarray) -> tuple[float, np.ndarray]:
        factors = self.model.derivative_factors(p)
        g = factors[0]
        estimate = self.best_estimates(g)[self.group]
        residual = self.intensity - g * estimate
        wr = self.weight * residual
        restraint, restraint_gradient = self.model.restraint(p)
        value = float(np.sum(wr * residual)) + restraint  # not np.dot: BLAS threads cost more than they save here
        gradient = -2.0 * self.model.gradient_of_sum(factors, wr * estimate) + restraint_gradient
        return value, gradient

    def rmsd(self, p: np.ndarray) -> float:
        g = self.model.inverse_scale(p)
        residual = self.intensity - g * self.best_estimates(g)[self.group]
        return float(np.sqrt(np.sum(self.weight * residual**2) / max(self.n_used, 1)))

    def normal_equations(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Gauss–Newton normal matrix N = JᵀJ + restraint terms, Jᵀr + restraint gradient/2, and Φ."""
        factors = self.model.derivative_factors(p)
        g = factors[0]
        dg = self.model.jacobian(factors)
        estimate_h = self.best_estimates(g)
        estimate = estimate_h[self.group]
        root_w = np.sqrt(self.weight)
        residual = root_w * (self.intensity - g * estimate)
        wg2 = np.bincount(self.group, self.weight * g * g, self.n_groups)
        inv_wg2 = np.divide(1.0, wg2, out=np.zeros_like(wg2), where=wg2 > 0)
        n_obs = len(g)
        membership = sparse.csr_matrix((np.ones(n_obs), (self.group, np.arange(n_obs))), shape=(self.n_groups, n_obs))
        c = self.weight * (self.intensity - 2.0 * estimate * g) * inv_wg2[self.group]
        d_estimate = (membership @ sparse.diags(c) @ dg).toarray()  # dĨ_h/dp, dense (H × P) for one GEMM
        a = root_w * estimate
        b = root_w * g
        cross = (membership @ sparse.diags(a * b) @ dg).toarray()
        b2 = np.bincount(self.group, b * b, self.n_groups)
        # crossᵀD + Dᵀcross + Dᵀdiag(b²)D = XᵀD + DᵀX with X = cross + ½ diag(b²) D
        half = (cross + 0.5 * b2[:, None] * d_estimate).T @ d_estimate
        normal = np.asarray((dg.T @ sparse.diags(a * a) @ dg).todense()) + half + half.T
        jtr = -(dg.T @ (a * residual))  # the dĨ/dp part vanishes: Σ_l w g (I − gĨ) = 0 per h
        restraint, restraint_gradient = self.model.restraint(p)
        normal[np.diag_indices_from(normal)] += self.model.restraint_weights
        jtr = jtr + 0.5 * restraint_gradient
        return normal, np.asarray(jtr).ravel(), float(residual @ residual) + restraint


def diagonal_preconditioner(target: ScalingTarget, p: np.ndarray) -> np.ndarray:
    """1/sqrt of the Gauss–Newton diagonal Σ w Ĩ² (dg/dp)² + restraint weight (1 where no data)."""
    factors = target.model.derivative_factors(p)
    estimate = target.best_estimates(factors[0])[target.group]
    diagonal = target.model.sum_of_squared_derivatives(factors, target.weight * estimate**2) + target.model.restraint_weights
    return np.where(diagonal > 0, 1.0 / np.sqrt(np.where(diagonal > 0, diagonal, 1.0)), 1.0)


def lbfgs(function, x0: np.ndarray, relative_tolerance: float, max_iterations: int, memory: int = 20) -> np.ndarray:
    """Plain L-BFGS (two-loop recursion, Armijo backtracking) in numpy.

    Written out rather than scipy's L-BFGS-B because that routine's BLAS calls, threaded on tiny
    vectors, cost several times the target evaluation on a shared machine. Stops when a step lowers
    the function by less than ``relative_tolerance`` (relative), or after ``max_iterations``.
    """
    x = x0.copy()
    value, gradient = function(x)
    s_list, y_list = [], []
    for _ in range(max_iterations):
        q = gradient.copy()
        alphas = []
        for s_k, y_k in zip(reversed(s_list), reversed(y_list)):
            alpha = np.sum(s_k * q) / np.sum(y_k * s_k)
            q -= alpha * y_k
            alphas.append(alpha)
        if s_list:
            q *= np.sum(s_list[-1] * y_list[-1]) / np.sum(y_list[-1] * y_list[-1])
        for (s_k, y_k), alpha in zip(zip(s_list, y_list), reversed(alphas)):
            q += s_k * (alpha - np.sum(y_k * q) / np.sum(y_k * s_k))
        direction = -q
        slope = np.sum(direction * gradient)
        if slope >= 0:  # not a descent direction: restart from steepest descent
            s_list, y_list = [], []
            direction, slope = -gradient, -np.sum(gradient * gradient)
        step = 1.0
        for _trial in range(30):
            new_x = x + step * direction
            new_value, new_gradient = function(new_x)
            if new_value <= value + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            return x
        s_k, y_k = new_x - x, new_gradient - gradient
        if np.sum(s_k * y_k) > 1e-12 * np.sqrt(np.sum(s_k * s_k) * np.sum(y_k * y_k)):
            s_list.append(s_k)
            y_list.append(y_k)
            if len(s_list) > memory:
                s_list.pop(0)
                y_list.pop(0)
        decrease = value - new_value
        x, value, gradient = new_x, new_value, new_gradient
        if decrease <= relative_tolerance * max(abs(value), 1e-300):
            break
    return x


def minimise_lbfgs(target: ScalingTarget, p0: np.ndarray, relative_tolerance: float = 1e-7, max_iterations: int = 500) -> np.ndarray:
    """L-BFGS on all parameters (DIALS' SimpleLBFGS engine), diagonally preconditioned.

    Scale (~1), B (Å²) and absorption (~10⁻³) parameters differ by orders of magnitude in curvature;
    minimising over q = p/s with s from the Gauss–Newton diagonal makes the problem well conditioned.
    """
    scaling = diagonal_preconditioner(target, p0)

    def scaled(q):
        value, gradient = target.value_and_gradient(q * scaling)
        return value, gradient * scaling

    target.history.append(("lbfgs", target.rmsd(p0)))
    p = lbfgs(scaled, p0 / scaling, relative_tolerance, max_iterations) * scaling
    target.history.append(("lbfgs", target.rmsd(p)))
    return p


def minimise_levmar(target: ScalingTarget, p0: np.ndarray, fixed: np.ndarray, rmsd_tolerance: float = 1e-4,
                    max_iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg–Marquardt on the free parameters; returns parameters and their covariance (fixed rows 0).

    Started at the L-BFGS minimum, the steps are small: the normal matrix (one dense GEMM of
    reflections × parameters², the expensive part) is built once at the start and kept, while the
    gradient is re-evaluated every step (a modified Gauss–Newton iteration); the covariance comes from
    that matrix with s² of the final residuals."""
    p = p0.copy()
    normal, jtr, value = target.normal_equations(p)
    # Parameters that no observation or restraint touches (e.g. of a crystal removed by filtering)
    # would make the normal matrix singular: keep them fixed.
    free = ~fixed & (np.diag(normal) > 0)
    mu = 1e-3 * float(np.max(np.diag(normal)[free]))
    previous_rmsd = np.sqrt(value / max(target.n_used, 1))
    target.history.append(("levmar", previous_rmsd))
    for _ in range(max_iterations):
        n_free = normal[np.ix_(free, free)]
        step = np.zeros_like(p)
        for _trial in range(10):
            damped = n_free + mu * np.diag(np.diag(n_free))
            try:
                step[free] = -linalg.solve(damped, jtr[free], assume_a="pos")
            except (linalg.LinAlgError, ValueError):
                step[free] = -linalg.lstsq(damped, jtr[free])[0]
            trial_value, trial_gradient = target.value_and_gradient(p + step)
            if trial_value < value:
                mu /= 3.0
                break
            mu *= 4.0
        else:
            break
        p = p + step
        value, jtr = trial_value, 0.5 * trial_gradient  # Φ' = 2(Jᵀr + λp)
        rmsd = np.sqrt(value / max(target.n_used, 1))
        target.history.append(("levmar", rmsd))
        if previous_rmsd - rmsd < rmsd_tolerance * previous_rmsd:
            break
        previous_rmsd = rmsd
    covariance = np.zeros((len(p), len(p)))
    n_free_params = int(free.sum())
    s2 = value / max(target.n_used - n_free_params, 1)
    free_normal = normal[np.ix_(free, free)]
    try:  # Cholesky is ~20× cheaper than an eigen-decomposition for a few hundred parameters
        inverse = linalg.cho_solve(linalg.cho_factor(free_normal), np.eye(len(free_normal)))
    except linalg.LinAlgError:
        inverse = linalg.pinvh(free_normal)
    covariance[np.ix_(free, free)] = s2 * inverse
    return p, covariance


def inverse_scale_variance(model: PhysicalModel, p: np.ndarray, covariance: np.ndarray, dataset: np.ndarray) -> np.ndarray:
    """Var(g_l) = j_lᵀ Σ j_l per observation, block by block (a dataset only touches its own parameters)."""
    dg = model.jacobian(model.derivative_factors(p))
    variance = np.zeros(dg.shape[0])
    for k, layout in enumerate(model.layouts):
        rows = np.nonzero(dataset == k)[0]
        block = layout.all_slice
        j = dg[rows][:, block].toarray()
        variance[rows] = np.einsum("ij,jk,ik->i", j, covariance[block, block], j)
    return variance
