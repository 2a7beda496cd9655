"""ΔCC½ analysis (Assmann, Brehm & Diederichs 2020, J. Appl. Cryst. 53:1161; DIALS filtering.deltacchalf).

CC½ by the σ-τ method in 10 bins equally spaced in 1/d²; for each group of observations (a dataset,
or a block of images of one dataset) ΔCC½ = CC½(all) − CC½(without the group). All groups at once:
a group's observations are subtracted from the per-reflection sums S₁, S₂, n, the change of each
touched reflection's contribution to its bin's sums is accumulated per (group, bin) with one
np.bincount, and the CC½ of every group follows from the updated bin sums.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from algorithms.merging.cc_half import cc_half_from_bin_sums, group_moments, mean_and_variance_of_mean, sigma_tau_bin_sums

N_RESOLUTION_BINS = 10


def resolution_bins_inverse_d2(d_of_reflection: np.ndarray, n_bins: int = N_RESOLUTION_BINS) -> np.ndarray:
    """Bin of each reflection, equal steps in 1/d² between the data's extremes."""
    s2 = 1.0 / d_of_reflection**2
    lo, hi = float(np.min(s2)), float(np.max(s2))
    if hi <= lo:
        return np.zeros(len(s2), dtype=np.int64)
    return np.clip(((s2 - lo) / (hi - lo) * n_bins).astype(np.int64), 0, n_bins - 1)


def delta_cc_half(reflection: np.ndarray, n_reflections: int, intensity: np.ndarray, removal_group: np.ndarray,
                  n_removal_groups: int, bin_of_reflection: np.ndarray, n_bins: int = N_RESOLUTION_BINS) -> tuple[float, np.ndarray]:
    """CC½ of all data and ΔCC½ of each removal group (observations are rows of the inputs)."""
    s1, s2, n = group_moments(reflection, intensity, n_reflections)
    base = sigma_tau_bin_sums(s1, s2, n, bin_of_reflection, n_bins)
    _, cc_all = cc_half_from_bin_sums(base.count, base.sum_mean, base.sum_mean_sq, base.sum_var)

    pair_key = removal_group.astype(np.int64) * n_reflections + reflection
    keys, inverse = np.unique(pair_key, return_inverse=True)
    pair_group, pair_reflection = keys // n_reflections, keys % n_reflections
    n_pairs = len(keys)
    ps1 = np.bincount(inverse, intensity, n_pairs)
    ps2 = np.bincount(inverse, intensity * intensity, n_pairs)
    pn = np.bincount(inverse, minlength=n_pairs).astype(float)
    old_mean, old_var, old_valid = mean_and_variance_of_mean(s1[pair_reflection], s2[pair_reflection], n[pair_reflection])
    new_mean, new_var, new_valid = mean_and_variance_of_mean(s1[pair_reflection] - ps1, s2[pair_reflection] - ps2,
                                                             n[pair_reflection] - pn)
    cell = pair_group * n_bins + bin_of_reflection[pair_reflection]
    size = n_removal_groups * n_bins

    def accumulate(new, old):
        return np.bincount(cell, new - old, size).reshape(n_removal_groups, n_bins)

    count = base.count + accumulate(new_valid.astype(float), old_valid.astype(float))
    sum_mean = base.sum_mean + accumulate(new_mean, old_mean)
    sum_mean_sq = base.sum_mean_sq + accumulate(new_mean**2, old_mean**2)
    sum_var = base.sum_var + accumulate(new_var, old_var)
    _, cc_without = cc_half_from_bin_sums(count, sum_mean, sum_mean_sq, sum_var)
    return float(cc_all), cc_all - cc_without


@dataclass
class ImageGroups:
    """Per-dataset blocks of consecutive images; ``group`` is −1 for unused observations."""

    group: np.ndarray
    dataset: np.ndarray  # per group
    first_image: np.ndarray  # per group, 1-based inclusive
    last_image: np.ndarray


def image_groups(dataset: np.ndarray, image: np.ndarray, active: np.ndarray, n_datasets: int, group_size: int) -> ImageGroups:
    """Blocks of ``group_size`` images from each dataset's first to last observed image (a short last
    block is merged into the one before it); blocks without observations (holes left by earlier
    removals) are dropped so that they do not enter the ΔCC½ statistics."""
    group = np.full(len(dataset), -1, dtype=np.int64)
    datasets, firsts, lasts = [], [], []
    offset = 0
    for k in range(n_datasets):  # loop over datasets, not reflections
        rows = np.nonzero(active & (dataset == k))[0]
        if len(rows) == 0:
            continue
        lo, hi = int(image[rows].min()), int(image[rows].max())
        n_blocks = max((hi - lo + 1) // group_size, 1)
        block = np.minimum((image[rows] - lo) // group_size, n_blocks - 1)
        occupied, block = np.unique(block, return_inverse=True)
        group[rows] = offset + block
        starts = lo + group_size * occupied
        ends = np.where(occupied == n_blocks - 1, hi, starts + group_size - 1)
        datasets.append(np.full(len(occupied), k))
        firsts.append(starts)
        lasts.append(ends)
        offset += len(occupied)
    cat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return ImageGroups(group=group, dataset=cat(datasets), first_image=cat(firsts), last_image=cat(lasts))


def cutoff(values: np.ndarray, stdcutoff: float) -> float:
    """DIALS' cutoff: mean − stdcutoff × population SD."""
    return float(np.mean(values) - stdcutoff * np.std(values))


def robust_cutoff(values: np.ndarray, stdcutoff: float) -> float:
    """median − stdcutoff × 1.4826·MAD: usable with few groups (e.g. 18 crystals), where one outlier
    inflates the SD so much that mean − 4·SD can never flag it."""
    median = float(np.median(values))
    return median - stdcutoff * 1.4826 * float(np.median(np.abs(values - median)))


def edge_groups_below(groups: ImageGroups, below: np.ndarray) -> np.ndarray:
    """DIALS' rule: only blocks at the current start or end of a sweep are removed, repeatedly."""
    remove = np.zeros(len(below), bool)
    for k in np.unique(groups.dataset):  # loop over datasets
        members = np.nonzero(groups.dataset == k)[0]
        members = members[np.argsort(groups.first_image[members])]
        lo, hi = 0, len(members) - 1
        while lo <= hi and below[members[lo]]:
            remove[members[lo]] = True
            lo += 1
        while hi >= lo and below[members[hi]]:
            remove[members[hi]] = True
            hi -= 1
    return remove


def group_intensity_ratios(reflection: np.ndarray, n_reflections: int, scaled: np.ndarray, scaled_variance: np.ndarray,
                           group: np.ndarray, n_groups: int, min_observations: int = 20,
                           min_i_over_sigma: float = 2.0) -> np.ndarray:
    """Intensity of each group relative to the scaling model: Σ I_l / Σ Ĩ_h,−l over the group's
    observations (I = I/g), Ĩ_h,−l being the 1/σ²-weighted mean of the *other* observations of the
    same unique reflection; only observations whose Ĩ_h,−l is significant (Ĩ > min_i_over_sigma·σ(Ĩ))
    count, so the ratio of sums is led by strong reflections and Ĩ, chosen independently of I_l, does
    not bias it. NaN for groups with fewer than ``min_observations`` such observations.

    Complements ΔCC½: a frame recorded without diffraction takes away the share of every reflection
    recorded on it, so the reflections centred on it are uniformly weak — a deficit the correlation
    barely sees, but the ratio does (ewald)."""
    usable = (group >= 0) & (scaled_variance > 0)
    weight = np.divide(1.0, scaled_variance, out=np.zeros(len(scaled)), where=usable)
    sum_w = np.bincount(reflection, weight, n_reflections)
    sum_wi = np.bincount(reflection, weight * scaled, n_reflections)
    n_obs = np.bincount(reflection, usable.astype(float), n_reflections)
    other_w = sum_w[reflection] - weight
    has_other = usable & (n_obs[reflection] - 1 >= 1) & (other_w > 0)
    other_mean = np.divide(sum_wi[reflection] - weight * scaled, other_w, out=np.zeros(len(scaled)), where=has_other)
    strong = has_other & (other_mean * np.sqrt(np.where(has_other, other_w, 0.0)) > min_i_over_sigma)
    rows = group[strong]
    numerator = np.bincount(rows, scaled[strong], n_groups)
    denominator = np.bincount(rows, other_mean[strong], n_groups)
    count = np.bincount(rows, minlength=n_groups)
    return np.where(count >= min_observations, numerator / np.where(denominator > 0, denominator, 1.0), np.nan)


def ratio_outliers(ratio: np.ndarray, stdcutoff: float, min_deviation: float,
                   flag_excess: bool = False) -> tuple[np.ndarray, float, float]:
    """Groups whose ratio lies below median − max(stdcutoff·1.4826·MAD, min_deviation) of the finite
    ratios (NaN = too few observations, never flagged), or with ``flag_excess`` also above median + the
    same; returns the flags and the lower and upper limits. ``min_deviation`` keeps a model that fits
    very well (tiny MAD) from flagging ordinary scatter. Excess is off by default: on the simulated
    MyD88 job it flagged only images ΔCC½ removes anyway, or good ones (good images removed 2.3 % → 3.2 %)."""
    finite = np.isfinite(ratio)
    if finite.sum() < 3:
        return np.zeros(len(ratio), bool), -np.inf, np.inf
    median = float(np.median(ratio[finite]))
    half_width = max(stdcutoff * 1.4826 * float(np.median(np.abs(ratio[finite] - median))), min_deviation)
    lower, upper = median - half_width, median + half_width
    return finite & ((ratio < lower) | (flag_excess & (ratio > upper))), lower, upper
