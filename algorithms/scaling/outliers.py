"""Outlier rejection in scaling (DIALS 'standard' method, after Aimless) and the Wilson E² test.

Standard: in each symmetry group with n > 2, weights are capped at 10× the group median weight, and
each observation is compared with the weighted mean of the others,
z_l = (I_l − g_l Ĩ_{h,−l}) / sqrt(σ_l² + g_l²/Σ_{m≠l} w_m g_m²). Only the worst |z| > zmax of a group
is rejected per pass; the rest of that group is re-tested until no new outliers appear.
Wilson: E² = (I/ε)/⟨I/ε⟩ in resolution bins; E² above 13.82 (acentric) or 23.91 (centric) has a
probability < 10⁻⁶ under Wilson statistics (applied only with > 10000 reflections).
"""
from __future__ import annotations

import numba
import numpy as np

WILSON_ACENTRIC_LIMIT = 13.82
WILSON_CENTRIC_LIMIT = 23.91
WILSON_MIN_REFLECTIONS = 10000
WEIGHT_CAP = 10.0


def standard_outliers(group: np.ndarray, n_groups: int, intensity: np.ndarray, variance: np.ndarray, g: np.ndarray,
                      active: np.ndarray, zmax: float = 6.0) -> np.ndarray:
    """Boolean mask of observations rejected as outliers (among ``active``).

    Groups are independent (a rejection changes only its own group's mean), so each group is
    tested and re-tested to the end on its own, in one compiled pass over the group-sorted data."""
    order = np.argsort(group, kind="stable")
    starts = np.concatenate([[0], np.cumsum(np.bincount(group, minlength=n_groups))])
    weight = 1.0 / np.where(variance > 0, variance, np.inf)
    return _standard_outliers_sorted(order, starts, np.asarray(intensity, float), np.asarray(variance, float),
                                     np.asarray(g, float), weight, np.asarray(active, bool), float(zmax))


@numba.njit(cache=True, nogil=True)
def _standard_outliers_sorted(order, starts, intensity, variance, g, weight, active, zmax):
    outlier = np.zeros(len(intensity), np.bool_)
    members = np.empty(len(order), np.int64)
    buffer = np.empty(len(order), np.float64)
    z = np.empty(len(order), np.float64)
    for h in range(len(starts) - 1):  # loop over symmetry groups
        n = 0
        for k in range(starts[h], starts[h + 1]):
            if active[order[k]]:
                members[n] = order[k]
                n += 1
        while n > 2:
            for m in range(n):
                buffer[m] = weight[members[m]]
            ranked = np.sort(buffer[:n])
            cap = WEIGHT_CAP * 0.5 * (ranked[(n - 1) // 2] + ranked[n // 2])
            sum_wgi = 0.0
            sum_wgg = 0.0
            for m in range(n):
                i = members[m]
                w = min(weight[i], cap)
                buffer[m] = w
                sum_wgi += w * g[i] * intensity[i]
                sum_wgg += w * g[i] * g[i]
            worst = -1
            for m in range(n):
                i = members[m]
                w = buffer[m]
                others = sum_wgg - w * g[i] * g[i]
                if not others > 0:
                    continue
                mean_others = (sum_wgi - w * g[i] * intensity[i]) / others
                z[m] = abs(intensity[i] - g[i] * mean_others) / np.sqrt(variance[i] + g[i] * g[i] / others)
                # the largest z wins, the later one on ties, NaN above all (it stops the group)
                if worst < 0 or np.isnan(z[m]) or (not np.isnan(z[worst]) and z[m] >= z[worst]):
                    worst = m
            if worst < 0 or not z[worst] > zmax:
                break
            outlier[members[worst]] = True
            members[worst:n - 1] = members[worst + 1:n]
            n -= 1
    return outlier


def wilson_outliers(intensity: np.ndarray, d: np.ndarray, centric: np.ndarray, epsilon: np.ndarray,
                    active: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Observations whose normalised E² is implausibly large under Wilson statistics."""
    outlier = np.zeros(len(intensity), bool)
    idx = np.nonzero(active)[0]
    if len(idx) <= WILSON_MIN_REFLECTIONS:
        return outlier
    order = idx[np.argsort(d[idx])]
    bins = np.empty(len(intensity), dtype=np.int64)
    bins[order] = np.arange(len(order)) * n_bins // len(order)
    normalised = intensity / epsilon
    mean = np.bincount(bins[idx], normalised[idx], n_bins) / np.bincount(bins[idx], minlength=n_bins)
    e2 = normalised[idx] / mean[bins[idx]]
    limit = np.where(centric[idx], WILSON_CENTRIC_LIMIT, WILSON_ACENTRIC_LIMIT)
    outlier[idx[e2 > limit]] = True
    return outlier
