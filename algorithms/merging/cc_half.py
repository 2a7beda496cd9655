"""CC½ two ways: the σ-τ method and the random half-dataset split.

σ-τ (Assmann, Brehm & Diederichs 2016, J. Appl. Cryst. 49:1021): per unique h with n ≥ 2, the
unweighted mean Ī = S₁/n and var(Ī) = (S₂ − S₁²/n)/((n−1)n); per resolution bin
CC½ = (σ²_y − σ²_ε)/(σ²_y + σ²_ε) with σ²_y the variance (n−1 denominator) of the Ī and σ²_ε the
mean var(Ī). The overall value is the mean of the bin values weighted by their reflection counts.
Everything is expressed through per-bin sums so that ΔCC½ can update them cheaply.

Half-dataset CC (cctbx ``split_unmerged``): the observations of each h (n ≥ 2) are split at random
into halves of ⌊n/2⌋ and ⌈n/2⌉ (for odd n the larger half comes first with probability ½), each
half merged (1/σ²-weighted by default), and the Pearson CC of the two half means computed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SigmaTauBinSums:
    """Per-bin sums over unique reflections with n ≥ 2 (arrays of length n_bins)."""

    count: np.ndarray
    sum_mean: np.ndarray
    sum_mean_sq: np.ndarray
    sum_var: np.ndarray


def group_moments(group: np.ndarray, intensity: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """S₁ = ΣI, S₂ = ΣI², n per group."""
    return (np.bincount(group, intensity, minlength=n_groups),
            np.bincount(group, intensity * intensity, minlength=n_groups),
            np.bincount(group, minlength=n_groups).astype(float))


def mean_and_variance_of_mean(s1: np.ndarray, s2: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ī, var(Ī) and a validity mask (n ≥ 2) for arrays of group moments."""
    valid = n >= 2
    safe_n = np.where(valid, n, 2.0)
    mean = s1 / safe_n
    var = (s2 - s1 * s1 / safe_n) / ((safe_n - 1.0) * safe_n)
    return np.where(valid, mean, 0.0), np.where(valid, var, 0.0), valid


def sigma_tau_bin_sums(s1: np.ndarray, s2: np.ndarray, n: np.ndarray, bin_of_group: np.ndarray, n_bins: int) -> SigmaTauBinSums:
    mean, var, valid = mean_and_variance_of_mean(s1, s2, n)
    bins = bin_of_group
    return SigmaTauBinSums(count=np.bincount(bins, valid.astype(float), minlength=n_bins),
                           sum_mean=np.bincount(bins, mean, minlength=n_bins),
                           sum_mean_sq=np.bincount(bins, mean * mean, minlength=n_bins),
                           sum_var=np.bincount(bins, var, minlength=n_bins))


def cc_half_from_bin_sums(count, sum_mean, sum_mean_sq, sum_var) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin σ-τ CC½ (NaN where fewer than 2 reflections) and the count-weighted overall value.

    Arguments may carry leading axes (e.g. one row per removed group); bins are the last axis.
    """
    usable = count >= 2
    k = np.where(usable, count, 2.0)
    var_y = (sum_mean_sq - sum_mean * sum_mean / k) / (k - 1.0)
    var_e = sum_var / k
    with np.errstate(invalid="ignore", divide="ignore"):
        cc = (var_y - var_e) / (var_y + var_e)
    cc = np.where(usable & np.isfinite(cc), cc, np.nan)
    weights = np.where(np.isfinite(cc), count, 0.0)
    total = weights.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        overall = np.where(total > 0, np.nansum(np.where(weights > 0, cc, 0.0) * weights, axis=-1) / np.where(total > 0, total, 1.0), np.nan)
    return cc, overall


def sigma_tau_cc_half(group: np.ndarray, intensity: np.ndarray, bin_of_group: np.ndarray, n_bins: int) -> tuple[np.ndarray, float]:
    """σ-τ CC½ per bin and overall; ``bin_of_group`` gives each group's resolution bin."""
    n_groups = len(bin_of_group)
    sums = sigma_tau_bin_sums(*group_moments(group, intensity, n_groups), bin_of_group, n_bins)
    cc, overall = cc_half_from_bin_sums(sums.count, sums.sum_mean, sums.sum_mean_sq, sums.sum_var)
    return cc, float(overall)


def random_half_split(group: np.ndarray, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """True for observations in the first half of their group's random split."""
    n = np.bincount(group, minlength=n_groups)
    order = np.lexsort((rng.random(len(group)), group))
    start = np.concatenate([[0], np.cumsum(n)[:-1]])
    rank = np.empty(len(group), dtype=np.int64)
    rank[order] = np.arange(len(group)) - start[group[order]]
    odd_bonus = (n % 2 == 1) & (rng.random(n_groups) < 0.5)
    first_size = n // 2 + odd_bonus
    return rank < first_size[group]


def pearson_by_bin(x: np.ndarray, y: np.ndarray, bins: np.ndarray, n_bins: int) -> np.ndarray:
    """Pearson CC of paired values in each bin (NaN with < 2 pairs or zero variance)."""
    n = np.bincount(bins, minlength=n_bins).astype(float)
    sx, sy = np.bincount(bins, x, n_bins), np.bincount(bins, y, n_bins)
    sxx, syy, sxy = np.bincount(bins, x * x, n_bins), np.bincount(bins, y * y, n_bins), np.bincount(bins, x * y, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sy / n
        cc = cov / np.sqrt((sxx - sx * sx / n) * (syy - sy * sy / n))
    return np.where((n >= 2) & np.isfinite(cc), cc, np.nan)


def half_means(group: np.ndarray, intensity: np.ndarray, variance: np.ndarray, first_half: np.ndarray,
               n_groups: int, weighted: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means of the two halves per group and a mask of groups where both halves have data."""
    weight = 1.0 / variance if weighted else np.ones_like(intensity)
    means = []
    for half in (first_half, ~first_half):
        sw = np.bincount(group[half], weight[half], n_groups)
        swi = np.bincount(group[half], (weight * intensity)[half], n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            means.append(swi / sw)
    both = np.isfinite(means[0]) & np.isfinite(means[1])
    return means[0], means[1], both
