"""Two-parameter ('basic') error model of DIALS: σ'² = a²(σ² + (b·I)²), ISa = 1/(a·b).

Here I in the b term is the expected intensity g·Ĩ_h of the observation's group (its own intensity
for a reflection measured once): with the noisy observed I, weak-by-chance measurements get too small
a σ' and the fitted a, b are biased (by ~30 % in ⟨δ²⟩ for b = 0.1 in tests).

Refined ('individual' minimisation) on well-measured groups only: partiality > 0.4, group mean
I/σ > 0.85, scaled group mean g·Ĩ_h > min_Ih (in counts: × LP/QE in ewald's default), n_h > 1, I > 0.001, groups whose internal scatter is
not wildly larger than expected; ≥ 250 reflections or the model is left at a = 1, b = 0.02.
Normalised deviations δ = sqrt((n−1)/n)·(I/g − Ĩ_{h,−l})/(σ'/g), with Ĩ_{h,−l} the weighted mean of
the *other* observations of h (Evans 2006, Acta D 62:72): for equal weights Var(I − Ĩ_{h,−l}) =
σ²·n/(n−1), so the factor makes δ unit-variance; with the mean including I itself it would bias a
low by (n−1)/n. Alternately (≤ 20 cycles, until a changes < 1 %): a ← a × slope of the normal
probability plot of δ (|x| < 1.5); b minimises
Σ_k w_k[(0.5 − v_k)² + 1/v_k − 1.25]/Σw over 10 bins in log(g·Ĩ) (v_k = ⟨δ²⟩ of bin k, w_k = its
mean intensity; minimum at v = 1). If that fails or a ≤ 0.4: a = 1 and b alone is refined.
When most selected reflections are dominated by the b term only the product a·b is well determined
(the alternation then stops on a flat ridge); ISa = 1/(ab) is the robust quantity.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np
from scipy import optimize

from algorithms.merging.statistics import normal_quantiles
from algorithms.scaling.grouping import weighted_group_means

MIN_REFLECTIONS = 250
DEFAULT_B = 0.02
MAX_CYCLES = 20


@dataclass
class ErrorModel:
    a: float = 1.0
    b: float = DEFAULT_B
    refined: bool = False
    n_reflections: int = 0
    message: str = ""
    bins: list = field(default_factory=list)  # (log I low, log I high, n, initial ⟨δ²⟩, final ⟨δ²⟩)

    @property
    def isa(self) -> float:
        return 1.0 / (self.a * self.b) if self.a * self.b > 0 else float("inf")

    def adjust_variance(self, variance: np.ndarray, intensity: np.ndarray) -> np.ndarray:
        """σ'² = a²(σ² + (b·I)²); pass the expected intensity g·Ĩ_h as ``intensity`` where known."""
        return self.a**2 * (variance + (self.b * intensity) ** 2)


@numba.njit(cache=True, nogil=True, fastmath=True)
def normalised_deviations(a, b, starts, x, variance, g, expected):
    """δ_l = sqrt((n−1)/n)·(x_l − Ĩ_{h,−l})/(σ'_l/g_l), x = I/g, σ'² = a²(σ² + (b·g·Ĩ_h)²), Ĩ_{h,−l} the
    σ'-weighted mean of the other observations of h; observations sorted by group, group h being
    ``starts[h]:starts[h+1]`` (called ~150 times per error-model fit: one cache-friendly pass per
    group instead of a dozen temporary arrays)."""
    delta = np.empty(len(x))
    inv_sigma = np.empty(len(x))
    for h in range(len(starts) - 1):
        lo, hi = starts[h], starts[h + 1]
        n = hi - lo
        if n < 2:  # groups without selected pairs are not in the fit
            continue
        sum_w = 0.0
        sum_wx = 0.0
        for i in range(lo, hi):
            inv_sigma[i] = g[i] / (a * np.sqrt(variance[i] + (b * expected[i]) ** 2))
            w = inv_sigma[i] * inv_sigma[i]
            sum_w += w
            sum_wx += w * x[i]
        factor = np.sqrt((n - 1) / n)
        for i in range(lo, hi):
            w = inv_sigma[i] * inv_sigma[i]
            delta[i] = factor * (x[i] - (sum_wx - w * x[i]) / (sum_w - w)) * inv_sigma[i]
    return delta


def _quantile_slope(delta: np.ndarray) -> float:
    n = len(delta)
    x = normal_quantiles(n, 3.0 / 8.0 if n <= 10 else 0.5)
    keep = np.abs(x) < 1.5
    return float(np.polyfit(x[keep], np.sort(delta)[keep], 1)[0])


def _intensity_bins(log_intensity: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins in log(g·Ĩ); sparse bins merged into their neighbour until ≥ min(250, n/30)."""
    n = len(log_intensity)
    edges = np.linspace(log_intensity.min(), log_intensity.max(), n_bins + 1)
    raw = np.clip(np.searchsorted(edges, log_intensity, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(raw, minlength=n_bins)
    minimum = min(MIN_REFLECTIONS, n / 30.0)
    merged_label = np.zeros(n_bins, dtype=np.int64)
    label, running = 0, 0
    for k in range(n_bins):  # loop over ≤ 10 bins, not reflections
        merged_label[k] = label
        running += counts[k]
        if running >= minimum and k < n_bins - 1:
            label, running = label + 1, 0
    if running < minimum and label > 0:  # a sparse last bin joins the previous one
        merged_label[merged_label == label] = label - 1
    return merged_label[raw]


def refine_error_model(group: np.ndarray, n_groups: int, intensity: np.ndarray, variance: np.ndarray,
                       g: np.ndarray, active: np.ndarray, partiality: np.ndarray, min_Ih: float = 25.0,
                       n_bins: int = 10, min_Ih_unit: np.ndarray | float = 1.0) -> ErrorModel:
    """Fit a, b on suitable reflections (``intensity``/``variance`` unscaled, before the error model).

    The min_Ih rule is g·Ĩ_h > min_Ih × ``min_Ih_unit`` (per observation or scalar): DIALS compares with
    min_Ih itself, in the units of the LP-corrected intensities; ewald passes the LP/QE conversion
    factor, so that min_Ih means counts of the integrated intensity whatever the size of the LP factor
    (3D ED: lp ~ 10⁻³, and DIALS' 25 lies above every scaled intensity, so the model is never fitted).
    The other absolute thresholds (I > 0.001, the internal-scatter limit max(50, max Ĩ/40)) use the
    same unit.

    Always starts from a = 1, b = 0.02: along the flat a–b ridge the alternation's end point depends
    on its start, and a warm start would carry an early round's bias (scales not yet refined with
    error-model weights) into the final model."""
    scaled_i, scaled_var = intensity / g, variance / g**2
    mean_h, _, n_h = weighted_group_means(group, n_groups, scaled_i, scaled_var, active)
    ratio = np.divide(scaled_i, np.sqrt(np.abs(scaled_var)), out=np.zeros_like(scaled_i), where=active & (scaled_var > 0))
    i_over_sigma = np.bincount(group, ratio, n_groups) / np.maximum(n_h, 1)
    unit = np.asarray(min_Ih_unit, float)
    use = active & (partiality > 0.4) & (i_over_sigma[group] > 0.85) & (g * mean_h[group] > min_Ih * unit) & (intensity > 0.001 * unit)
    n_use = np.bincount(group, use.astype(float), n_groups)
    use &= n_use[group] > 1
    # Groups whose internal scatter dwarfs the expected variance are not measurement errors.
    mean_h, _, n_use = weighted_group_means(group, n_groups, scaled_i, scaled_var, use)
    internal = np.bincount(group, np.where(use, (scaled_i - mean_h[group]) ** 2, 0.0), n_groups) / np.maximum(n_use - 1, 1)
    expected = np.bincount(group, np.where(use, scaled_var, 0.0), n_groups) / np.maximum(n_use, 1)
    # DIALS' limit max(50, max Ĩ/40) mixes a ratio with an intensity: Ĩ in counts (÷ the unit) keeps its meaning.
    limit = max(50.0, float(np.max(mean_h[n_use > 1], initial=0.0)) / 40.0 / float(np.median(unit)))
    use &= (internal / np.where(expected > 0, expected, np.inf))[group] <= limit
    n_use = np.bincount(group, use.astype(float), n_groups)
    use &= n_use[group] > 1
    n_selected = int(use.sum())
    if n_selected < MIN_REFLECTIONS:
        return ErrorModel(n_reflections=n_selected,
                          message=f"Insufficient reflections ({n_selected} < {MIN_REFLECTIONS}) to perform error modelling.")
    idx = np.nonzero(use)[0]
    idx = idx[np.argsort(group[idx], kind="stable")]  # grouped: each group's members are contiguous
    grp, inten, var, gg = group[idx], intensity[idx], variance[idx], g[idx]
    starts = np.concatenate([[0], np.cumsum(np.bincount(grp, minlength=n_groups))])
    x = inten / gg

    base_mean, _, _ = weighted_group_means(grp, n_groups, x, var / gg**2, np.ones(len(idx), bool))
    expected = gg * base_mean[grp]

    def deviations(a: float, b: float) -> np.ndarray:
        return normalised_deviations(a, b, starts, x, var, gg, expected)

    bins = _intensity_bins(np.log(np.maximum(expected, 1e-300)), n_bins)
    n_labels = bins.max() + 1
    bin_count = np.bincount(bins, minlength=n_labels)
    bin_weight = np.bincount(bins, expected, n_labels) / np.maximum(bin_count, 1)

    def bin_variances(a, b):
        delta = deviations(a, b)
        return np.bincount(bins, delta**2, n_labels) / np.maximum(bin_count, 1)

    def b_objective(a, b):
        v = np.maximum(bin_variances(a, b), 1e-12)
        return float(np.sum(bin_weight * ((0.5 - v) ** 2 + 1.0 / v - 1.25)) / np.sum(bin_weight))

    def refine_b(a, b_start):
        result = optimize.minimize_scalar(lambda b: b_objective(a, b), bounds=(0.0, 1.0),
                                          method="bounded", options={"xatol": 5e-5})
        return float(result.x)

    initial = bin_variances(1.0, DEFAULT_B)

    def a_for(b):  # δ ∝ 1/a, so the a that makes the probability-plot slope 1 is exact in one step
        return _quantile_slope(deviations(1.0, b))

    a, b = 1.0, DEFAULT_B
    converged = False
    for _ in range(MAX_CYCLES):
        new_a = a_for(b)
        b = refine_b(new_a, b)
        change = abs(new_a - a) / abs(a)
        a = new_a
        if change < 0.01:
            converged = True
            break
    message = ""
    if not converged or a <= 0.4:
        a, b = 1.0, refine_b(1.0, DEFAULT_B)
        message = "Error model a did not converge or a ≤ 0.4; a fixed at 1.0 and only b refined."
    final = bin_variances(a, b)
    log_i = np.log(np.maximum(expected, 1e-300))
    table = [(float(log_i[bins == k].min()), float(log_i[bins == k].max()), int(bin_count[k]), float(initial[k]),
              float(final[k])) for k in range(n_labels) if bin_count[k]]
    return ErrorModel(a=float(a), b=float(b), refined=True, n_reflections=n_selected, message=message, bins=table)
