"""Centroid outlier rejection for refinement: Tukey fences and FAST-MCD.

- Tukey: per residual column, outlier if below Q1 − 1.5·IQR or above Q3 + 1.5·IQR.
- MCD: robust location/scatter of the (Δx, Δy, Δφ) residuals by the FAST-MCD algorithm
  (Rousseeuw & Van Driessen 1999, Technometrics 41, 212–223): random (p+1)-subsets, C-steps,
  the best candidates iterated to convergence; with large samples the search first runs in
  disjoint sub-groups and on their union, as in the paper. The raw estimate is made consistent
  (× median d² / χ²_p(0.5)) and re-weighted (Croux & Haesbroeck 1999, J. Multivar. Anal. 71,
  161); outliers have d² > χ²_p(0.975) (9.348 for p = 3).
  The C-steps run in a numba kernel.
Both run separately in blocks of rotation angle; a block with fewer than
``minimum_number_of_reflections`` is wholly rejected, as in DIALS.
"""
from __future__ import annotations

import numba
import numpy as np
from scipy.stats import chi2

MCD_ALPHA = 0.5
MCD_MAX_N_GROUPS = 5
MCD_MIN_GROUP_SIZE = 300
MCD_N_TRIALS = 500
MCD_K1, MCD_K2, MCD_K3 = 2, 2, 100
MCD_CUTOFF_PROBABILITY = 0.975


def tukey_outliers(residuals: np.ndarray, iqr_multiplier: float = 1.5) -> np.ndarray:
    """Rows of ``residuals`` (n, k) outside the Tukey fences in any column."""
    q1, q3 = np.percentile(residuals, [25, 75], axis=0)
    iqr = q3 - q1
    return np.any((residuals < q1 - iqr_multiplier * iqr) | (residuals > q3 + iqr_multiplier * iqr), axis=1)


def _mean_cov(subsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means (m, p) and covariances (m, p, p) of stacked subsets (m, k, p)."""
    mean = subsets.mean(axis=1)
    centred = subsets - mean[:, None, :]
    cov = np.swapaxes(centred, 1, 2) @ centred / (subsets.shape[1] - 1)
    return mean, cov


def _mahalanobis2(X: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Squared distances (m, n) of the rows of X (n, p) for m (mean, cov) pairs."""
    centred = X[None, :, :] - mean[:, None, :]
    return np.sum((centred @ np.linalg.inv(cov)) * centred, axis=2)


@numba.njit(cache=True, nogil=True)
def _cholesky_det(cov, L):
    """Lower Cholesky factor of a small SPD matrix into L; returns det(cov) (0 if not SPD)."""
    p = cov.shape[0]
    det = 1.0
    for j in range(p):
        acc = cov[j, j]
        for k in range(j):
            acc -= L[j, k] * L[j, k]
        if not acc > 0:
            return 0.0
        L[j, j] = np.sqrt(acc)
        det *= acc
        for i in range(j + 1, p):
            acc = cov[i, j]
            for k in range(j):
                acc -= L[i, k] * L[j, k]
            L[i, j] = acc / L[j, j]
    return det


@numba.njit(cache=True, nogil=True)
def _c_steps_kernel(X, means, covs, h, n_steps):
    """Concentration steps for every candidate (in place): keep the h points nearest each
    candidate under its Mahalanobis metric and re-estimate; returns the determinants."""
    n, p = X.shape
    dets = np.empty(len(means))
    d2 = np.empty(n)
    keep = np.empty(n, np.int64)
    L = np.zeros((p, p))
    z = np.empty(p)
    for m in range(len(means)):
        mean = means[m].copy()
        cov = covs[m].copy()
        det = _cholesky_det(cov, L)
        for _ in range(n_steps):
            if not det > 0:
                break
            for i in range(n):
                acc = 0.0
                for a in range(p):  # forward substitution: z = L⁻¹(x − mean)
                    t = X[i, a] - mean[a]
                    for b in range(a):
                        t -= L[a, b] * z[b]
                    z[a] = t / L[a, a]
                    acc += z[a] * z[a]
                d2[i] = acc
            threshold = np.partition(d2, h - 1)[h - 1]
            new_mean = np.zeros(p)
            count = 0
            for i in range(n):
                if d2[i] <= threshold and count < h:
                    keep[count] = i
                    count += 1
                    for a in range(p):
                        new_mean[a] += X[i, a]
            new_mean /= count
            new_cov = np.zeros((p, p))
            for k in range(count):
                i = keep[k]
                for a in range(p):
                    da = X[i, a] - new_mean[a]
                    for b in range(p):
                        new_cov[a, b] += da * (X[i, b] - new_mean[b])
            new_cov /= count - 1
            new_det = _cholesky_det(new_cov, L)
            if not new_det > 0:
                break
            converged = new_det == det
            mean, cov, det = new_mean, new_cov, new_det
            if converged:
                break
        means[m] = mean
        covs[m] = cov
        dets[m] = det
    return dets


def _c_steps(X: np.ndarray, mean: np.ndarray, cov: np.ndarray, h: int, n_steps: int):
    mean, cov = np.ascontiguousarray(mean), np.ascontiguousarray(cov)
    det = _c_steps_kernel(np.ascontiguousarray(X), mean, cov, h, n_steps)
    return mean, cov, det


def _best(mean, cov, det, keep: int):
    order = np.argsort(np.where(det > 0, det, np.inf))[:keep]
    return mean[order], cov[order], det[order]


def _random_starts(X: np.ndarray, n_trials: int, rng: np.random.Generator):
    n, p = X.shape
    idx = np.argsort(rng.random((n_trials, n)), axis=1)[:, : p + 1]
    mean, cov = _mean_cov(X[idx])
    ok = np.linalg.det(cov) > 1e-300  # degenerate starts (collinear points) are dropped
    return mean[ok], cov[ok]


def fast_mcd(X: np.ndarray, seed: int = 42) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FAST-MCD raw location and scatter of X (n, p), and the squared distances under them
    after the consistency correction."""
    X = np.asarray(X, dtype=float)
    n, p = X.shape
    h = (n + p + 1) // 2
    rng = np.random.default_rng(seed)
    if n >= 2 * MCD_MIN_GROUP_SIZE:
        n_groups = min(MCD_MAX_N_GROUPS, n // MCD_MIN_GROUP_SIZE)
        group_size = n // n_groups
        order = rng.permutation(n)[: n_groups * group_size].reshape(n_groups, group_size)
        means, covs = [], []
        for rows in order:
            sub = X[rows]
            m, c = _random_starts(sub, MCD_N_TRIALS // n_groups, rng)
            m, c, d = _c_steps(sub, m, c, int(np.ceil(group_size * h / n)), MCD_K1)
            m, c, _ = _best(m, c, d, 10)
            means.append(m)
            covs.append(c)
        merged = X[order.ravel()]
        m, c, d = _c_steps(merged, np.concatenate(means), np.concatenate(covs), int(np.ceil(len(merged) * h / n)), MCD_K2)
        mean, cov, det = _best(m, c, d, 10)
    else:
        m, c = _random_starts(X, MCD_N_TRIALS, rng)
        m, c, d = _c_steps(X, m, c, h, MCD_K1)
        mean, cov, det = _best(m, c, d, 10)
    mean, cov, det = _c_steps(X, mean, cov, h, MCD_K3)
    k = int(np.argmin(det))
    mean, cov = mean[k], cov[k]
    d2 = _mahalanobis2(X, mean[None], cov[None])[0]
    cov = cov * np.median(d2) / chi2.ppf(0.5, p)  # consistency at the normal model
    d2 = _mahalanobis2(X, mean[None], cov[None])[0]
    return mean, cov, d2


def mcd_outliers(residuals: np.ndarray, seed: int = 42) -> np.ndarray:
    """Rows whose robust squared Mahalanobis distance exceeds χ²_p(0.975)."""
    n, p = residuals.shape
    cutoff = chi2.ppf(MCD_CUTOFF_PROBABILITY, p)
    _, _, d2 = fast_mcd(residuals, seed)
    # re-weighted estimate from the points inside the cutoff, made consistent at the normal
    # model: a normal sample truncated at χ²_p(q) has scatter P(χ²_{p+2} ≤ c)/q times too small
    inliers = residuals[d2 <= cutoff]
    mean = inliers.mean(axis=0)
    cov = np.cov(inliers, rowvar=False) * MCD_CUTOFF_PROBABILITY / chi2.cdf(cutoff, p + 2)
    d2 = _mahalanobis2(residuals, mean[None], cov[None])[0]
    return d2 > cutoff


def reject_outliers(
    residuals: np.ndarray,
    phi_rad: np.ndarray,
    algorithm: str,
    block_width_deg: float | None = 18.0,
    minimum_number_of_reflections: int = 20,
    iqr_multiplier: float = 1.5,
) -> np.ndarray:
    """Outlier mask for residual rows (n, 3) = (Δx, Δy, Δφ), judged in blocks of φ.

    The scan is cut into equal blocks of at least ``block_width_deg`` (None: one block, as
    dials.index's candidate refinement); ``iqr_multiplier`` sets the Tukey fences.
    """
    n = len(residuals)
    if algorithm == "null" or n == 0:
        return np.zeros(n, bool)
    if algorithm not in ("tukey", "mcd"):
        raise ValueError(f"unknown outlier algorithm '{algorithm}'; choose tukey, mcd or null")
    phi_deg = np.degrees(phi_rad)
    lo, hi = phi_deg.min(), phi_deg.max()
    n_blocks = 1 if block_width_deg is None else max(int((hi - lo) / block_width_deg), 1)
    block = np.minimum(((phi_deg - lo) / max(hi - lo, 1e-12) * n_blocks).astype(int), n_blocks - 1)
    outlier = np.zeros(n, bool)
    for b in range(n_blocks):
        rows = np.nonzero(block == b)[0]
        if len(rows) < minimum_number_of_reflections:
            outlier[rows] = True
        elif algorithm == "tukey":
            outlier[rows] = tukey_outliers(residuals[rows], iqr_multiplier)
        else:
            outlier[rows] = mcd_outliers(residuals[rows])
    return outlier
