"""Outlier rejection in scaling (DIALS 'standard' method, after Aimless) and the Wilson E² test.

Standard: in each symmetry group with n > 2, weights are capped at 10× the group median weight, and
each observation is compared with the weighted mean of the others,
z_l = (I_l − g_l Ĩ_{h,−l}) / sqrt(σ_l² + g_l²/Σ_{m≠l} w_m g_m²). Only the worst |z| > zmax of a group
is rejected per pass; the rest of that group is re-tested until no new outliers appear.
Wilson: E² = (I/ε)/⟨I/ε⟩ in resolution bins; E² above 13.82 (acentric) or 23.91 (centric) has a
probability < 10⁻⁶ under Wilson statistics (applied only with > 10000 reflections).
"""
from __future__ import annotations

import numpy as np

from algorithms.scaling.grouping import group_argmax, group_median

WILSON_ACENTRIC_LIMIT = 13.82
WILSON_CENTRIC_LIMIT = 23.91
WILSON_MIN_REFLECTIONS = 10000
WEIGHT_CAP = 10.0


def standard_outliers(group: np.ndarray, n_groups: int, intensity: np.ndarray, variance: np.ndarray, g: np.ndarray,
                      active: np.ndarray, zmax: float = 6.0) -> np.ndarray:
    """Boolean mask of observations rejected as outliers (among ``active``)."""
    active = active.copy()
    outlier = np.zeros(len(intensity), bool)
    weight = 1.0 / np.where(variance > 0, variance, np.inf)
    while True:
        n = np.bincount(group, active.astype(float), n_groups)
        testable = active & (n[group] > 2)
        if not testable.any():
            break
        median = group_median(weight, group, n_groups, testable)
        w = np.minimum(weight, WEIGHT_CAP * np.nan_to_num(median)[group])
        w = np.where(testable, w, 0.0)
        sum_wgi = np.bincount(group, w * g * intensity, n_groups)[group]
        sum_wgg = np.bincount(group, w * g * g, n_groups)[group]
        others = sum_wgg - w * g * g
        ok = testable & (others > 0)
        safe_others = np.where(ok, others, 1.0)
        mean_others = (sum_wgi - w * g * intensity) / safe_others
        z = np.abs(intensity - g * mean_others) / np.sqrt(np.where(ok, variance, 1.0) + g * g / safe_others)
        z = np.where(ok, z, 0.0)
        worst = group_argmax(z, group, n_groups, ok)
        worst = worst[worst >= 0]
        rejected = worst[z[worst] > zmax]
        if len(rejected) == 0:
            break
        outlier[rejected] = True
        active[rejected] = False
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
