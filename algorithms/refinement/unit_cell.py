"""Unit-cell parameterisation through the symmetry-constrained reciprocal metric tensor.

G* = BᵀB (DIALS' lower-triangular B, columns a*, b*, c*) must satisfy R·G*·Rᵀ = G* for every
rotation R of the point group (R acting on fractional coordinates, as gemmi's ``Op.rot``). The
allowed G* form a linear subspace of the symmetric 3×3 matrices; we find it by averaging the
group action (a projector) and write it in reduced row-echelon form, so every parameter equals
one element of G* (4 for monoclinic, 2 for tetragonal, 6 for P1). Parameters are G*×10⁵ for
conditioning, as in DIALS/cctbx ``symmetrize_reduce_enlarge`` (Waterman et al. 2016,
Acta Cryst. D72, 558–575). B is rebuilt from G* by the upper–lower Cholesky factorisation;
its derivative follows from dG* = dBᵀB + BᵀdB with dB·B⁻¹ lower triangular.
"""
from __future__ import annotations

import gemmi
import numpy as np

G_SCALE = 1.0e5

# vec6 order of the symmetric matrix elements: G11, G22, G33, G12, G13, G23
_PAIRS = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]


def sym_from_vec6(v: np.ndarray) -> np.ndarray:
    """(..., 6) → symmetric (..., 3, 3)."""
    v = np.asarray(v, dtype=float)
    out = np.zeros(v.shape[:-1] + (3, 3))
    for k, (i, j) in enumerate(_PAIRS):
        out[..., i, j] = v[..., k]
        out[..., j, i] = v[..., k]
    return out


def vec6_from_sym(m: np.ndarray) -> np.ndarray:
    return np.stack([m[..., i, j] for i, j in _PAIRS], axis=-1)


def _rref(m: np.ndarray, tol: float = 1e-9) -> tuple[np.ndarray, list[int]]:
    m = m.astype(float).copy()
    rows, cols = m.shape
    pivots: list[int] = []
    r = 0
    for c in range(cols):
        if r == rows:
            break
        p = r + int(np.argmax(np.abs(m[r:, c])))
        if abs(m[p, c]) < tol:
            continue
        m[[r, p]] = m[[p, r]]
        m[r] /= m[r, c]
        for k in range(rows):
            if k != r:
                m[k] -= m[k, c] * m[r]
        pivots.append(c)
        r += 1
    m[np.abs(m) < tol] = 0.0
    return m[:r], pivots


def metric_basis(space_group: gemmi.SpaceGroup) -> tuple[np.ndarray, list[int]]:
    """Basis (m, 6) of the G* allowed by the point group, in row-echelon form, and the vec6
    positions of the pivot elements (each parameter is the value of one G* element)."""
    rotations = [np.array(op.rot, dtype=float) / op.DEN for op in space_group.operations().sym_ops]
    projector = np.zeros((6, 6))
    for k in range(6):
        e = np.zeros(6)
        e[k] = 1.0
        E = sym_from_vec6(e)
        projector[:, k] = np.mean([vec6_from_sym(R @ E @ R.T) for R in rotations], axis=0)
    w, v = np.linalg.eig(projector)
    invariant = np.real(v[:, np.abs(w - 1.0) < 1e-6]).T
    basis, pivots = _rref(invariant)
    return basis, pivots


def b_from_metric(g_star: np.ndarray) -> np.ndarray:
    """The lower-triangular B (positive diagonal) with BᵀB = G*; vectorised over leading axes."""
    flip = np.eye(3)[::-1]
    L = np.linalg.cholesky(flip @ g_star @ flip)  # flip·G*·flip = L·Lᵀ, L lower
    return flip @ np.swapaxes(L, -1, -2) @ flip


def db_from_dmetric(B: np.ndarray, dg_star: np.ndarray) -> np.ndarray:
    """dB for changes dG* (k, 3, 3) of G* = BᵀB with B (..., 3, 3) lower triangular;
    returns (..., k, 3, 3)."""
    B = B[..., None, :, :]
    B_inv = np.linalg.inv(B)
    M = np.swapaxes(B_inv, -1, -2) @ dg_star @ B_inv
    X = np.tril(M, -1) + 0.5 * np.eye(3) * np.diagonal(M, axis1=-2, axis2=-1)[..., None, :]
    return X @ B


def cell_from_metric(g_star: np.ndarray) -> np.ndarray:
    """(a, b, c, α, β, γ) in Å and degrees from G*."""
    G = np.linalg.inv(g_star)
    lengths = np.sqrt(np.diagonal(G))
    a, b, c = lengths
    cosines = np.array([G[1, 2] / (b * c), G[0, 2] / (a * c), G[0, 1] / (a * b)])
    return np.concatenate([lengths, np.degrees(np.arccos(np.clip(cosines, -1, 1)))])


def cell_derivatives_from_metric(g_star: np.ndarray, dg_star: np.ndarray) -> np.ndarray:
    """d(a, b, c, α, β, γ) (Å, degrees) for changes dG* (k, 3, 3); returns (k, 6)."""
    G = np.linalg.inv(g_star)
    dG = -G @ dg_star @ G
    lengths = np.sqrt(np.diagonal(G))
    dlengths = np.diagonal(dG, axis1=-2, axis2=-1) / (2.0 * lengths)
    out = np.zeros((len(dg_star), 6))
    out[:, :3] = dlengths
    for k, (i, j, m) in enumerate([(1, 2, 0), (0, 2, 1), (0, 1, 2)]):
        # angle between real axes i and j (α: b,c; β: a,c; γ: a,b)
        cos_angle = G[i, j] / (lengths[i] * lengths[j])
        dcos = dG[:, i, j] / (lengths[i] * lengths[j]) - cos_angle * (dlengths[:, i] / lengths[i] + dlengths[:, j] / lengths[j])
        sin_angle = np.sqrt(max(1.0 - cos_angle**2, 1e-300))
        out[:, 3 + k] = -np.degrees(dcos / sin_angle)
    return out


class MetricTensorParameterisation:
    """B as a function of the symmetry-free G* elements (×10⁵)."""

    def __init__(self, B: np.ndarray, space_group: gemmi.SpaceGroup):
        self.basis, self.pivots = metric_basis(space_group)
        g0 = vec6_from_sym(B.T @ B)
        # project the starting metric onto the allowed subspace (symmetrise the start cell)
        coeffs, *_ = np.linalg.lstsq(self.basis.T, g0, rcond=None)
        self.initial_values = coeffs * G_SCALE
        self.names = [f"g_param_{k}" for k in range(len(self.pivots))]
        # dG*/dp for each parameter: constant because G* is linear in the parameters
        self.dg_star_dp = sym_from_vec6(self.basis) / G_SCALE

    def metric(self, values: np.ndarray) -> np.ndarray:
        return sym_from_vec6(np.asarray(values) @ self.basis / G_SCALE)

    def compose(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """B and dB/dp (k, 3, 3) at the parameter values; vectorised over leading axes."""
        B = b_from_metric(self.metric(values))
        return B, db_from_dmetric(B, self.dg_star_dp)

    def cell(self, values: np.ndarray) -> np.ndarray:
        return cell_from_metric(self.metric(values))

    def cell_jacobian(self, values: np.ndarray) -> np.ndarray:
        """d(a, b, c, α, β, γ)/dp, shape (6, k)."""
        return cell_derivatives_from_metric(self.metric(values), self.dg_star_dp).T
